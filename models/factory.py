"""The one model factory: ``build(arch, width, param, *, seed, dtype, **options) -> WidthModel``.

Architectures (one spelling each):
  mlp          L-hidden-layer MLP (models/mlp.py), options of MLPConfig
  transformer  the attention blocks of [ES] Sec. 3.2 (models/transformer.py), options of TransformerConfig
  linear3      the three-layer linear net f = V^T W U xi of [KV] App. C.5: an MLP with depth 2,
               linear activation, one output and no bias (options d_in, base_width)

The weights are drawn from torch.Generator().manual_seed(seed) in the order the
layers are built, so (arch, width, param, seed, dtype, options) fixes the network.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import torch

from ntkcheck.models.layers import WidthModel
from ntkcheck.models.mlp import MLP, MLPConfig
from ntkcheck.models.transformer import Transformer, TransformerConfig
from ntkcheck.seeding import generator
from ntkcheck.theory import parametrization as P


@dataclass(frozen=True)
class Architecture:
    name: str
    model: type
    config: type
    summary: str
    fixed: dict = field(default_factory=dict)  # options this architecture pins

    @property
    def options(self) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(self.config) if f.name not in self.fixed)


ARCHITECTURES: dict[str, Architecture] = {a.name: a for a in (
    Architecture("mlp", MLP, MLPConfig, "L-hidden-layer MLP"),
    Architecture("transformer", Transformer, TransformerConfig, "[ES] Sec. 3.2 multi-head attention blocks"),
    Architecture("linear3", MLP, MLPConfig, "[KV] App. C.5 three-layer linear net f = V^T W U xi",
                 fixed={"depth": 2, "activation": "linear", "d_out": 1, "bias": False}),
)}


def build(arch: str, width: int, param: P.Parametrization | str, *, seed: int,
          dtype: torch.dtype = torch.float32, **options: Any) -> WidthModel:
    """A ``arch`` network of width n = ``width`` under ``param`` (a Parametrization or a preset name).

    options are the architecture's config fields (e.g. d_in, depth, activation for "mlp");
    an unknown architecture or option is a ValueError naming it.
    """
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r}; expected one of {sorted(ARCHITECTURES)}")
    a = ARCHITECTURES[arch]
    bad = sorted(set(options) - set(a.options))
    if bad:
        raise ValueError(f"architecture {arch!r} has no option {bad[0]!r}; options: {', '.join(a.options)}")
    if not isinstance(width, int) or isinstance(width, bool) or width < 1:
        raise ValueError(f"width must be a positive integer, got {width!r}")
    param = P.get(param) if isinstance(param, str) else param
    model = a.model(a.config(**a.fixed, **options), width, param, generator(seed), dtype=dtype)
    model.arch = arch
    return model
