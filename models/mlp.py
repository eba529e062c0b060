"""Width-parametrized MLP: h^1 = W^1 x, x^l = phi(h^l), h^{l+1} = W^{l+1} x^l, f = W^{L+1} x^L.

W^l = n^-a_l w^l with the exponents of a Parametrization (roles: W^1 input,
W^2..W^L hidden, W^{L+1} output); L hidden layers of width n. With
activation "linear", depth 2, d_out 1 and no bias it is the three-layer linear
net f = V^T W U xi of [KV] App. C.5 (architecture "linear3" of the factory).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import torch
from torch import nn

from ntkcheck.models.activations import ACTIVATIONS, get_activation
from ntkcheck.models.layers import ParamLinear, WidthModel
from ntkcheck.theory.parametrization import Parametrization


@dataclass(frozen=True)
class MLPConfig:
    """d_in -> [width] * depth -> d_out. depth = L, the number of hidden layers (>= 1)."""

    d_in: int = 8
    d_out: int = 1
    depth: int = 2
    activation: str = "tanh"
    sigma_gelu: float = 0.1
    bias: bool = False
    base_width: int = 1

    def __post_init__(self):
        if self.depth < 1:
            raise ValueError(f"MLPConfig.depth must be >= 1, got {self.depth}")
        if self.d_in < 1 or self.d_out < 1:
            raise ValueError(f"MLPConfig dims must be >= 1, got d_in={self.d_in}, d_out={self.d_out}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {self.activation!r}; expected one of {ACTIVATIONS}")


class MLP(WidthModel):
    def __init__(self, config: MLPConfig, width: int, param: Parametrization, generator: torch.Generator,
                 dtype: torch.dtype = torch.float32):
        super().__init__()
        if width < 1:
            raise ValueError(f"width must be a positive integer, got {width}")
        self.config, self.width, self.param = config, width, param
        self.phi = get_activation(config.activation, config.sigma_gelu)
        kw = dict(param=param, width=width, generator=generator, bias=config.bias,
                  base_width=config.base_width, dtype=dtype)
        layers = [ParamLinear(config.d_in, width, "input", **kw)]
        layers += [ParamLinear(width, width, "hidden", **kw) for _ in range(config.depth - 1)]
        layers.append(ParamLinear(width, config.d_out, "output", **kw))
        self.layers = nn.ModuleList(layers)
        self._names = [(f"layers.{i}.weight", f"layers.{i}.bias") for i in range(len(layers))]

    def apply(self, params: Mapping[str, torch.Tensor], x: torch.Tensor, all_layers: bool = False):
        """x [B, d_in] -> f [B, d_out]; with all_layers, [h^1, ..., h^L, f] (the preactivations, then f).

        Hand-written over the parameter dict (no functional_call): at the sizes of the checks the
        per-call overhead of functional_call was most of a training step's time.
        """
        feats = []
        h = x
        last = len(self.layers) - 1
        for i, (layer, (wn, bn)) in enumerate(zip(self.layers, self._names)):
            h = layer.call(params[wn], params[bn] if layer.bias is not None else None, h)
            if all_layers:
                feats.append(h)
            if i < last:
                h = self.phi(h)
        return feats if all_layers else h
