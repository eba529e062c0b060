"""Functional optimizers over a dict of tensors, with per-tensor learning rates.

Each takes ``lrs``: {name: learning rate} (from ``WidthModel.learning_rates``)
and maps (params, grads) -> new params without touching its inputs, so they
compose with the (f, params) view and torch.func.grad.

    SGD:     w <- w - eta_w g
    SignGD:  w <- w - eta_w sign(g)            ([KV] Def. 4.1)
             w <- w - eta_w g / (|g| + eps_w)  (eps-sign, [KV] Assumption C.2g)
    Adam:    m <- b1 m + (1-b1) g, v <- b2 v + (1-b2) g^2,
             w <- w - eta_w mhat / (sqrt(vhat) + eps)   (Kingma & Ba)
"""
from __future__ import annotations

from typing import Mapping

import torch

Params = dict[str, torch.Tensor]


def _check(lrs: Mapping[str, float], params: Mapping[str, torch.Tensor]) -> None:
    missing = [k for k in params if k not in lrs]
    if missing:
        raise KeyError(f"no learning rate for parameter(s) {missing}")


def eps_sign(g: torch.Tensor, eps: float) -> torch.Tensor:
    """eps-sign(x) = x / (|x| + eps); sign(x) when eps == 0."""
    return torch.sign(g) if eps == 0 else g / (g.abs() + eps)


class SGD:
    def __init__(self, lrs: Mapping[str, float]):
        self.lrs = dict(lrs)

    def step(self, params: Mapping[str, torch.Tensor], grads: Mapping[str, torch.Tensor]) -> Params:
        _check(self.lrs, params)
        return {k: p - self.lrs[k] * grads[k] for k, p in params.items()}


class SignGD:
    """SignGD; ``eps`` (a float or {name: float}) selects eps-sign, 0 means exact sign."""

    def __init__(self, lrs: Mapping[str, float], eps: float | Mapping[str, float] = 0.0):
        self.lrs = dict(lrs)
        self.eps = eps

    def _eps(self, name: str) -> float:
        return float(self.eps[name]) if isinstance(self.eps, Mapping) else float(self.eps)

    def step(self, params: Mapping[str, torch.Tensor], grads: Mapping[str, torch.Tensor]) -> Params:
        _check(self.lrs, params)
        return {k: p - self.lrs[k] * eps_sign(grads[k], self._eps(k)) for k, p in params.items()}


class Adam:
    def __init__(self, lrs: Mapping[str, float], betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8):
        self.lrs = dict(lrs)
        self.b1, self.b2 = betas
        self.eps = eps
        self.t = 0
        self.m: Params = {}
        self.v: Params = {}

    def step(self, params: Mapping[str, torch.Tensor], grads: Mapping[str, torch.Tensor]) -> Params:
        _check(self.lrs, params)
        self.t += 1
        out = {}
        for k, p in params.items():
            g = grads[k]
            self.m[k] = self.b1 * self.m.get(k, torch.zeros_like(g)) + (1 - self.b1) * g
            self.v[k] = self.b2 * self.v.get(k, torch.zeros_like(g)) + (1 - self.b2) * g * g
            mhat = self.m[k] / (1 - self.b1**self.t)
            vhat = self.v[k] / (1 - self.b2**self.t)
            out[k] = p - self.lrs[k] * mhat / (vhat.sqrt() + self.eps)
        return out


def make_optimizer(name: str, lrs: Mapping[str, float], **kwargs):
    """'sgd' | 'signgd' | 'adam' -> optimizer instance."""
    table = {"sgd": SGD, "signgd": SignGD, "adam": Adam}
    if name not in table:
        raise ValueError(f"unknown optimizer {name!r}; expected one of {sorted(table)}")
    return table[name](lrs, **kwargs)
