"""jl_subspace --quick: verdict pass, every claim (controls included) holds."""
import pytest

from ntkcheck.checks import registry


@pytest.fixture(scope="module")
def result(quick_result):
    return quick_result("jl_subspace")


def test_rate_claims_present(result):
    names = " ".join(c.name for c in result.claims)
    for key in ("Lemma D.4", "B != 0", "slope of max_ij", "Remark D.6", "log N", "Table 11", "trajectory gap"):
        assert key in names


def test_config_is_frozen_and_quick_is_smaller():
    cls = registry.get("jl_subspace").config_cls
    q, full = cls.quick(), cls()
    assert q.draws <= full.draws and q.seeds <= full.seeds
    with pytest.raises(Exception):
        q.seeds = 1  # frozen


def test_wishart_draws_match_direct_projection():
    """The Bartlett-drawn projected Gram has the mean and spread of an explicit N(0, 1/k) projection."""
    import numpy as np

    from ntkcheck.checks._jl_helpers import gram_root, projected_grams

    rng = np.random.default_rng(0)
    V = rng.standard_normal((5, 40))
    K = V @ V.T
    k, draws = 12, 20000
    fast = projected_grams(gram_root(K), k, draws, rng)
    P = rng.standard_normal((draws, k, 40)) / np.sqrt(k)
    PV = np.einsum("dkm,nm->dkn", P, V)
    direct = np.einsum("dkn,dkm->dnm", PV, PV)
    np.testing.assert_allclose(fast.mean(0), K, atol=0.05 * np.abs(K).max())
    np.testing.assert_allclose(fast.std(0), direct.std(0), rtol=0.05, atol=0.02 * np.abs(K).max())
