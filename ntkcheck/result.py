"""Claims and results: the one result.json contract of checks and LM measurements (design.md).

A claim compares a measured number with a prediction under a relation and a
tolerance, which together define an acceptance band for the measurement:

    '==': [p - t, p + t]     '<=': (-inf, p + t]     '>=': [p - t, +inf)
    '<' : (-inf, p - t)      '>' : (p + t, +inf)

A claim holds when its confidence interval lies inside the band, fails when the
interval lies outside it, and is inconclusive when the interval straddles an
edge (the data cannot tell): a point estimate at the edge of a tolerance never
decides a verdict. A claim measured without an interval (an identity, a
maximum over points) is judged by its value. A NaN measurement fails.

A claim with no prediction (``predicted`` None, ``relation`` None) is a plain
measurement: it is reported, never judged (state "measured"). A control claim
predicts the effect's absence and must hold too. A result's verdict is "pass"
iff it has judged claims and every one holds, "fail" if any fails,
"inconclusive" if none fails but one is inconclusive, and "measured" when it
holds only measurements (an LM measurement where the papers make no claim).

Every claim has a stable ``id`` (dotted, e.g. "mlp_ntk.e_lin.bound") that code
and tests refer to, and a display ``name`` that may change; the relation is a
field, never parsed out of the name.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from ntkcheck.errors import UserError

RELATIONS = ("==", "<=", ">=", "<", ">")
STATES = ("holds", "fails", "inconclusive", "measured")
KINDS = ("check", "lm")


def acceptance_band(relation: str, predicted: float, tolerance: float) -> tuple[float, float, bool]:
    """(low, high, open): the band a measurement must lie in; ``open`` marks the strict relations < and >."""
    p, t = float(predicted), float(tolerance)
    if relation == "==":
        return p - t, p + t, False
    if relation == "<=":
        return -math.inf, p + t, False
    if relation == ">=":
        return p - t, math.inf, False
    if relation == "<":
        return -math.inf, p - t, True
    if relation == ">":
        return p + t, math.inf, True
    raise ValueError(f"unknown relation {relation!r}; expected one of {RELATIONS}")


def inside(value: float, band: tuple[float, float, bool]) -> bool:
    lo, hi, strict = band
    if math.isnan(value):
        return False
    return lo < value < hi if strict else lo <= value <= hi


def judge(relation: str, predicted: float, tolerance: float, measured: float,
          ci: Sequence[float] | None = None) -> str:
    """'holds' when the CI lies inside the acceptance band, 'fails' when it lies outside, 'inconclusive'
    when it straddles an edge; without a CI (or with a degenerate one) the measured value decides."""
    band = acceptance_band(relation, predicted, tolerance)
    m = float(measured)
    if math.isnan(m):
        return "fails"
    if ci is None or any(math.isnan(float(c)) for c in ci) or float(ci[0]) == float(ci[1]):
        return "holds" if inside(m, band) else "fails"
    lo, hi = sorted((float(ci[0]), float(ci[1])))
    lo_in, hi_in = inside(lo, band), inside(hi, band)
    if lo_in and hi_in:
        return "holds"
    b_lo, b_hi, strict = band
    # outside: the whole interval beyond one edge
    below = hi < b_lo or (strict and hi <= b_lo)
    above = lo > b_hi or (strict and lo >= b_hi)
    return "fails" if (below or above) else "inconclusive"


def _num(v: Any) -> float | None:
    """JSON has no NaN or infinity: they are written as null."""
    if v is None:
        return None
    v = float(v)
    return v if math.isfinite(v) else None


@dataclass(frozen=True)
class Claim:
    """One row of a result: see the module docstring for relation, band and state."""

    id: str
    name: str
    measured: float
    relation: str | None = None
    predicted: float | None = None
    tolerance: float | None = None
    ci: tuple[float, float] | None = None
    state: str = "measured"
    control: bool = False
    source: str = ""

    @property
    def holds(self) -> bool:
        return self.state == "holds"

    @property
    def judged(self) -> bool:
        return self.state != "measured"

    def to_json(self) -> dict:
        ci = self.ci if self.ci is not None else (self.measured, self.measured)
        return {"id": self.id, "name": self.name, "relation": self.relation, "predicted": _num(self.predicted),
                "tolerance": _num(self.tolerance), "measured": _num(self.measured),
                "ci": [_num(ci[0]), _num(ci[1])], "state": self.state, "control": self.control,
                "source": self.source}

    @classmethod
    def from_json(cls, obj: Mapping, where: str = "result.json") -> "Claim":
        if not isinstance(obj, Mapping):
            raise UserError(f"{where}: a claim is not an object: {obj!r:.60}")
        missing = [k for k in ("id", "name", "measured", "state") if k not in obj]
        if missing:
            raise UserError(f"{where}: claim {obj.get('id', obj.get('name', '?'))!r} lacks {', '.join(missing)}")
        if obj["state"] not in STATES:
            raise UserError(f"{where}: claim {obj['id']!r} has unknown state {obj['state']!r}")
        nan = float("nan")
        ci = obj.get("ci") or [None, None]
        return cls(id=str(obj["id"]), name=str(obj["name"]),
                   measured=nan if obj["measured"] is None else float(obj["measured"]),
                   relation=obj.get("relation"), predicted=obj.get("predicted"), tolerance=obj.get("tolerance"),
                   ci=(nan if ci[0] is None else float(ci[0]), nan if ci[1] is None else float(ci[1])),
                   state=obj["state"], control=bool(obj.get("control", False)), source=str(obj.get("source", "")))


def claim(id: str, name: str, *, predicted: float, measured: float, relation: str, tolerance: float = 0.0,
          ci: Sequence[float] | None = None, control: bool = False, source: str = "") -> Claim:
    """A judged claim: ``measured relation predicted`` with slack ``tolerance`` (see the module docstring)."""
    if relation not in RELATIONS:
        raise ValueError(f"unknown relation {relation!r}; expected one of {RELATIONS}")
    m = float(measured)
    ci_t = (float(ci[0]), float(ci[1])) if ci is not None else (m, m)
    return Claim(id=id, name=name, measured=m, relation=relation, predicted=float(predicted),
                 tolerance=float(tolerance), ci=ci_t, state=judge(relation, predicted, tolerance, m, ci_t),
                 control=control, source=source)


def measurement(id: str, name: str, measured: float, *, ci: Sequence[float] | None = None,
                source: str = "") -> Claim:
    """A plain measurement (predicted null): reported in the result, not part of the verdict."""
    m = float(measured)
    return Claim(id=id, name=name, measured=m, ci=(float(ci[0]), float(ci[1])) if ci is not None else (m, m),
                 source=source)


def verdict(claims: Sequence[Claim]) -> str:
    judged = [c for c in claims if c.judged]
    if not judged:
        return "measured"
    if any(c.state == "fails" for c in judged):
        return "fail"
    if all(c.holds for c in judged):
        return "pass"
    return "inconclusive"


@dataclass
class Result:
    """What a check or an LM measurement writes to DIR/<name>/result.json."""

    name: str
    claims: list[Claim]
    kind: str = "check"
    config: dict = field(default_factory=dict)
    provenance: dict = field(default_factory=dict)
    version: int = 1

    @property
    def verdict(self) -> str:
        return verdict(self.claims)

    def claim(self, id: str) -> Claim:
        """The claim with this id (KeyError naming the known ids otherwise)."""
        for c in self.claims:
            if c.id == id:
                return c
        raise KeyError(f"{self.name} has no claim {id!r}; ids: {[c.id for c in self.claims]}")

    def to_json(self) -> dict:
        ids = [c.id for c in self.claims]
        dup = sorted({i for i in ids if ids.count(i) > 1})
        if dup:
            raise ValueError(f"{self.name}: duplicate claim ids {dup}")
        return {"name": self.name, "kind": self.kind, "version": self.version, "verdict": self.verdict,
                "config": self.config, "claims": [c.to_json() for c in self.claims], "provenance": self.provenance}

    @classmethod
    def from_json(cls, obj: Any, where: str = "result.json") -> "Result":
        """Parse and validate a result.json object; anything malformed is a UserError naming ``where``."""
        if not isinstance(obj, Mapping):
            raise UserError(f"{where}: not a JSON object")
        missing = [k for k in ("name", "kind", "claims") if k not in obj]
        if missing:
            raise UserError(f"{where}: not an ntkcheck result (no {', '.join(missing)})")
        if obj["kind"] not in KINDS:
            raise UserError(f"{where}: unknown kind {obj['kind']!r}")
        if not isinstance(obj["claims"], list):
            raise UserError(f"{where}: claims is not a list")
        return cls(name=str(obj["name"]), kind=obj["kind"], version=int(obj.get("version", 1)),
                   claims=[Claim.from_json(c, where) for c in obj["claims"]],
                   config=dict(obj.get("config") or {}), provenance=dict(obj.get("provenance") or {}))
