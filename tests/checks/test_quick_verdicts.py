"""Every registered check's --quick run: verdict pass, and at least one control claim, all holding."""
import pytest

QUICK_VERDICT_CHECKS = ("jl_subspace", "early_stopping", "task_arithmetic", "ntk_convergence")


@pytest.mark.parametrize("name", QUICK_VERDICT_CHECKS)
def test_verdict_pass(quick_result, name):
    result = quick_result(name)
    bad = [c.name for c in result.claims if not c.holds]
    assert result.verdict == "pass", bad


@pytest.mark.parametrize("name", QUICK_VERDICT_CHECKS)
def test_control_holds(quick_result, name):
    controls = [c for c in quick_result(name).claims if c.control]
    assert controls and all(c.holds for c in controls)
