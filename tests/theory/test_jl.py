"""Properties of the JL bounds of [KV] Lemma D.3, Thm D.2/D.5, Remark D.6 (theory/jl.py)."""
import math

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from ntkcheck.theory import jl

eps_s = st.floats(0.01, 0.95)
n_s = st.integers(1, 10_000)
k_s = st.floats(1.0, 1e4)  # larger k underflows exp() to 0


@given(n=n_s, k=k_s, dk=st.floats(0.1, 1e3), eps=eps_s)
def test_bound_decreasing_in_k(n, k, dk, eps):
    assert jl.jl_tail_bound(n, k + dk, eps) < jl.jl_tail_bound(n, k, eps)


@given(n=n_s, dn=st.integers(1, 1000), k=k_s, eps=eps_s)
def test_bound_increasing_in_n(n, dn, k, eps):
    b0, b1 = jl.jl_tail_bound(n, k, eps), jl.jl_tail_bound(n + dn, k, eps)
    assert b1 > b0 or b0 == 0.0


@given(n=n_s, k=k_s, eps=eps_s)
def test_bound_formula(n, k, eps):
    want = 4 * n**2 * math.exp(-(eps**2 - eps**3) * k / 4)
    assert math.isclose(jl.jl_tail_bound(n, k, eps), want, rel_tol=1e-12, abs_tol=1e-300)


@given(n=st.integers(2, 10_000), eps=eps_s, delta=st.floats(1e-6, 0.99))
def test_rank_for_confidence_inverts_bound(n, eps, delta):
    k = jl.rank_for_confidence(n, eps, delta)
    assert math.isclose(jl.jl_tail_bound(n, k, eps), delta, rel_tol=1e-9)


@given(n=st.integers(2, 10_000), eps=st.floats(0.01, 0.5), c=st.floats(0.5, 3.0))
def test_remark_d6_rank_gives_polynomially_small_failure(n, eps, c):
    # eps' = eps / c^2 is the deviation in Thm D.5's units; at k = 20 c^4 log N / eps^2
    # the bound is 4 N^(-3 + 5 eps'), exactly.
    e1 = eps / c**2
    if e1 >= 1:
        return
    got = jl.bound_at_remark_rank(n, eps, c)
    want = 4.0 * n ** (2 - 5 * (1 - e1))
    assert math.isclose(got, want, rel_tol=1e-9)


@given(n=n_s, k=k_s, eps=eps_s, L=st.integers(1, 12))
def test_layer_forms(n, k, eps, L):
    paper = jl.jl_tail_bound_layers(n, k, eps, L, "paper")
    union = jl.jl_tail_bound_layers(n, k, eps, L, "union")
    assert paper <= union * (1 + 1e-12)  # independence buys the exponent's factor L
    assert math.isclose(jl.jl_tail_bound_layers(n, k, eps, 1, "paper"), jl.jl_tail_bound(n, k, eps), rel_tol=1e-12)


def test_pair_bound_holds_for_gaussian_projections():
    """Lemma D.3 itself on random unit vectors: empirical tail <= 4 exp(-(eps^2 - eps^3) k / 4)."""
    rng = np.random.default_rng(0)
    d, k, eps, draws = 32, 200, 0.3, 1500
    u, v = rng.standard_normal(d), rng.standard_normal(d)
    u, v = u / np.linalg.norm(u), v / np.linalg.norm(v)  # c = 1
    P = rng.standard_normal((draws, k, d)) / math.sqrt(k)
    dev = np.abs(np.einsum("bkd,d->bk", P, u).__mul__(np.einsum("bkd,d->bk", P, v)).sum(1) - u @ v)
    assert (dev >= eps).mean() <= min(1.0, jl.jl_pair_bound(k, eps))


def test_empirical_exceedance_shapes():
    dev = np.array([0.1, 0.2, 0.3, 0.4])
    assert jl.empirical_exceedance(dev, 0.25) == 0.5
    np.testing.assert_allclose(jl.empirical_exceedance(dev, np.array([0.0, 0.35, 1.0])), [1.0, 0.25, 0.0])


# ---- sharpness: Cramer's rate, the worst pair's exact tail, Remark D.6's promise

def _rb(eps):
    return (eps**2 - eps**3) / 4


@given(eps=st.floats(1e-3, 0.999))
def test_jl_exponent_is_below_cramer_rate_and_equal_to_second_order(eps):
    i = jl.cramer_rate(eps)
    assert i >= _rb(eps)
    # I = eps^2/4 - eps^3/6 + eps^4/8 - ...: alternating with decreasing terms
    assert abs(i - (eps**2 / 4 - eps**3 / 6)) <= eps**4 / 8 + 1e-15
    if eps <= 0.1:
        assert i / _rb(eps) <= 1 + eps  # I / r = 1 + eps / 3 + O(eps^2)


@given(k=st.integers(1, 5000), eps=st.floats(0.01, 0.99))
def test_worst_pair_tail_obeys_chernoff_and_lemma_d3(k, eps):
    """The exact tail of |chi2_k / k - 1| is below Chernoff's 2 exp(-k I) and Lemma D.3's 4 exp(-r k)."""
    p = jl.chi2_deviation_tail(k, eps)
    assert 0.0 <= p <= 1.0
    assert p <= 2.0 * math.exp(-k * jl.cramer_rate(eps)) * (1 + 1e-9) + 1e-300
    assert p <= jl.jl_pair_bound(k, eps) * (1 + 1e-9) + 1e-300
    assert jl.cramer_pair_bound(k, eps) <= jl.jl_pair_bound(k, eps) * (1 + 1e-12)


def test_worst_pair_tail_matches_monte_carlo():
    rng = np.random.default_rng(3)
    for k, eps in ((16, 0.5), (100, 0.2), (400, 0.1)):
        x = rng.chisquare(k, size=200_000) / k
        emp = (np.abs(x - 1) >= eps).mean()
        p = jl.chi2_deviation_tail(k, eps)
        assert abs(emp - p) <= 5 * math.sqrt(p * (1 - p) / 200_000) + 1e-4
    np.testing.assert_allclose(jl.chi2_deviation_tail(np.array([16, 100]), 0.2),
                               [jl.chi2_deviation_tail(16, 0.2), jl.chi2_deviation_tail(100, 0.2)])


@given(eps=st.floats(0.05, 0.6), m=st.floats(10.0, 300.0))
def test_bahadur_rao_is_the_upper_tail_to_order_one_over_k(eps, m):
    from scipy import stats

    k = m / eps**2   # k eps^2 = m >= 10
    exact = stats.chi2.sf(k * (1 + eps), k)
    if exact < 1e-250:
        return
    assert abs(jl.bahadur_rao_tail(k, eps) / exact - 1) <= 3.0 / m + 3.0 / k


@given(n=st.integers(2, 10_000), eps=st.floats(0.01, 0.59))
def test_remark_d6_failure_is_the_bound_at_its_rank(n, eps):
    assert math.isclose(jl.remark_d6_failure(n, eps), jl.bound_at_remark_rank(n, eps), rel_tol=1e-9)


def test_sharpness_inputs_validated():
    import pytest

    for bad in (lambda: jl.cramer_rate(0.0), lambda: jl.chi2_deviation_tail(10, -0.1),
                lambda: jl.chi2_deviation_tail(0, 0.1), lambda: jl.remark_d6_failure(0, 0.2),
                lambda: jl.remark_d6_failure(10, 1.0)):
        with pytest.raises(ValueError):
            bad()
