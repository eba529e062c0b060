"""The functional view (f, params) that every measurement takes.

f(params, x) -> Tensor[B, C] through torch.func.functional_call; params is a
dict {name: tensor} of the module's trainable tensors (detached copies).
"""
from __future__ import annotations

from typing import Callable, Mapping

import torch
from torch import nn
from torch.func import functional_call, grad

Params = dict[str, torch.Tensor]
FunctionalModel = Callable[[Mapping[str, torch.Tensor], torch.Tensor], torch.Tensor]


def functional(module: nn.Module) -> tuple[FunctionalModel, Params]:
    """(f, params) of ``module``: f(params, x) = module with its parameters replaced by ``params``.

    Buffers stay those of the module. params are detached clones, so training
    them leaves the module untouched.
    """
    params = {k: v.detach().clone() for k, v in module.named_parameters()}

    def f(p: Mapping[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        return functional_call(module, dict(p), (x,))

    return f, params


def mse_loss_grad(f: FunctionalModel, params: Mapping[str, torch.Tensor], x: torch.Tensor,
                  y: torch.Tensor) -> tuple[torch.Tensor, Params]:
    """(loss, d loss / d params) for L = 1/(2B) sum ||f(x) - y||^2 (so dL/df = (f - y)/B)."""

    def loss(p):
        r = f(p, x) - y
        return 0.5 * (r * r).sum() / x.shape[0]

    g = grad(loss)(dict(params))
    return loss(dict(params)).detach(), g


def param_count(params: Mapping[str, torch.Tensor]) -> int:
    return sum(int(v.numel()) for v in params.values())
