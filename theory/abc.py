"""Scaling exponents of an abc-parametrized MLP (Yang & Hu 2021; [KV] App. C.1, C.3, Table 10).

Works on the multiplier-free ("effective") form that [KV] Lemma C.6 permits:
W = n^-a w with w ~ N(0, n^-2b) and lr n^-c is, for every training
trajectory, the same as multiplier 1, init std n^-B, lr n^-C with

    B_l = a_l + b_l,   C_l = 2 a_l + c_l (SGD),   C_l = a_l + c_l (Adam / SignGD).

Layers l = 1 (input, fan-in fixed), 2..L (hidden, n x n), L+1 (output).
Coordinate sizes are n^-e; every function returns the exponent e as a sympy
Rational (size n^-e, so e > 0 shrinks with width).

SGD, batch 1 (Yang & Hu Thm 3.3 with per-layer learning rates): the update of
W^l moves h^l by  n^-C_l * <x^{l-1}, x^{l-1}> * dh^l  where <x, x> ~ n for
hidden inputs and Theta(1) for the input layer, and the backward signal dh^l
has coordinates n^-m,  m = min(B_{L+1}, C_{L+1})  once the readout has moved
(m = B_{L+1} at the first step, when the gradient still sees the init readout):

    r = m + min_{l <= L} (C_l + 1{l = 1}) - 1.

With a global c this is [KV] C.3's  r = min(a_{L+1}+b_{L+1}, 2a_{L+1}+c) + c - 1
+ min_l (2 a_l + 1{l=1}).

Adam / SignGD: each entry moves by n^-C_l whatever the gradient's scale
(sign(g x^T) = sign(g) sign(x)^T), so h^l moves by n^-C_l * ||x^{l-1}||_1:

    r = min_{l <= L} (C_l - 1 + 1{l = 1}).

Output update: from the readout's own step n^{1 - C_{L+1}} (through
<h^L, h^L> ~ n, or ||h^L||_1 ~ n for sign updates) and from the features
n^{1 - B_{L+1} - r}:  df ~ n^-(min(C_{L+1}, B_{L+1} + r) - 1).

Stable iff B_1 = 0, B_l = 1/2 (hidden), B_{L+1} >= 1/2, r >= 0 and df = O(1).
Nontrivial iff B_{L+1} + r = 1 or C_{L+1} = 1 (df = Theta(1)).
Regime: unstable if not stable; kernel if stable, nontrivial and r > 0;
feature_learning if stable, nontrivial and r = 0; trivial otherwise.
"""
from __future__ import annotations

from dataclasses import dataclass

import sympy as sp

from ntkcheck.theory.parametrization import Optimizer, Parametrization

R = sp.Rational


def _q(x) -> sp.Rational:
    return sp.nsimplify(str(x)) if not isinstance(x, sp.Basic) else x


@dataclass(frozen=True)
class LayerScales:
    """Exponents e (coordinate size n^-e) of one layer's quantities."""

    layer: int
    role: str
    init: sp.Rational          # B_l: entries of W_{-1}
    learning_rate: sp.Rational  # C_l: the effective learning rate
    weight_update: sp.Rational  # entries of Delta W after one step
    feature_update: sp.Rational  # Delta h^l after the first step (step 1)
    feature_update_steady: sp.Rational  # Delta h^l once the readout has moved (step >= 2)


@dataclass(frozen=True)
class Analysis:
    parametrization: str
    optimizer: str
    depth: int
    r: sp.Rational
    r_step1: sp.Rational
    stable: bool
    nontrivial: bool
    regime: str
    output_update: sp.Rational        # df exponent (steady)
    output_update_step1: sp.Rational  # df exponent at step 1
    layers: tuple[LayerScales, ...]

    def as_dict(self) -> dict:
        return {
            "parametrization": self.parametrization, "optimizer": self.optimizer, "depth": self.depth,
            "r": str(self.r), "r_step1": str(self.r_step1), "stable": self.stable,
            "nontrivial": self.nontrivial, "regime": self.regime,
            "output_update": str(self.output_update), "output_update_step1": str(self.output_update_step1),
            "layers": [{k: (str(v) if isinstance(v, sp.Basic) else v) for k, v in vars(l).items()}
                       for l in self.layers],
        }


def effective_exponents(param: Parametrization, optimizer: Optimizer = "sgd") -> dict[str, tuple]:
    """{role: (B, C)} of the multiplier-free form (Lemma C.6)."""
    out = {}
    for role in ("input", "hidden", "output"):
        s = param.role(role)
        a, b, c = _q(s.a), _q(s.b), _q(s.c(optimizer))
        C = 2 * a + c if optimizer == "sgd" else a + c
        out[role] = (a + b, C)
    return out


def analyze(param: Parametrization, depth: int, optimizer: Optimizer = "sgd") -> Analysis:
    """Predicted exponents of an MLP with ``depth`` hidden layers trained by ``optimizer``."""
    if depth < 1:
        raise ValueError(f"depth must be >= 1, got {depth}")
    if optimizer not in ("sgd", "signgd", "adam"):
        raise ValueError(f"unknown optimizer {optimizer!r}")
    eff = effective_exponents(param, optimizer)
    roles = ["input"] + ["hidden"] * (depth - 1) + ["output"]
    B = [eff[r][0] for r in roles]
    C = [eff[r][1] for r in roles]
    B_out, C_out = B[-1], C[-1]
    is_first = [1 if l == 0 else 0 for l in range(depth)]

    if optimizer == "sgd":
        m_steady, m_step1 = sp.Min(B_out, C_out), B_out
        own = [C[l] + is_first[l] - 1 for l in range(depth)]  # plus m
        r_own_steady = [m_steady + e for e in own]
        r_own_step1 = [m_step1 + e for e in own]
        # Delta W entries: lr * dh_i * x_j; x ~ 1, dh^l ~ n^-m for l <= L, readout grad is h^L ~ 1
        w_upd = [C[l] + m_steady for l in range(depth)] + [C_out]
    else:
        own = [C[l] + is_first[l] - 1 for l in range(depth)]
        r_own_steady = r_own_step1 = own
        w_upd = list(C)

    def cummin(xs):
        out, cur = [], None
        for x in xs:
            cur = x if cur is None else sp.Min(cur, x)
            out.append(sp.simplify(cur))
        return out

    feat_steady = cummin(r_own_steady)
    feat_step1 = cummin(r_own_step1)
    r, r1 = feat_steady[-1], feat_step1[-1]
    df = sp.Min(C_out, B_out + r) - 1
    df1 = sp.Min(C_out, B_out + r1) - 1

    stable = bool(B[0] == 0 and all(b == R(1, 2) for b in B[1:depth]) and B_out >= R(1, 2)
                  and r >= 0 and df >= 0)
    nontrivial = bool(sp.Eq(B_out + r, 1) or sp.Eq(C_out, 1))
    if not stable:
        regime = "unstable"
    elif not nontrivial:
        regime = "trivial"
    elif r > 0:
        regime = "kernel"
    else:
        regime = "feature_learning"

    layers = tuple(
        LayerScales(layer=l + 1, role=roles[l], init=B[l], learning_rate=C[l], weight_update=sp.simplify(w_upd[l]),
                    feature_update=feat_step1[l] if l < depth else df1,
                    feature_update_steady=feat_steady[l] if l < depth else df)
        for l in range(depth + 1)
    )
    return Analysis(param.name, optimizer, depth, sp.simplify(r), sp.simplify(r1), stable, nontrivial, regime,
                    sp.simplify(df), sp.simplify(df1), layers)


def table10(param: Parametrization) -> dict[str, dict[str, sp.Rational]]:
    """[KV] Table 10 for ``param`` (2 hidden layers: U input, W hidden, V output): exponents e of Theta(n^-e).

    Rows: 'init' (M_{-1}), 'update' (Delta M_0 under SGD), 'lr_sgd' (eta_M for SGD),
    'lr_signgd' (eta_M n^d for SignGD / Adam).
    """
    sgd = analyze(param, 2, "sgd")
    sign = analyze(param, 2, "signgd")
    names = {0: "U", 1: "W", 2: "V"}
    return {
        "init": {names[i]: sgd.layers[i].init for i in range(3)},
        "update": {names[i]: sgd.layers[i].weight_update for i in range(3)},
        "lr_sgd": {names[i]: sgd.layers[i].learning_rate for i in range(3)},
        "lr_signgd": {names[i]: sign.layers[i].learning_rate for i in range(3)},
    }
