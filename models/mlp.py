"""Width-parametrized MLP: h^1 = W^1 x, x^l = phi(h^l), h^{l+1} = W^{l+1} x^l, f = W^{L+1} x^L.

W^l = n^-a_l w^l with the exponents of a Parametrization (roles: W^1 input,
W^2..W^L hidden, W^{L+1} output); L hidden layers of width n.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ntkcheck.models.activations import ACTIVATIONS, get_activation
from ntkcheck.models.layers import ParamLinear, WidthModel
from ntkcheck.models.parametrization import Parametrization


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

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """[h^1, ..., h^L, f]: the preactivations of every hidden layer, then the output. x: [B, d_in]."""
        out, h = [], self.layers[0](x)
        out.append(h)
        for layer in self.layers[1:]:
            h = layer(self.phi(h))
            out.append(h)
        return out

    def forward(self, x: torch.Tensor, all_layers: bool = False):
        """x: [B, d_in] -> f [B, d_out]; with all_layers, the list ``features(x)`` (works under functional_call)."""
        feats = self.features(x)
        return feats if all_layers else feats[-1]
