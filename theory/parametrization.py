"""abc-parametrizations as values (Yang & Hu 2021; [KV] App. C.1, Table 10).

A weight of role r in a width-n network is used in forward as

    W = alpha_r * (n / n0)^(-a_r) * w,      w_ij ~ N(0, (sigma_r * (n / n0)^(-b_r))^2 * n / fan_in)

and trained with learning rate eta * lr_r * (n / n0)^(-c_r), where c_r is
``c_sgd`` for SGD and ``c_adam`` for Adam / SignGD. The trainable tensor is
w (the "w^l" of the abc-parametrization); the multiplier lives in forward.
The factor n / fan_in only corrects for layers whose fan-in is a fixed
multiple of n (an attention output projection over H heads); it is 1 for
square hidden layers and is dropped for the input role (fan-in fixed, the
input layer instead divides by sqrt(d_in) in forward, a width-independent
constant). n0 is a base width (1 unless a model config says otherwise).

Roles: ``input`` (first layer, and hidden-layer biases), ``hidden``
(n x n weights, attention Q/K/V/O), ``output`` (readout). Output-layer
biases are vector-like (finite fan-in and fan-out) and use exponents 0.
``attn_logit`` is alpha in the attention logit scale d^-alpha (1/2 is the
usual 1/sqrt(d); 1 is the 1/d of muP and of [ES] Sec. 3.2).

Nothing in models/ branches on a preset's name; theory/abc.py reads the same
value to predict scaling exponents.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from fractions import Fraction
from typing import Literal

Role = Literal["input", "hidden", "output"]
ROLES: tuple[Role, ...] = ("input", "hidden", "output")
Optimizer = Literal["sgd", "signgd", "adam"]


def _frac(x) -> Fraction:
    return x if isinstance(x, Fraction) else Fraction(x).limit_denominator(1000)


@dataclass(frozen=True)
class RoleScaling:
    """Exponents and constants of one role.

    a, b, c_sgd, c_adam: exponents of the multiplier n^-a, the init std n^-b,
    and the SGD / Adam-SignGD learning rate n^-c.
    alpha, sigma, lr: width-independent constants of the same three
    (Lemma C.6 rescalings change these).
    """

    a: Fraction = Fraction(0)
    b: Fraction = Fraction(0)
    c_sgd: Fraction = Fraction(0)
    c_adam: Fraction = Fraction(0)
    alpha: float = 1.0
    sigma: float = 1.0
    lr: float = 1.0

    def __post_init__(self):
        for name in ("a", "b", "c_sgd", "c_adam"):
            object.__setattr__(self, name, _frac(getattr(self, name)))
        for name in ("alpha", "sigma", "lr"):
            v = float(getattr(self, name))
            if not v > 0:
                raise ValueError(f"RoleScaling.{name} must be positive, got {v}")
            object.__setattr__(self, name, v)

    def c(self, optimizer: Optimizer) -> Fraction:
        return self.c_sgd if optimizer == "sgd" else self.c_adam

    def multiplier(self, n: float, n0: float = 1.0) -> float:
        return self.alpha * (n / n0) ** (-float(self.a))

    def init_std(self, n: float, n0: float = 1.0) -> float:
        return self.sigma * (n / n0) ** (-float(self.b))

    def learning_rate(self, n: float, optimizer: Optimizer, n0: float = 1.0) -> float:
        return self.lr * (n / n0) ** (-float(self.c(optimizer)))


@dataclass(frozen=True)
class Parametrization:
    """A frozen abc-parametrization: one RoleScaling per role plus the attention-logit exponent."""

    name: str
    input: RoleScaling
    hidden: RoleScaling
    output: RoleScaling
    attn_logit: Fraction = field(default=Fraction(1, 2))

    def __post_init__(self):
        object.__setattr__(self, "attn_logit", _frac(self.attn_logit))

    def role(self, role: Role) -> RoleScaling:
        if role not in ROLES:
            raise ValueError(f"unknown role {role!r}; expected one of {ROLES}")
        return getattr(self, role)

    def with_role(self, role: Role, **changes) -> "Parametrization":
        """A copy with fields of one role replaced (e.g. ``with_role('output', sigma=0.5)``)."""
        return replace(self, **{role: replace(self.role(role), **changes)})

    def rescaled(self, role: Role, gamma: float, optimizer: Optimizer = "sgd") -> "Parametrization":
        """[KV] Lemma C.6: multiplier * gamma, init / gamma, lr / gamma^2 (SGD) or / gamma (Adam, SignGD).

        The effective weights W = multiplier * w and their updates are unchanged, so
        is every training trajectory (exactly for SGD and SignGD; for Adam up to its eps).
        """
        r = self.role(role)
        lr_div = gamma**2 if optimizer == "sgd" else gamma
        return self.with_role(role, alpha=r.alpha * gamma, sigma=r.sigma / gamma, lr=r.lr / lr_div)

    def describe(self) -> dict:
        out = {"name": self.name, "attn_logit": str(self.attn_logit)}
        for role in ROLES:
            r = self.role(role)
            out[role] = {k: str(getattr(r, k)) for k in ("a", "b", "c_sgd", "c_adam")}
        return out


F = Fraction
#: Standard parametrization with width-independent learning rate: unstable (r = -1).
SP = Parametrization(
    "SP",
    input=RoleScaling(a=0, b=0, c_sgd=0, c_adam=0),
    hidden=RoleScaling(a=0, b=F(1, 2), c_sgd=0, c_adam=0),
    output=RoleScaling(a=0, b=F(1, 2), c_sgd=0, c_adam=0),
    attn_logit=F(1, 2),
)
#: SP with learning rate eta_0 / n: kernel regime (r = 1/2).
SP_LR = Parametrization(
    "SP_LR",
    input=RoleScaling(a=0, b=0, c_sgd=1, c_adam=1),
    hidden=RoleScaling(a=0, b=F(1, 2), c_sgd=1, c_adam=1),
    output=RoleScaling(a=0, b=F(1, 2), c_sgd=1, c_adam=1),
    attn_logit=F(1, 2),
)
#: NTK parametrization (Jacot et al.): multiplier n^-1/2, unit init; kernel regime (r = 1/2).
#: Adam/SignGD rates c/sqrt(n), c/n, c/sqrt(n) keep each step's output change Theta(1) (checks.md).
NTK = Parametrization(
    "NTK",
    input=RoleScaling(a=0, b=0, c_sgd=0, c_adam=F(1, 2)),
    hidden=RoleScaling(a=F(1, 2), b=0, c_sgd=0, c_adam=1),
    output=RoleScaling(a=F(1, 2), b=0, c_sgd=0, c_adam=F(1, 2)),
    # 1/d logits as in [ES] Sec. 3.2: with 1/sqrt(d), sign updates of W^Q move the logits by
    # Theta(1) at every width (feature learning inside attention), measured in tp_scaling.
    attn_logit=F(1),
)
#: Maximal-update parametrization in the multiplier-free form of [KV] Table 10.
MUP = Parametrization(
    "MUP",
    input=RoleScaling(a=0, b=0, c_sgd=-1, c_adam=0),
    hidden=RoleScaling(a=0, b=F(1, 2), c_sgd=0, c_adam=1),
    output=RoleScaling(a=0, b=1, c_sgd=1, c_adam=1),
    attn_logit=F(1),
)

PRESETS: dict[str, Parametrization] = {p.name: p for p in (SP, SP_LR, NTK, MUP)}


def get(name: str) -> Parametrization:
    """Look up a preset by name (case-insensitive)."""
    key = name.upper()
    if key not in PRESETS:
        raise ValueError(f"unknown parametrization {name!r}; expected one of {sorted(PRESETS)}")
    return PRESETS[key]
