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


# ------------------------------------------- the rule's time in closed form, the oracle, the noise average
def _two_sided_spectrum(n, beta):
    """1, then |k|^-2beta for k = +-1, +-2, ...: the periodic Sobolev kernel's Mercer spectrum, N entries."""
    k = np.arange(1, n // 2 + 1, dtype=float)
    return np.concatenate([[1.0], np.repeat(k ** (-2 * beta), 2)])[:n]


@given(beta=st.floats(1.0, 2.5), log2n=st.floats(8, 14), sigma=st.floats(0.1, 1.0), scale=st.floats(0.5, 2.0))
@settings(max_examples=40, deadline=None)
def test_power_law_radius_matches_two_sided_spectrum(beta, log2n, sigma, scale):
    """Over k in Z the sum of min(lam, rho^2) is its integral up to the kinks at +-k* (Poisson summation):
    the closed form holds to 5% once k* > 3, and to 20% at any k* >= 1."""
    n = int(2**log2n)
    rho2 = es.critical_radius(_two_sided_spectrum(n, beta), sigma, scale) ** 2
    pred = es.power_law_critical_radius(n, beta, sigma, scale, multiplicity=2)
    k_star = rho2 ** (-1 / (2 * beta))
    assert abs(math.log(rho2 / pred)) <= (0.05 if k_star > 3 else 0.2)


@given(beta=st.floats(0.75, 3.0), sigma=st.floats(0.1, 1.0), c=st.floats(0.1, 3.0))
@settings(max_examples=15, deadline=None)
def test_power_law_radius_is_the_limit_of_one_sided_spectra(beta, sigma, c):
    """For lam_k = c k^-2beta (k >= 1) the closed form is the N -> inf limit: the error is O(1/k*) and falls."""
    gaps = []
    for n in (2**10, 2**13, 2**16):
        lam = c * np.arange(1, n + 1, dtype=float) ** (-2 * beta)
        gaps.append(abs(math.log(es.critical_radius(lam, sigma) ** 2 / es.power_law_critical_radius(n, beta, sigma,
                                                                                                   c=c))))
    assert gaps[-1] < gaps[0] + 1e-9 and gaps[-1] < 0.2


@given(beta=st.floats(0.6, 4.0), n=st.integers(1, 10**7), sigma=st.floats(0.01, 5.0), scale=st.floats(0.1, 5.0),
       c=st.floats(0.01, 10.0))
def test_power_law_radius_scaling(beta, n, sigma, scale, c):
    """Only m c^(1/(2beta)) / (N a^2) enters: m = 2 is m = 1 with c 2^(2beta); N x 4 with a / 2 changes nothing;
    and rho^2 falls like N^(-2beta/(2beta+1)) exactly."""
    r = es.power_law_critical_radius(n, beta, sigma, scale, c=c, multiplicity=2)
    assert math.isclose(r, es.power_law_critical_radius(n, beta, sigma, scale, c=c * 2 ** (2 * beta)), rel_tol=1e-9)
    assert math.isclose(r, es.power_law_critical_radius(4 * n, beta, sigma * 2, scale, c=c, multiplicity=2),
                        rel_tol=1e-9)
    r8 = es.power_law_critical_radius(8 * n, beta, sigma, scale, c=c, multiplicity=2)
    assert math.isclose(math.log(r8 / r) / math.log(8), es.rate_exponent(beta), rel_tol=1e-9)


def test_power_law_radius_refuses_beta_at_most_half():
    import pytest

    with pytest.raises(ValueError):
        es.power_law_critical_radius(100, 0.5, 1.0)


@given(beta=st.sampled_from([1, 2]), log2n=st.integers(7, 12), sigma=st.floats(0.2, 1.0))
@settings(max_examples=12, deadline=None)
def test_stopping_time_is_the_closed_form_time(beta, log2n, sigma):
    """RWY eq. 7 on the kernel's spectrum stops at eta_T = 1/rho_N^2 of the closed form, to the closed form's
    accuracy (5% once k* > 3, 20% at any k*) and one step."""
    n = 2**log2n
    lam = _two_sided_spectrum(n, beta)
    step = 0.1 / lam[0]
    eta = step * es.stopping_time(lam, sigma, step)
    pred = 1 / es.power_law_critical_radius(n, beta, sigma, multiplicity=2)
    tol = math.exp(0.05 if pred ** (1 / (2 * beta)) > 3 else 0.2)
    assert pred / tol - step <= eta <= pred * tol


def test_time_exponents():
    for beta in (0.75, 1.0, 2.0):
        assert math.isclose(es.rule_time_exponent(beta), 2 * beta / (2 * beta + 1))
        assert math.isclose(es.oracle_time_exponent(beta, 0.0), es.rule_time_exponent(beta))
        assert es.oracle_time_exponent(beta, 0.5) < es.rule_time_exponent(beta)


def _model_error(log_eta, n, beta, delta, k):
    """Population bias^2 + variance of gradient flow at eta for c_k^2 = k^-(2beta+1+delta), lam_k = k^-2beta."""
    lam, eta = k ** (-2 * beta), math.exp(log_eta)
    return float((k ** (-(2 * beta + 1 + delta)) * np.exp(-2 * eta * lam)).sum()
                 + ((-np.expm1(-eta * lam)) ** 2).sum() / n)


@given(beta=st.sampled_from([1.0, 1.5, 2.0]), delta=st.sampled_from([0.0, 0.5, 1.0]))
@settings(max_examples=6, deadline=None)
def test_oracle_exponents_and_stopping_cost_from_sums(beta, delta):
    """The bias-variance sums themselves: the best eta grows like N^oracle_time_exponent, the best error falls
    like N^oracle_rate_exponent, and err(r eta_o) / err(eta_o) is stopping_cost(r)."""
    from scipy.optimize import minimize_scalar

    k = np.arange(1, 200_001, dtype=float)
    ns = np.array([1e6, 1e8, 1e10])
    best = [minimize_scalar(lambda le: _model_error(le, n, beta, delta, k), bounds=(0, 40), method="bounded",
                            options={"xatol": 1e-8}) for n in ns]
    t_slope = np.polyfit(np.log(ns), [b.x for b in best], 1)[0]
    e_slope = np.polyfit(np.log(ns), np.log([b.fun for b in best]), 1)[0]
    assert abs(t_slope - es.oracle_time_exponent(beta, delta)) < 0.01
    assert abs(e_slope - es.oracle_rate_exponent(beta, delta)) < 0.01
    b = best[1]
    for r in (0.2, 0.5, 2.0, 5.0):
        ratio = _model_error(b.x + math.log(r), ns[1], beta, delta, k) / b.fun
        assert math.isclose(ratio, es.stopping_cost(r, beta, delta), rel_tol=0.02)


@given(r=st.floats(1e-3, 1e3), beta=st.floats(0.6, 4.0), delta=st.floats(0.0, 2.0))
def test_stopping_cost_is_least_at_the_oracle(r, beta, delta):
    assert math.isclose(es.stopping_cost(1.0, beta, delta), 1.0)
    assert es.stopping_cost(r, beta, delta) >= 1.0 - 1e-12
    # farther from the oracle costs more, on either side
    if r < 1:
        assert es.stopping_cost(r / 2, beta, delta) > es.stopping_cost(r, beta, delta)
    else:
        assert es.stopping_cost(2 * r, beta, delta) > es.stopping_cost(r, beta, delta)


@given(m=st.integers(1, 12), n=st.integers(1, 8), seed=st.integers(0, 10**6), sigma=st.floats(0.0, 3.0))
@settings(max_examples=20, deadline=None)
def test_expected_sq_error_is_bias_plus_variance(m, n, seed, sigma):
    """The closed form against the exact expectation: E over xi of a quadratic, by its mean and covariance
    (xi -> A diag(w) xi has covariance A diag(w^2) A^T)."""
    rng = np.random.default_rng(seed)
    A, z, f, w = rng.standard_normal((m, n)), rng.standard_normal(n), rng.standard_normal(m), rng.standard_normal(n)
    bias = A @ (w * z) - f
    cov = A @ np.diag(w**2) @ A.T
    exact = float(bias @ bias + sigma**2 * np.trace(cov)) / m
    assert math.isclose(es.expected_sq_error(A, z, f, w, sigma), exact, rel_tol=1e-9, abs_tol=1e-12)


def test_expected_sq_error_matches_monte_carlo():
    """Averaging the squared error over label-noise draws converges to expected_sq_error (5 standard errors)."""
    rng = np.random.default_rng(7)
    m, n, sigma = 30, 12, 0.7
    A, z, f = rng.standard_normal((m, n)) / n, rng.standard_normal(n), rng.standard_normal(m) * 0.1
    w = rng.uniform(0, 2, n)
    xi = rng.standard_normal((20_000, n))
    draws = (((z + sigma * xi) * w) @ A.T - f) ** 2
    per = draws.mean(axis=1)
    assert abs(per.mean() - es.expected_sq_error(A, z, f, w, sigma)) < 5 * per.std() / math.sqrt(len(per))
