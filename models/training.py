"""The one training loop: ``train(f, params, optimizer, data, steps, ...)``.

At step t = 1..steps, with (x_t, y_t) the batch,

    out_t = f(theta_{t-1}, x_t),   L_t = loss(out_t, y_t),
    (u_t, state) = optimizer.update(grad_theta L_t, state, theta_{t-1}),   theta_t = theta_{t-1} + u_t,

and ``callback(step)`` sees a Step after each update. Gradients come from plain
reverse-mode autograd (torch.autograd.grad), which at the checks' sizes costs a
third of torch.func.grad per step. ``select`` names the trainable tensors; the
others are passed to f unchanged and get no gradient (a frozen subset, e.g. an
LM's embeddings). The default loss is L = 1/(2B) sum_b ||f(x_b) - y_b||^2, whose
output derivative is chi_b = f(x_b) - y_b ([KV] Def. 3.1).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Mapping

import torch

from ntkcheck.models.optim import Optimizer, apply_updates

Params = dict[str, torch.Tensor]
Batch = tuple[torch.Tensor, torch.Tensor]
Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def mse(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """L = 1/(2B) sum_b ||out_b - y_b||^2 (B = out.shape[0]; out and y of one shape)."""
    r = out - y
    return 0.5 * (r * r).sum() / out.shape[0]


@dataclass
class Step:
    """What the callback sees after step t: the batch, f on it before the update, the loss and the
    gradient there, and the parameters and optimizer state after the update."""

    t: int
    x: torch.Tensor
    y: torch.Tensor
    outputs: torch.Tensor
    loss: torch.Tensor
    grads: Params
    params: Params
    state: dict


def train(f: Callable, params: Mapping[str, torch.Tensor], optimizer: Optimizer,
          data: Batch | Callable[[int], Batch], steps: int, *, loss: Loss = mse,
          select: Iterable[str] | None = None, callback: Callable[[Step], None] | None = None,
          state: dict | None = None) -> Params:
    """Run ``steps`` steps of ``optimizer`` on ``loss`` from ``params``; returns the final parameters.

    data: (x, y) for full-batch training, or a function t -> (x, y) giving the batch of step t (1-based).
    select: names of the trainable tensors (default: all). state: resume an optimizer state.
    """
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    p = {k: v.detach() for k, v in params.items()}
    names = list(p) if select is None else [k for k in select]
    missing = [k for k in names if k not in p]
    if missing:
        raise KeyError(f"select names unknown tensors {missing}")
    state = optimizer.init({k: p[k] for k in names}) if state is None else state
    for t in range(1, steps + 1):
        x, y = data(t) if callable(data) else data
        leaves = {k: p[k].requires_grad_(True) if k in names else p[k] for k in p}
        out = f(leaves, x)
        value = loss(out, y)
        grads = dict(zip(names, (g.detach() for g in torch.autograd.grad(value, [leaves[k] for k in names]))))
        updates, state = optimizer.update(grads, state, {k: p[k] for k in names})
        p = {k: v.detach() for k, v in apply_updates(p, updates).items()}
        if callback is not None:
            callback(Step(t, x, y, out.detach(), value.detach(), grads, p, state))
    return p
