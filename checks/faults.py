"""The mutation harness: plausible bugs injected one at a time, each of which a check must catch.

A Fault names a bug a researcher could write (a wrong exponent, sign, constant,
kernel kind, argument order, rule, negation, a missing operation) and injects
it through one mechanism: ``inject(fault)`` replaces one attribute -- a function
or value of models/, theory/ or the check's own module, named "module:attribute"
-- by ``fault.patch(original)`` for the duration of a block, and restores it
afterwards (unittest.mock.patch's mechanism). Because checks import names
directly (``from ntkcheck.theory.abc import analyze``), the target is the name
where the check looks it up (``ntkcheck.checks.tp_scaling:analyze``).

Each check module lists its faults (``FAULTS``, passed to its CheckSpec).
``selftest(spec)`` runs the check clean, then once per fault in a fresh run
store (or, for a fault whose ``scope`` is "claims" -- it changes predictions
only -- on the clean run's points), and reports for every fault the verdict
expected ("fail"), the verdict observed, and the claims whose state changed. A
fault a check cannot catch by design is listed with ``caught=False`` and the
reason; it is run and reported, never hidden, and never counts as surviving.
"""
from __future__ import annotations

import contextlib
import importlib
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator
from unittest import mock

SCOPES = ("measurements", "claims")


@dataclass(frozen=True)
class Fault:
    """One plausible bug: ``target`` ("module:attribute") is replaced by ``patch(original)`` while it runs."""

    name: str
    bug: str
    target: str
    patch: Callable[[Any], Any]
    scope: str = "measurements"
    caught: bool = True
    reason: str = ""

    def __post_init__(self):
        if ":" not in self.target:
            raise ValueError(f"fault {self.name!r}: target must be 'module:attribute', got {self.target!r}")
        if self.scope not in SCOPES:
            raise ValueError(f"fault {self.name!r}: scope must be one of {SCOPES}, got {self.scope!r}")
        if not self.caught and not self.reason:
            raise ValueError(f"fault {self.name!r} is not caught by design: say why (reason=...)")


@contextlib.contextmanager
def inject(fault: Fault) -> Iterator[None]:
    """Replace fault.target by fault.patch(original) inside the block (restored on exit, errors included)."""
    module_name, attr = fault.target.split(":", 1)
    module = importlib.import_module(module_name)
    obj = module
    *path, last = attr.split(".")
    for part in path:
        obj = getattr(obj, part)
    original = getattr(obj, last)
    with mock.patch.object(obj, last, fault.patch(original)):
        yield


@dataclass
class Outcome:
    """What one fault did to a check: verdicts and the claims whose state changed."""

    check: str
    fault: str
    bug: str
    expected: str
    observed: str
    flipped: list[str]
    seconds: float
    caught_by_design: bool = True
    reason: str = ""

    @property
    def survived(self) -> bool:
        """A fault the check should catch, that left the verdict at pass (or merely inconclusive: a fault
        must make some claim fail, or break the run loudly, to count as caught)."""
        return self.caught_by_design and self.observed in ("pass", "inconclusive")


def _run_fault(spec_ref, fault_name: str, config: Any, where: Path) -> tuple[str, dict | None, str, float]:
    """(verdict or 'error', {claim id: state}, error text, seconds) of one check run under one fault.
    ``spec_ref``: the CheckSpec itself, or its (module, attribute) in a worker process."""
    from ntkcheck.checks.api import run_check
    from ntkcheck.checks.workers import resolve

    spec = resolve(spec_ref)
    fault = next(f for f in spec.faults if f.name == fault_name)
    t0 = time.time()
    try:
        with inject(fault):
            res = run_check(spec, config, where)
    except Exception as e:  # the fault broke the run itself: loud, so caught, and reported as such
        return "error", None, f"the run raised {type(e).__name__}: {str(e).splitlines()[0][:120]}", time.time() - t0
    return res.verdict, {c.id: c.state for c in res.claims}, "", time.time() - t0


def selftest(spec, *, quick: bool = True, out: str | Path | None = None, faults: list[str] | None = None,
             config: Any = None, jobs: int = 1) -> tuple[Any, list[Outcome]]:
    """(clean Result, one Outcome per fault) of ``spec``: see the module docstring. With ``jobs`` > 1 the
    fault runs go to that many worker processes (each single-threaded, as the checks run)."""
    from ntkcheck.checks.api import run_check

    config = spec.default_config(quick) if config is None else config
    chosen = [f for f in spec.faults if faults is None or f.name in faults]
    root = Path(out) if out is not None else Path(tempfile.mkdtemp(prefix="ntkcheck-selftest-"))
    clean = run_check(spec, config, root / "clean")
    before = {c.id: c.state for c in clean.claims}
    places = {}
    for fault in chosen:
        where = places[fault.name] = root / "faults" / fault.name
        shutil.rmtree(where, ignore_errors=True)
        if fault.scope == "claims":
            # the fault changes predictions only: reuse the clean run's finished points
            shutil.copytree(root / "clean" / spec.name / "points", where / spec.name / "points")
    if jobs > 1 and len(chosen) > 1:
        from ntkcheck.checks.workers import pool, spec_ref

        ref = spec_ref(spec)
        with pool(min(jobs, len(chosen))) as workers:
            runs = workers.starmap(_run_fault, [(ref, f.name, config, places[f.name]) for f in chosen])
    else:
        runs = [_run_fault(spec, f.name, config, places[f.name]) for f in chosen]
    outcomes = []
    for fault, (observed, after, error, seconds) in zip(chosen, runs):
        if after is None:
            flipped = [error]
        else:
            flipped = [f"{i}: {before.get(i, 'absent')} -> {s}" for i, s in after.items() if before.get(i) != s]
            flipped += [f"{i}: {s} -> absent" for i, s in before.items() if i not in after]
        outcomes.append(Outcome(spec.name, fault.name, fault.bug, "fail" if fault.caught else "pass (not caught "
                                "by design)", observed, flipped, seconds, fault.caught, fault.reason))
    return clean, outcomes


def table(rows: list[Outcome]) -> str:
    """A markdown table: check, fault, the bug, expected and observed verdict, the claims that flipped."""
    lines = ["| check | fault | bug | expected | observed | claims that flipped |", "|---|---|---|---|---|---|"]
    for o in rows:
        flips = "; ".join(o.flipped[:4]) + (f"; {len(o.flipped) - 4} more" if len(o.flipped) > 4 else "")
        mark = " **SURVIVED**" if o.survived else ""
        why = f" ({o.reason})" if not o.caught_by_design else ""
        lines.append(f"| {o.check} | {o.fault} | {o.bug}{why} | {o.expected} | {o.observed}{mark} | "
                     f"{flips or 'none'} |")
    return "\n".join(lines)
