"""Width-parametrized transformer of [ES] Sec. 3.2: multi-head attention blocks, embedding dim = width.

Per head h of block l ([ES] eq. 3-4):
    zeta = softmax(d^-alpha (g W^Q)(g W^K)^T),  f^h = zeta g W^V,
    f^l = [f^1, ..., f^H] W^O,
with d = width (the per-head query/key dim d^{l,G} and value dim d^l of [ES]),
alpha the parametrization's attention-logit exponent (1 = the 1/d scaling of
[ES] and muP, 1/2 = the usual 1/sqrt(d)) unless the config overrides it.
Each block is a sublayer  g <- g + F(LN(g))  (residual and LayerNorm optional,
LN without affine parameters so every trainable tensor has a role); F is the
attention followed by phi, or attention then an MLP sublayer when ``mlp``.
Input x: [B, T, d_in]; the readout acts on the mean (or last) token.
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
class TransformerConfig:
    d_in: int = 8
    d_out: int = 1
    depth: int = 1
    n_heads: int = 2
    activation: str = "tanh"
    sigma_gelu: float = 0.1
    layernorm: bool = True
    residual: bool = True
    mlp: bool = False
    pooling: str = "mean"
    attn_logit: float | None = None  # overrides the parametrization's exponent when set
    base_width: int = 1

    def __post_init__(self):
        if self.depth < 1 or self.n_heads < 1:
            raise ValueError(f"TransformerConfig needs depth, n_heads >= 1, got {self.depth}, {self.n_heads}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {self.activation!r}; expected one of {ACTIVATIONS}")
        if self.pooling not in ("mean", "last"):
            raise ValueError(f"pooling must be 'mean' or 'last', got {self.pooling!r}")


class AttentionBlock(nn.Module):
    """Holds one block's tensors and constants; its map is ``call`` over a parameter dict (pure)."""

    def __init__(self, config: TransformerConfig, width: int, param: Parametrization, generator, dtype):
        super().__init__()
        kw = dict(param=param, width=width, generator=generator, base_width=config.base_width, dtype=dtype)
        H = config.n_heads
        self.n_heads, self.width = H, width
        # one ParamLinear per projection, all heads stacked along the output dim
        self.q = ParamLinear(width, H * width, "hidden", **kw)
        self.k = ParamLinear(width, H * width, "hidden", **kw)
        self.v = ParamLinear(width, H * width, "hidden", **kw)
        self.o = ParamLinear(H * width, width, "hidden", **kw)
        alpha = float(param.attn_logit if config.attn_logit is None else config.attn_logit)
        self.logit_scale = width ** (-alpha)
        self.phi = get_activation(config.activation, config.sigma_gelu)
        self.config = config
        if config.mlp:
            self.fc1 = ParamLinear(width, width, "hidden", **kw)
            self.fc2 = ParamLinear(width, width, "hidden", **kw)

    def _ln(self, g: torch.Tensor) -> torch.Tensor:
        return nn.functional.layer_norm(g, g.shape[-1:]) if self.config.layernorm else g

    def _attention(self, p: Mapping[str, torch.Tensor], prefix: str, g: torch.Tensor) -> torch.Tensor:
        B, T, n = g.shape
        H = self.n_heads
        q = self.q.call(p[prefix + "q.weight"], None, g).view(B, T, H, n).transpose(1, 2)  # [B, H, T, n]
        k = self.k.call(p[prefix + "k.weight"], None, g).view(B, T, H, n).transpose(1, 2)
        v = self.v.call(p[prefix + "v.weight"], None, g).view(B, T, H, n).transpose(1, 2)
        zeta = torch.softmax(q @ k.transpose(-1, -2) * self.logit_scale, dim=-1)  # [B, H, T, T]
        heads = (zeta @ v).transpose(1, 2).reshape(B, T, H * n)
        return self.o.call(p[prefix + "o.weight"], None, heads)

    def call(self, p: Mapping[str, torch.Tensor], prefix: str, g: torch.Tensor) -> torch.Tensor:
        """g [B, T, n] -> the block's output, with this block's tensors read from p under ``prefix``."""
        res = self.config.residual
        if self.config.mlp:
            a = self._attention(p, prefix, self._ln(g))
            g = g + a if res else a
            u = self.fc2.call(p[prefix + "fc2.weight"], None,
                              self.phi(self.fc1.call(p[prefix + "fc1.weight"], None, self._ln(g))))
            return g + u if res else u
        u = self.phi(self._attention(p, prefix, self._ln(g)))
        return g + u if res else u


class Transformer(WidthModel):
    """Embedding (input role) -> depth x AttentionBlock (hidden role) -> pooled readout (output role)."""

    def __init__(self, config: TransformerConfig, width: int, param: Parametrization, generator: torch.Generator,
                 dtype: torch.dtype = torch.float32):
        super().__init__()
        if width < 1:
            raise ValueError(f"width must be a positive integer, got {width}")
        self.config, self.width, self.param = config, width, param
        kw = dict(param=param, width=width, generator=generator, base_width=config.base_width, dtype=dtype)
        self.embed = ParamLinear(config.d_in, width, "input", **kw)
        self.blocks = nn.ModuleList(AttentionBlock(config, width, param, generator, dtype) for _ in range(config.depth))
        self.readout = ParamLinear(width, config.d_out, "output", **kw)

    def _pool(self, g: torch.Tensor) -> torch.Tensor:
        return g.mean(dim=1) if self.config.pooling == "mean" else g[:, -1]

    def apply(self, params: Mapping[str, torch.Tensor], x: torch.Tensor, all_layers: bool = False):
        """x [B, T, d_in] -> f [B, d_out]; with all_layers, [embedding, block outputs..., f], token-level
        features pooled to [B, n]."""
        if x.dim() != 3:
            raise ValueError(f"Transformer expects x of shape [B, T, d_in], got {tuple(x.shape)}")
        g = self.embed.call(params["embed.weight"], None, x)
        feats = [self._pool(g)] if all_layers else None
        for i, block in enumerate(self.blocks):
            g = block.call(params, f"blocks.{i}.", g)
            if all_layers:
                feats.append(self._pool(g))
        f = self.readout.call(params["readout.weight"], None, self._pool(g))
        return feats + [f] if all_layers else f
