"""Checks: one module per claim of docs/checks.md, discovered by ntkcheck.checks.registry.

    from ntkcheck.checks import run_check, all_checks
    result = run_check("tp_scaling", quick=True, out="runs")
    result = coord_check(lambda n: make_my_model(n), widths=[64, 128, 256, 512], optimizer="adam")
"""
from ntkcheck.checks.api import run_check, run_checks
from ntkcheck.checks.coord import coord_check
from ntkcheck.checks.registry import CheckSpec, all_checks, get

__all__ = ["run_check", "run_checks", "coord_check", "all_checks", "get", "CheckSpec"]
