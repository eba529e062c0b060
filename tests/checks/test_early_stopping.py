"""early_stopping --quick: verdict pass, every claim (controls included) holds."""
import pytest

from ntkcheck.checks import registry


@pytest.fixture(scope="module")
def result(quick_result):
    return quick_result("early_stopping")


def test_rate_claims_present(result):
    names = " ".join(c.name for c in result.claims)
    for key in ("stopping rule", "oracle time", "critical radius", "beta-hat", "ridge", "MLP", "interpolation"):
        assert key in names


def test_config_is_frozen_and_quick_is_smaller():
    cls = registry.get("early_stopping").config_cls
    q, full = cls.quick(), cls()
    assert max(q.sample_sizes) <= max(full.sample_sizes) and q.seeds <= full.seeds
    with pytest.raises(Exception):
        q.seeds = 1  # frozen
