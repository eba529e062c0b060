"""Properties of the early-stopping theory (theory/early_stopping.py): [ES] eq. 10-11, 27, 29-32; RWY 2014."""
import math

import numpy as np
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from ntkcheck.theory import early_stopping as es

spectra = st.builds(
    lambda n, beta, c, seed: c * np.sort(np.random.default_rng(seed).uniform(0.2, 1.0, n)
                                         * np.arange(1, n + 1) ** (-2 * beta))[::-1],
    st.integers(2, 300), st.floats(0.55, 3.0), st.floats(0.05, 5.0), st.integers(0, 10**6))


@given(eigs=spectra, sigma=st.floats(0.01, 5.0), scale=st.floats(0.1, 5.0))
def test_critical_radius_solves_its_equation(eigs, sigma, scale):
    rho = es.critical_radius(eigs, sigma, scale)
    a = scale / (2 * math.e * sigma)
    assert rho > 0
    assert math.isclose(float(es.local_rademacher(eigs, rho)), a * rho**2, rel_tol=1e-9)
    # smallest solution: just below rho the inequality R <= a rho^2 fails
    r = rho * (1 - 1e-6)
    assert float(es.local_rademacher(eigs, r)) > a * r**2


@given(eigs=spectra, sigma=st.floats(0.01, 5.0))
def test_stopping_time_is_the_literal_rule(eigs, sigma):
    step = 1.0 / eigs.max()
    T = es.stopping_time(eigs, sigma, step)
    a = 1 / (2 * math.e * sigma)

    def violated(t):
        eta = step * t
        return float(es.local_rademacher(eigs, 1 / math.sqrt(eta))) > a / eta

    assert violated(T + 1)
    assert T == 0 or not violated(T)
    rho = es.critical_radius(eigs, sigma)
    assert step * T <= 1 / rho**2 * (1 + 1e-9)


@given(lam=st.floats(1e-8, 1.0), step=st.floats(1e-3, 1.0), t=st.integers(1, 10**6))
def test_gd_filter_between_ridge_and_twice_ridge(lam, step, t):
    """With lambda = 1/(eta t): ridge <= GD <= 2 ridge (s/(1+s) <= 1-(1-x)^t <= min(1, s) <= 2s/(1+s))."""
    assume(step * lam <= 1.0)
    g = float(es.gd_filter(np.array([lam]), step, t)[0])
    r = float(es.ridge_filter(np.array([lam]), es.ridge_lambda_for_time(step, t))[0])
    assert r * (1 - 1e-12) <= g <= 2 * r * (1 + 1e-12)


@given(lam=st.floats(1e-6, 1.0), eta=st.floats(0.1, 1e4))
def test_gd_filter_tends_to_gradient_flow(lam, eta):
    """At fixed eta_t = step t, the GD filter tends to 1 - exp(-eta lam) as step -> 0 (error O(step))."""
    flow = float(es.gradient_flow_filter(np.array([lam]), eta)[0])
    errs = []
    for t in (10**3, 10**4, 10**5):
        step = eta / t
        assume(step * lam <= 1.0)
        errs.append(abs(float(es.gd_filter(np.array([lam]), step, t)[0]) - flow))
    assert errs[-1] <= errs[0] + 1e-12
    assert errs[-1] <= eta * lam * lam * (eta / 1e5) + 1e-12


@given(beta=st.floats(0.3, 4.0), c=st.floats(1e-3, 1e3), n=st.integers(3, 2000))
def test_beta_hat_exact_on_power_law(beta, c, n):
    eigs = c * np.arange(1, n + 1, dtype=float) ** (-2 * beta)
    for intercept in (True, False):
        assert math.isclose(es.fit_beta(eigs, intercept=intercept).beta, beta, rel_tol=1e-9)
    assert math.isclose(es.fit_beta(eigs, k_min=2, k_max=max(3, n // 2)).beta, beta, rel_tol=1e-9)


@given(beta=st.sampled_from([0.75, 1.0, 1.5, 2.0]), sigma=st.floats(0.1, 1.0))
@settings(max_examples=12, deadline=None)
def test_critical_radius_rate(beta, sigma):
    """For lam_k = k^-2beta the squared radius falls like N^(-2beta/(2beta+1)) (RWY Cor. 3)."""
    ns = np.array([2**12, 2**14, 2**16])
    r2 = [es.critical_radius(np.arange(1, n + 1.0) ** (-2 * beta), sigma) ** 2 for n in ns]
    slope = np.polyfit(np.log(ns), np.log(r2), 1)[0]
    assert abs(slope - es.rate_exponent(beta)) < 0.03


@given(n=st.integers(5, 60), seed=st.integers(0, 10**6), t=st.integers(1, 500))
@settings(max_examples=30, deadline=None)
def test_spectral_gd_matches_iterated_gd(n, seed, t):
    """c_t from the filter equals t explicit steps of f <- f - alpha K_N (f - y) (train and test)."""
    rng = np.random.default_rng(seed)
    x, xt = rng.uniform(0, 1, n), rng.uniform(0, 1, 7)
    K, Kt = es.periodic_sobolev_kernel(x, x, 1), es.periodic_sobolev_kernel(xt, x, 1)
    y = rng.standard_normal(n)
    lam, U = es.normalized_gram_eigh(K)
    alpha = 1.0 / lam[0]
    coef = es.spectral_coefficients(U, y, es.gd_weights(lam, alpha, t))
    c = np.zeros(n)
    for _ in range(t):
        c = c - alpha * (K @ c / n - y)
    np.testing.assert_allclose(K @ coef / n, K @ c / n, atol=1e-8)
    np.testing.assert_allclose(es.predict(Kt, coef), Kt @ c / n, atol=1e-8)


@given(beta=st.sampled_from([1, 2]), seed=st.integers(0, 1000))
@settings(max_examples=6, deadline=None)
def test_periodic_kernel_matches_series(beta, seed):
    rng = np.random.default_rng(seed)
    x1, x2 = rng.uniform(0, 1, 5), rng.uniform(0, 1, 4)
    k = np.arange(1, 50_001)
    u = np.subtract.outer(x1, x2)[..., None]
    series = 1 + 2 * (np.cos(2 * np.pi * k * u) * k ** (-2.0 * beta)).sum(-1)
    tol = 2 * 50_000.0 ** (1 - 2 * beta)  # truncated tail
    np.testing.assert_allclose(es.periodic_sobolev_kernel(x1, x2, beta), series, atol=tol)


def test_rate_exponents():
    assert es.rate_exponent(1.0) == -2 / 3
    assert math.isclose(es.oracle_rate_exponent(1.0, 0.0), -2 / 3)
    assert es.oracle_rate_exponent(1.0, 0.5) < es.rate_exponent(1.0)
