"""Optimizers as pure (init, update) pairs over dicts of tensors (google-deepmind/optax's shape).

    state = opt.init(params)
    updates, state = opt.update(grads, state, params)
    params = apply_updates(params, updates)          # params + updates

Nothing is mutated: the state is a new dict each step, so a run can be
replayed or branched. ``lrs`` is a float or {name: learning rate} (e.g.
``WidthModel.learning_rates(optimizer, base_lr)``); ``schedule(t)`` multiplies
the rate at step t = 0, 1, ... (``linear_decay(T)``: 1 - t / T).

    SGD:       u = -eta_w g
    SignGD:    u = -eta_w sign(g)                  ([KV] Def. 4.1)
               u = -eta_w g / (|g| + eps_w)       (eps-sign, [KV] Assumption C.2g)
    Adam:      m = b1 m + (1-b1) g,  v = b2 v + (1-b2) g^2,
               u = -eta_w mhat / (sqrt(vhat) + eps)   (Kingma & Ba)

Updates are formed only for the tensors present in ``grads`` (the trainable
subset); apply_updates leaves the others untouched.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping

import torch

Params = dict[str, torch.Tensor]
State = dict[str, Any]
Schedule = Callable[[int], float]
OPTIMIZERS = ("sgd", "signgd", "adam")


def eps_sign(g: torch.Tensor, eps: float) -> torch.Tensor:
    """eps-sign(g) = g / (|g| + eps); sign(g) when eps == 0 ([KV] Assumption C.2g)."""
    return torch.sign(g) if eps == 0 else g / (g.abs() + eps)


@dataclass(frozen=True)
class Optimizer:
    """A named pure optimizer: ``init(params) -> state``, ``update(grads, state, params) -> (updates, state)``."""

    name: str
    init: Callable[[Mapping[str, torch.Tensor]], State]
    update: Callable[[Mapping[str, torch.Tensor], State, Mapping[str, torch.Tensor]], tuple[Params, State]]


def apply_updates(params: Mapping[str, torch.Tensor], updates: Mapping[str, torch.Tensor]) -> Params:
    """params + updates for the tensors in updates; the others are passed through."""
    return {k: (p + updates[k]) if k in updates else p for k, p in params.items()}


def linear_decay(total_steps: int) -> Schedule:
    """t -> 1 - t / T: the learning rate decays linearly to 0 over T steps, no warmup ([KV] App. A.3)."""
    return lambda t: 1.0 - t / total_steps


def _rate(lrs: float | Mapping[str, float], name: str) -> float:
    if isinstance(lrs, Mapping):
        if name not in lrs:
            raise KeyError(f"no learning rate for parameter {name!r}")
        return float(lrs[name])
    return float(lrs)


def _per_tensor(value: float | Mapping[str, float], name: str) -> float:
    return float(value[name]) if isinstance(value, Mapping) else float(value)


def sgd(lrs: float | Mapping[str, float], schedule: Schedule | None = None) -> Optimizer:
    """u = -eta_w g."""
    def update(grads, state, params=None):
        s = schedule(state["step"]) if schedule is not None else 1.0
        return {k: -(s * _rate(lrs, k)) * g for k, g in grads.items()}, {"step": state["step"] + 1}

    return Optimizer("sgd", lambda params: {"step": 0}, update)


def signgd(lrs: float | Mapping[str, float], eps: float | Mapping[str, float] = 0.0,
           schedule: Schedule | None = None) -> Optimizer:
    """u = -eta_w eps-sign(g); ``eps`` a float or {name: eps_w}, 0 being the exact sign."""
    def update(grads, state, params=None):
        s = schedule(state["step"]) if schedule is not None else 1.0
        return ({k: -(s * _rate(lrs, k)) * eps_sign(g, _per_tensor(eps, k)) for k, g in grads.items()},
                {"step": state["step"] + 1})

    return Optimizer("signgd", lambda params: {"step": 0}, update)


def adam(lrs: float | Mapping[str, float], betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
         schedule: Schedule | None = None) -> Optimizer:
    """Adam with bias correction; the moments start at 0 for every tensor that gets a gradient."""
    b1, b2 = betas

    def init(params):
        return {"step": 0, "m": {}, "v": {}}

    def update(grads, state, params=None):
        t = state["step"] + 1
        s = schedule(state["step"]) if schedule is not None else 1.0
        m, v, out = dict(state["m"]), dict(state["v"]), {}
        for k, g in grads.items():
            m[k] = b1 * m[k] + (1 - b1) * g if k in m else (1 - b1) * g
            v[k] = b2 * v[k] + (1 - b2) * g * g if k in v else (1 - b2) * g * g
            mhat, vhat = m[k] / (1 - b1**t), v[k] / (1 - b2**t)
            out[k] = -(s * _rate(lrs, k)) * mhat / (vhat.sqrt() + eps)
        return out, {"step": t, "m": m, "v": v}

    return Optimizer("adam", init, update)


def make(name: str, lrs: float | Mapping[str, float], **kwargs) -> Optimizer:
    """'sgd' | 'signgd' | 'adam' -> the optimizer with these learning rates (kwargs: eps, betas, schedule)."""
    table = {"sgd": sgd, "signgd": signgd, "adam": adam}
    if name not in table:
        raise ValueError(f"unknown optimizer {name!r}; expected one of {OPTIMIZERS}")
    return table[name](lrs, **kwargs)
