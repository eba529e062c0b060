"""LoRA as a transform of (f, params) (Hu et al. 2021; [KV] Sec. 7, Lemma D.4).

    f_LoRA(theta_LoRA, x) = f(theta_0 with W <- W + scale * B_W A_W for W in targets, x),

A_W [k, fan_in] ~ N(0, 1/k) random and B_W [fan_out, k] = 0 at the start (the
convention of Hu et al. and of [KV] Lemma D.4; [KV] Def. 7.1 prints the
opposite, which projects the output gradients instead of the inputs). Only
(A_W, B_W) are trainable: theta_LoRA = {W + ".lora_A": A_W, W + ".lora_B": B_W}.
The update is merged into W each call, which works for any f whatever it does
with W; its cost, fan_out * k * fan_in per target per call, is that of one
matrix product of the adapted shape.
"""
from __future__ import annotations

import math
from typing import Callable, Mapping, Sequence

import torch

Params = dict[str, torch.Tensor]


def lora(f: Callable, params: Mapping[str, torch.Tensor], rank: int, *, targets: Sequence[str] | None = None,
         scale: float = 1.0, generator: torch.Generator | None = None) -> tuple[Callable, Params]:
    """(f_LoRA, theta_LoRA): see the module docstring.

    targets: names of 2-D weights to adapt (default: every 2-D tensor of params, in order);
    A_W is drawn in the order of targets from ``generator``.
    """
    if not isinstance(rank, int) or rank < 1:
        raise ValueError(f"rank must be a positive integer, got {rank!r}")
    base = {k: v.detach() for k, v in params.items()}
    targets = [k for k, v in base.items() if v.dim() == 2] if targets is None else list(targets)
    bad = [t for t in targets if t not in base or base[t].dim() != 2]
    if bad:
        raise ValueError(f"LoRA targets must be 2-D weights of params; not: {bad}")
    theta: Params = {}
    for t in targets:
        w = base[t]
        theta[t + ".lora_A"] = torch.randn(rank, w.shape[1], generator=generator, dtype=w.dtype).to(w.device) \
            / math.sqrt(rank)
        theta[t + ".lora_B"] = torch.zeros(w.shape[0], rank, dtype=w.dtype, device=w.device)

    def f_lora(lp: Mapping[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        merged = dict(base)
        for t in targets:
            merged[t] = base[t] + scale * (lp[t + ".lora_B"] @ lp[t + ".lora_A"])
        return f(merged, x)

    return f_lora, theta
