"""Activation functions by name, including sigma-gelu of [KV] Assumption C.2f."""
from __future__ import annotations

import math
from typing import Callable

import torch

ACTIVATIONS = ("relu", "tanh", "gelu", "sigma_gelu", "linear", "erf")


def sigma_gelu(x: torch.Tensor, sigma: float = 0.1) -> torch.Tensor:
    """[KV] Assumption C.2f: 1/2 x erf(x/sigma) + sigma exp(-x^2/sigma^2) / (2 sqrt(pi)) + x/2.

    A smooth (pseudo-Lipschitz) approximation of ReLU that tends to it as sigma -> 0.
    """
    return 0.5 * x * torch.erf(x / sigma) + sigma * torch.exp(-(x / sigma) ** 2) / (2 * math.sqrt(math.pi)) + 0.5 * x


def get_activation(name: str, sigma: float = 0.1) -> Callable[[torch.Tensor], torch.Tensor]:
    """The activation called ``name`` (one of ACTIVATIONS)."""
    if name == "relu":
        return torch.relu
    if name == "tanh":
        return torch.tanh
    if name == "gelu":
        return torch.nn.functional.gelu
    if name == "sigma_gelu":
        return lambda x: sigma_gelu(x, sigma)
    if name == "linear":
        return lambda x: x
    if name == "erf":  # its NNGP/NTK duals have closed forms (Williams 1997): theory/ntk_analytic.py
        return torch.erf
    raise ValueError(f"unknown activation {name!r}; expected one of {ACTIVATIONS}")
