"""Claims and results: the result.json contract of design.md.

A claim compares a measured number with the theory's prediction under a stated
relation and tolerance; a control claim predicts the effect's absence and must
hold too. verdict is "pass" iff every claim holds.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

RELATIONS = ("==", "<=", ">=", "<", ">")


@dataclass(frozen=True)
class Claim:
    name: str
    predicted: float
    measured: float
    ci: tuple[float, float]
    tolerance: float
    holds: bool
    control: bool = False

    @classmethod
    def compare(cls, name: str, predicted: float, measured: float, relation: str, tolerance: float,
                ci: Sequence[float] | None = None, control: bool = False) -> "Claim":
        """holds iff  measured (relation) predicted  with slack ``tolerance``:

        '==': |m - p| <= tol;  '<=': m <= p + tol;  '>=': m >= p - tol;
        '<': m < p - tol (below by a margin);  '>': m > p + tol.
        The relation is written into the claim's name so result.json says what was tested.
        A NaN measurement never holds.
        """
        if relation not in RELATIONS:
            raise ValueError(f"unknown relation {relation!r}; expected one of {RELATIONS}")
        m, p, t = float(measured), float(predicted), float(tolerance)
        if math.isnan(m):
            holds = False
        elif relation == "==":
            holds = abs(m - p) <= t
        elif relation == "<=":
            holds = m <= p + t
        elif relation == ">=":
            holds = m >= p - t
        elif relation == "<":
            holds = m < p - t
        else:
            holds = m > p + t
        ci_t = (float(ci[0]), float(ci[1])) if ci is not None else (m, m)
        label = f"{name} [{relation} {p:g}, tol {t:g}]"
        return cls(label, p, m, ci_t, t, bool(holds), control)

    def to_json(self) -> dict:
        def num(v):
            return None if (isinstance(v, float) and not math.isfinite(v)) else v
        return {"name": self.name, "predicted": num(self.predicted), "measured": num(self.measured),
                "ci": [num(self.ci[0]), num(self.ci[1])], "tolerance": self.tolerance,
                "holds": self.holds, "control": self.control}


@dataclass
class Result:
    check: str
    config: dict
    claims: list[Claim]
    provenance: dict = field(default_factory=dict)
    version: int = 1

    @property
    def verdict(self) -> str:
        return "pass" if self.claims and all(c.holds for c in self.claims) else "fail"

    def to_json(self) -> dict:
        return {"check": self.check, "version": self.version, "verdict": self.verdict,
                "config": self.config, "claims": [c.to_json() for c in self.claims],
                "provenance": self.provenance}
