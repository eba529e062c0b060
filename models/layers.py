"""Layers whose trainable tensor is the w of an abc-parametrization, and the WidthModel base class.

The multiplier n^-a is applied in forward, so ``weight`` holds w and the
parameter's role, multiplier and learning-rate scale travel with the module.
A WidthModel's forward is a pure function of a parameter dict,
``apply(params, x)``: the one forward of each architecture, which the module's
own ``forward`` calls with its live tensors (so torch.func.functional_call
works too), and which measurement code calls directly as f(params, x).
"""
from __future__ import annotations

import math

import torch
from torch import nn

from ntkcheck.theory.parametrization import Optimizer, Parametrization, Role


class ParamLinear(nn.Module):
    """y = mult * x @ w^T + bias_mult * b, with w ~ N(0, init_std^2).

    x: [..., fan_in] -> y: [..., fan_out]. For the input role, forward also divides
    by sqrt(fan_in) (a width-independent constant so preactivations are O(1) for
    any input dimension).
    """

    def __init__(self, fan_in: int, fan_out: int, role: Role, param: Parametrization, width: int,
                 generator: torch.Generator, *, bias: bool = False, base_width: int = 1,
                 dtype: torch.dtype = torch.float32, bias_role: str | None = None):
        super().__init__()
        scaling = param.role(role)
        n, n0 = float(width), float(base_width)
        self.role = role
        self.fan_in, self.fan_out = fan_in, fan_out
        self.scaling = scaling
        self.width, self.base_width = width, base_width
        const = 1.0 / math.sqrt(fan_in) if role == "input" else 1.0
        self.mult = scaling.multiplier(n, n0) * const
        std = scaling.init_std(n, n0)
        if role != "input":
            std *= math.sqrt(width / fan_in)  # fan-in a fixed multiple of n (attention output)
        w = torch.randn(fan_out, fan_in, generator=generator, dtype=dtype) * std
        self.weight = nn.Parameter(w)
        # hidden-layer biases behave like input weights (fan-in 1); the output bias is vector-like
        self.bias_role = bias_role or ("output_bias" if role == "output" else "input")
        if bias:
            self.bias = nn.Parameter(torch.zeros(fan_out, dtype=dtype))
            self.bias_mult = 1.0 if self.bias_role == "output_bias" else param.input.multiplier(n, n0)
        else:
            self.register_parameter("bias", None)
            self.bias_mult = 1.0

    def call(self, weight: torch.Tensor, bias: torch.Tensor | None, x: torch.Tensor) -> torch.Tensor:
        """mult * x @ weight^T (+ bias_mult * bias): this layer's map with the given tensors (pure)."""
        y = nn.functional.linear(x, weight) * self.mult
        if bias is not None:
            y = y + bias * self.bias_mult
        return y

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.call(self.weight, self.bias, x)

    def learning_rates(self, optimizer: Optimizer, param: Parametrization) -> dict[str, float]:
        """Per-tensor learning-rate scale (multiply by the base lr) for this layer's tensors."""
        n, n0 = float(self.width), float(self.base_width)
        out = {"weight": self.scaling.learning_rate(n, optimizer, n0)}
        if self.bias is not None:
            out["bias"] = 1.0 if self.bias_role == "output_bias" else param.input.learning_rate(n, optimizer, n0)
        return out


class WidthModel(nn.Module):
    """Base class: a network built at width n under a parametrization (made by ``ntkcheck.models.build``).

    Subclasses implement ``apply(params, x, all_layers=False)``: x -> f [B, C], or with
    ``all_layers`` the list of per-layer features ending with f, as a pure function of
    ``params`` ({name: tensor}, the names of ``named_parameters``).
    """

    param: Parametrization
    width: int
    arch: str = ""

    def forward(self, x: torch.Tensor, all_layers: bool = False):
        """The module's own tensors through ``apply``, read by attribute path so that
        torch.func.functional_call, which swaps those attributes, works too."""
        if not hasattr(self, "_param_names"):
            self._param_names = [name for name, _ in self.named_parameters()]
        live = {}
        for name in self._param_names:
            obj = self
            for part in name.split("."):
                obj = getattr(obj, part)
            live[name] = obj
        return self.apply(live, x, all_layers=all_layers)

    def params(self) -> dict[str, torch.Tensor]:
        """Detached copies of the trainable tensors: the ``params`` of f(params, x) = self.apply(params, x)."""
        return {k: v.detach().clone() for k, v in self.named_parameters()}

    def learning_rates(self, optimizer: Optimizer = "sgd", base_lr: float = 1.0) -> dict[str, float]:
        """{parameter name: base_lr * lr_role * n^-c_role} for every trainable tensor."""
        out: dict[str, float] = {}
        for prefix, mod in self.named_modules():
            if isinstance(mod, ParamLinear):
                for k, v in mod.learning_rates(optimizer, self.param).items():
                    out[f"{prefix}.{k}" if prefix else k] = base_lr * v
        return out

    def roles(self) -> dict[str, str]:
        """{parameter name: role} ('input', 'hidden', 'output', or a bias role)."""
        out: dict[str, str] = {}
        for prefix, mod in self.named_modules():
            if isinstance(mod, ParamLinear):
                out[f"{prefix}.weight"] = mod.role
                if mod.bias is not None:
                    out[f"{prefix}.bias"] = mod.bias_role
        return out
