"""task_arithmetic --quick: verdict pass, every claim (controls included) holds."""
import pytest

from ntkcheck.checks import registry


@pytest.fixture(scope="module")
def result(quick_result):
    return quick_result("task_arithmetic")


def test_rate_claims_present(result):
    names = " ".join(c.name for c in result.claims)
    for key in ("interference", "interaction", "cos", "MSE(theta_PT - tau_1)", "normalized accuracy", "shared"):
        assert key in names


def test_config_is_frozen_and_quick_is_smaller():
    cls = registry.get("task_arithmetic").config_cls
    q, full = cls.quick(), cls()
    assert max(q.widths) <= max(full.widths) and q.seeds <= full.seeds
    with pytest.raises(Exception):
        q.seeds = 1  # frozen
