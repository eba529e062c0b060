"""The registry of checks: every module in ntkcheck.checks that defines ``SPEC`` is a check.

A check module holds a docstring stating its claim (paper, equation), a frozen
``Config`` dataclass (defaults = full mode, sweep axes marked with
``checks.config.axis``; ``Config.quick()`` = the reduced sweep),
``run(config, store) -> list[Claim]``, and ``FAULTS``, the bugs it must catch
(checks.faults). Discovery imports modules but runs nothing.
"""
from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass
from typing import Callable

from ntkcheck.checks.config import axes
from ntkcheck.errors import UserError


@dataclass(frozen=True)
class CheckSpec:
    name: str
    summary: str
    config_cls: type
    run: Callable  # (config, ResultStore) -> list[Claim]
    order: int = 100
    #: bump when the measurement code changes what a point holds: finished points of
    #: another version are recomputed, never mixed in (it is part of the store's fingerprint)
    version: int = 1
    #: config -> estimated peak bytes of the sweep's largest point, checked before anything runs
    memory: Callable | None = None
    #: the plausible bugs this check must catch (checks.faults.Fault), run by ``ntkcheck selftest``
    faults: tuple = ()

    def default_config(self, quick: bool = False):
        return self.config_cls.quick() if quick else self.config_cls()

    @property
    def axes(self) -> tuple[str, ...]:
        """The Config fields that are sweep axes (changing them keeps finished points)."""
        return axes(self.config_cls)


def all_checks() -> dict[str, CheckSpec]:
    import ntkcheck.checks as pkg

    specs: dict[str, CheckSpec] = {}
    for mod in pkgutil.iter_modules(pkg.__path__):
        if mod.name.startswith("_"):
            continue
        module = importlib.import_module(f"ntkcheck.checks.{mod.name}")
        spec = getattr(module, "SPEC", None)
        if isinstance(spec, CheckSpec):
            specs[spec.name] = spec
    return dict(sorted(specs.items(), key=lambda kv: (kv[1].order, kv[0])))


def get(name: str) -> CheckSpec:
    specs = all_checks()
    if name not in specs:
        raise UserError(f"unknown check {name!r}; known checks: {', '.join(specs)}")
    return specs[name]
