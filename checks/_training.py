"""Private helpers shared by signgd_kernel, linearization and natural_task (not a check: name starts with "_").

Everything is functional over (f, params) with f(params, x) -> Tensor[B, C]
(ntkcheck.models.functional), runs in float64, and draws randomness only from
explicit torch.Generator seeds. Kernel matrices come from the kernel engine
(ntkcheck.models.kernels); the matrix-free helpers here (vjp / jvp) give the
one-step predictions of a kernel analog without forming a kernel, which is what
a batch of SignGD needs (the sign of a *summed* gradient is not a sum of kernels).
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Mapping

import torch
from torch.func import jvp, vjp

from ntkcheck.models import parametrization as P
from ntkcheck.models.attention import Transformer, TransformerConfig
from ntkcheck.models.functional import functional
from ntkcheck.models.mlp import MLP, MLPConfig
from ntkcheck.models.optim import eps_sign

Params = dict[str, torch.Tensor]
DTYPE = torch.float64


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(seed))


# ---------------------------------------------------------------- models

def build_mlp(width: int, param: P.Parametrization, seed: int, *, d_in: int, d_out: int = 1, depth: int = 2,
              activation: str = "tanh"):
    """(module, f, params) of an MLP at width n, float64, init from torch.Generator(seed)."""
    model = MLP(MLPConfig(d_in=d_in, d_out=d_out, depth=depth, activation=activation), width, param,
                gen(seed), dtype=DTYPE)
    f, params = functional(model)
    return model, f, params


def build_transformer(width: int, param: P.Parametrization, seed: int, *, d_in: int, d_out: int = 1,
                      depth: int = 1, n_heads: int = 2, attn_logit: float = 1.0, activation: str = "tanh"):
    """(module, f, params) of the [ES] Sec. 3.2 attention block (LayerNorm, residual, logit scale d^-attn_logit)."""
    cfg = TransformerConfig(d_in=d_in, d_out=d_out, depth=depth, n_heads=n_heads, activation=activation,
                            layernorm=True, residual=True, attn_logit=attn_logit)
    model = Transformer(cfg, width, param, gen(seed), dtype=DTYPE)
    f, params = functional(model)
    return model, f, params


# ---------------------------------------------------------------- data

def sphere_inputs(n: int, d_in: int, g: torch.Generator, seq_len: int | None = None) -> torch.Tensor:
    """n inputs with ||x|| = sqrt(d_in) (per token when seq_len is given): [n, d_in] or [n, seq_len, d_in]."""
    shape = (n, d_in) if seq_len is None else (n, seq_len, d_in)
    x = torch.randn(*shape, generator=g, dtype=DTYPE)
    return x / x.norm(dim=-1, keepdim=True) * math.sqrt(d_in)


@dataclass(frozen=True)
class Teacher:
    """A fixed, width-independent smooth target g(x) = a^T tanh(B x / sqrt(d)) / sqrt(m) * scale.

    Token inputs [n, T, d] are mean-pooled first, matching the students' mean pooling.
    """

    B: torch.Tensor
    a: torch.Tensor
    scale: float = 1.0

    @classmethod
    def draw(cls, d_in: int, g: torch.Generator, m: int = 64, scale: float = 1.0) -> "Teacher":
        return cls(torch.randn(m, d_in, generator=g, dtype=DTYPE), torch.randn(m, 1, generator=g, dtype=DTYPE),
                   scale)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 3:
            x = x.mean(dim=1)
        h = torch.tanh(x @ self.B.T / math.sqrt(x.shape[-1]))
        return h @ self.a / math.sqrt(self.a.shape[0]) * 2.0 * self.scale


# ---------------------------------------------------------------- functional calculus

def output(f, params: Mapping[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return f(dict(params), x)


def pullback(f, params: Mapping[str, torch.Tensor], x: torch.Tensor, cot: torch.Tensor) -> Params:
    """sum_b <cot_b, grad_theta f(x_b)>: the parameter gradient of sum_b cot_b . f(x_b). cot: [B, C]."""
    _, fn = vjp(lambda p: f(p, x), dict(params))
    return {k: v.detach() for k, v in fn(cot)[0].items()}


def pushforward(f, params: Mapping[str, torch.Tensor], direction: Mapping[str, torch.Tensor],
                x: torch.Tensor) -> torch.Tensor:
    """<grad_theta f(x), direction> for every x: a jvp, [B, C]."""
    keys = list(params)
    _, out = jvp(lambda *vs: f(dict(zip(keys, vs)), x), tuple(params[k] for k in keys),
                 tuple(direction[k] for k in keys))
    return out.detach()


def mse_residual_grad(f, params: Mapping[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor):
    """(chi, grad): chi = f(x) - y (the output derivative of l = |f - y|^2 / 2, [KV] Def. 3.1) and
    grad_theta of L = 1/(2B) sum_b |f(x_b) - y_b|^2."""
    out, fn = vjp(lambda p: f(p, x), dict(params))
    chi = (out - y).detach()
    g = fn(chi / x.shape[0])[0]
    return chi, {k: v.detach() for k, v in g.items()}


def linearized(f, params0: Mapping[str, torch.Tensor], params: Mapping[str, torch.Tensor],
               x: torch.Tensor) -> torch.Tensor:
    """f_lin(x) = f(theta_0; x) + <grad f(theta_0; x), theta - theta_0> ([KV] Def. 3.2, [ES] eq. 14, 18)."""
    delta = {k: params[k] - params0[k] for k in params0}
    return output(f, params0, x) + pushforward(f, params0, delta, x)


def direction(grads: Mapping[str, torch.Tensor], lrs: Mapping[str, float], rule: str,
              eps: Mapping[str, float] | None = None) -> Params:
    """The parameter update -eta_M * rule(grad_M): rule 'sgd' (identity), 'sign', or 'eps_sign' (eps_M per tensor)."""
    out = {}
    for k, g in grads.items():
        if rule == "sgd":
            u = g
        elif rule == "sign":
            u = torch.sign(g)
        elif rule == "eps_sign":
            u = eps_sign(g, float(eps[k]))
        else:
            raise ValueError(f"unknown update rule {rule!r}")
        out[k] = -lrs[k] * u
    return out


def add(params: Mapping[str, torch.Tensor], delta: Mapping[str, torch.Tensor]) -> Params:
    return {k: params[k] + delta[k] for k in params}


def sq_norm(tensors: Mapping[str, torch.Tensor]) -> float:
    return float(sum((v.double() ** 2).sum() for v in tensors.values()))


def train_gd(f, params: Mapping[str, torch.Tensor], lrs: Mapping[str, float], x: torch.Tensor, y: torch.Tensor,
             steps: int, callback: Callable[[int, Params], None] | None = None) -> Params:
    """Full-batch gradient descent on L = 1/(2N) sum |f - y|^2 with per-tensor lrs; callback(t, params) after each step."""
    p = dict(params)
    for t in range(1, steps + 1):
        _, g = mse_residual_grad(f, p, x, y)
        p = add(p, direction(g, lrs, "sgd"))
        if callback is not None:
            callback(t, p)
    return p


def rms(x: torch.Tensor) -> float:
    return float(x.double().pow(2).mean().sqrt())


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b|| / ||a||."""
    return float((a - b).norm() / a.norm())


def mse(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(((a - b) ** 2).mean())


def seed_mean(rows, key: str, **where) -> dict:
    """{width: mean of key over seeds} for rows matching where."""
    acc: dict[int, list[float]] = {}
    for r in rows:
        if all(r.get(k) == v for k, v in where.items()):
            acc.setdefault(r["width"], []).append(float(r[key]))
    return {w: sum(v) / len(v) for w, v in sorted(acc.items())}


def series(rows, key: str, **where):
    """(x, y) lists of rows matching where, for checks.plots.loglog_panels."""
    sel = [r for r in rows if all(r.get(k) == v for k, v in where.items())]
    return [r["width"] for r in sel], [abs(float(r[key])) for r in sel]


@contextmanager
def threads(n: int):
    """Run a block with n torch intra-op threads (restored afterwards); n <= 0 leaves the setting alone."""
    old = torch.get_num_threads()
    if n > 0:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)
