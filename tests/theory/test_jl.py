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
