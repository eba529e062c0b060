"""The functional view (f, params) that every measurement takes, and its calculus.

f(params, x) -> Tensor[B, C]; params is a dict {name: tensor}. For a
WidthModel f is its pure ``apply``; for any other nn.Module it goes through
torch.func.functional_call. pullback and pushforward are one vjp and one jvp;
``linearize`` is the first-order Taylor expansion ([KV] Def. 3.2, [ES] eq. 14).
"""
from __future__ import annotations

from typing import Callable, Mapping

import torch
from torch import nn
from torch.func import functional_call, jvp, vjp

Params = dict[str, torch.Tensor]
FunctionalModel = Callable[[Mapping[str, torch.Tensor], torch.Tensor], torch.Tensor]


def functional(module: nn.Module) -> tuple[FunctionalModel, Params]:
    """(f, params) of ``module``: f(params, x) = module with its parameters replaced by ``params``.

    Buffers stay those of the module. params are detached clones, so training
    them leaves the module untouched.
    """
    from ntkcheck.models.layers import WidthModel

    params = {k: v.detach().clone() for k, v in module.named_parameters()}
    if isinstance(module, WidthModel):
        return module.apply, params

    def f(p: Mapping[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        return functional_call(module, dict(p), (x,))

    return f, params


def output(f: FunctionalModel, params: Mapping[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """f(params, x) without autograd."""
    with torch.no_grad():
        return f(dict(params), x)


def pullback(f: FunctionalModel, params: Mapping[str, torch.Tensor], x: torch.Tensor,
             cot: torch.Tensor) -> Params:
    """sum_b <cot_b, grad_theta f(x_b)>: the parameter gradient of sum_b cot_b . f(x_b). cot: [B, C]."""
    _, fn = vjp(lambda p: f(p, x), dict(params))
    return {k: v.detach() for k, v in fn(cot)[0].items()}


def pushforward(f: FunctionalModel, params: Mapping[str, torch.Tensor], direction: Mapping[str, torch.Tensor],
                x: torch.Tensor) -> torch.Tensor:
    """<grad_theta f(x), direction> for every x: a jvp, [B, C]."""
    keys = list(params)
    _, out = jvp(lambda *vs: f(dict(zip(keys, vs)), x), tuple(params[k] for k in keys),
                 tuple(direction[k] for k in keys))
    return out.detach()


def linearize(f: FunctionalModel, params0: Mapping[str, torch.Tensor]) -> FunctionalModel:
    """f_lin(params, x) = f(params0, x) + J(x; params0) (params - params0), by one jvp ([KV] Def. 3.2).

    J(x; params0) is the Jacobian of f(., x) at params0; params must have the
    keys of params0. Output: [B, C] like f. params0 is copied (detached), so
    later changes to the caller's tensors do not move the expansion point.
    """
    if not isinstance(params0, Mapping) or not params0:
        raise ValueError("params0 must be a non-empty {name: tensor} mapping")
    p0 = {k: v.detach().clone() for k, v in params0.items()}

    def f_lin(params: Mapping[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        if set(params) != set(p0):
            raise ValueError(f"f_lin params keys differ from params0: extra {sorted(set(params) - set(p0))}, "
                             f"missing {sorted(set(p0) - set(params))}")
        tangent = {k: params[k] - p0[k] for k in p0}
        out, dout = jvp(lambda p: f(p, x), (p0,), (tangent,))
        return out + dout

    return f_lin


def add(params: Mapping[str, torch.Tensor], delta: Mapping[str, torch.Tensor], scale: float = 1.0) -> Params:
    """params + scale * delta, key by key (keys of params; a key missing from delta is kept as is)."""
    return {k: (v + scale * delta[k]) if k in delta else v for k, v in params.items()}


def sq_norm(tensors: Mapping[str, torch.Tensor]) -> float:
    """sum of squares of every entry, in float64."""
    return float(sum((v.double() ** 2).sum() for v in tensors.values()))


def param_count(params: Mapping[str, torch.Tensor]) -> int:
    return sum(int(v.numel()) for v in params.values())
