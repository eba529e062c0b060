"""theory.solvers against closed forms ([KV] App. A.3; kernel GD under MSE)."""
from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import linalg

from ntkcheck.theory.solvers import (asymmetric_kernel_solve, gd_predictions, kernel_logistic, kernel_ridge,
                                     op_norm)


def psd(n, rank=None, seed=0):
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((n, rank or n))
    return A @ A.T


def test_ridge_diagonal_kernel_closed_form():
    d = np.array([4.0, 2.0, 1.0, 0.5])
    Y = np.arange(8.0).reshape(4, 2) - 3
    f0 = np.ones((4, 2)) * 7
    for ridge in (0.0, 0.1, 1.0):
        for s in (math.inf, 10.0):
            m = kernel_ridge(np.diag(d), Y, ridge=ridge, f0=f0, f0_scaling=s)
            lam = ridge * 4.0
            off = 0 if math.isinf(s) else f0 / s
            np.testing.assert_allclose(m.alpha, (Y - off) / (d + lam)[:, None], rtol=1e-12)
            np.testing.assert_allclose(m.predict(np.diag(d), f0), d[:, None] * (Y - off) / (d + lam)[:, None] + off,
                                       rtol=1e-12)


def test_ridge_zero_is_min_norm_lstsq():
    K = np.diag([2.0, 0.0, 1.0])
    m = kernel_ridge(K, np.array([1.0, 5.0, 3.0]))
    np.testing.assert_allclose(m.alpha[:, 0], [0.5, 0.0, 3.0], atol=1e-12)


def test_multi_output_form_matches_shared():
    """K ⊗ I_C as an (N C) x (N C) kernel gives the shared-kernel solution per output."""
    K = psd(5, seed=1)
    Y = np.random.default_rng(2).standard_normal((5, 3))
    Kt = np.random.default_rng(3).standard_normal((2, 5))
    multi = np.einsum("ij,ab->iajb", K, np.eye(3))
    multi_t = np.einsum("ij,ab->iajb", Kt, np.eye(3))
    a = kernel_ridge(K, Y, ridge=0.01).predict(Kt)
    b = kernel_ridge(multi, Y, ridge=0.01).predict(multi_t)
    np.testing.assert_allclose(a, b, rtol=1e-10)
    assert op_norm(multi) == pytest.approx(op_norm(K))


def test_logistic_optimality_and_forms():
    rng = np.random.default_rng(4)
    X = rng.standard_normal((12, 3))
    K = X @ X.T + 0.5
    y = np.argmax(X[:, :3], axis=1)
    fit = kernel_logistic(K, y, 3, ridge=0.01)
    assert fit.converged
    # stationarity: K (P - Y)/N + lambda K alpha = 0
    Z = K @ fit.model.alpha
    P = np.exp(Z - Z.max(1, keepdims=True))
    P /= P.sum(1, keepdims=True)
    lam = 0.01 * op_norm(K)
    grad = K @ (P - np.eye(3)[y]) / 12 + lam * K @ fit.model.alpha
    assert np.abs(grad).max() < 1e-9
    assert (fit.predict(K) == y).mean() > 0.8
    multi = np.einsum("ij,ab->iajb", K, np.eye(3))
    fit2 = kernel_logistic(multi, y, ridge=0.01)
    assert fit2.loss == pytest.approx(fit.loss, rel=1e-6)
    with pytest.raises(ValueError, match="labels"):
        kernel_logistic(K, y.astype(float), 3)


def _logistic_gradient(M, y, C, ridge, alpha, off):
    """dJ/dalpha of kernel_logistic's objective, written out independently (multi-output flat form)."""
    n = len(y)
    Z = (M @ alpha).reshape(n, C) + off
    P = np.exp(Z - Z.max(1, keepdims=True))
    P /= P.sum(1, keepdims=True)
    lam = ridge * op_norm(M)
    return M @ ((P - np.eye(C)[y]) / n).reshape(-1) + lam * M @ alpha


@settings(max_examples=25, deadline=None)
@given(n=st.integers(3, 10), C=st.integers(2, 4), log_ridge=st.floats(-7, 0), log_cond=st.floats(0, 6),
       seed=st.integers(0, 2**16))
def test_logistic_newton_reaches_stationarity(n, C, log_ridge, log_cond, seed):
    """At ridge > 0 the objective is strictly convex in h and its minimizer is stationary: K (G + lambda alpha)
    = 0. Newton reaches it to float64 precision on kernels of condition number up to 1e6 and ridges down to
    1e-7 ||K||_op, with f0 as an offset."""
    rng = np.random.default_rng(seed)
    Q = np.linalg.qr(rng.standard_normal((n * C, n * C)))[0]
    M = 1e3 * (Q * np.logspace(0, -log_cond, n * C)) @ Q.T
    M = (M + M.T) / 2
    y = np.arange(n) % C
    f0 = rng.standard_normal((n, C))
    fit = kernel_logistic(M.reshape(n, C, n, C), y, ridge=10.0 ** log_ridge, f0=f0, f0_scaling=10.0)
    assert fit.converged and not fit.no_minimizer
    alpha = fit.model.alpha.reshape(-1)
    g = _logistic_gradient(M, y, C, 10.0 ** log_ridge, alpha, f0 / 10.0)
    assert np.abs(g).max() <= 1e-9 * max(1.0, op_norm(M) * np.abs(alpha).max())


def test_logistic_converges_where_lbfgs_hits_its_cap():
    """The case that motivated Newton: an ill-conditioned kernel (eigenvalues 1e7 .. 1e2, as TREC's) at
    ridge 1e-6 ||K||_op. L-BFGS on the same objective stops at 1000 iterations short of stationarity; Newton
    converges in tens of steps, and L-BFGS's objective is never below Newton's."""
    from scipy import optimize

    rng = np.random.default_rng(11)
    n, C = 24, 4
    Q = np.linalg.qr(rng.standard_normal((n * C, n * C)))[0]
    M = (Q * np.logspace(7, 2, n * C)) @ Q.T
    M = (M + M.T) / 2
    y = rng.integers(0, C, n)
    fit = kernel_logistic(M.reshape(n, C, n, C), y, ridge=1e-6)
    assert fit.converged and fit.n_iter < 60
    alpha = fit.model.alpha.reshape(-1)
    g = _logistic_gradient(M, y, C, 1e-6, alpha, 0.0)
    assert np.abs(g).max() <= 1e-9 * op_norm(M) * np.abs(alpha).max()
    lam = 1e-6 * op_norm(M)

    def J(a):
        Z = (M @ a).reshape(n, C)
        Z = Z - Z.max(1, keepdims=True)
        logp = Z - np.log(np.exp(Z).sum(1, keepdims=True))
        val = -logp[np.arange(n), y].mean() + 0.5 * lam * a @ M @ a
        return val, _logistic_gradient(M, y, C, 1e-6, a, 0.0)

    res = optimize.minimize(J, np.zeros(n * C), jac=True, method="L-BFGS-B",
                            options={"maxiter": 1000, "ftol": 1e-10, "gtol": 1e-10})
    assert res.nit == 1000 and not res.success
    assert res.fun >= fit.loss - 1e-12


def test_asymmetric_equals_symmetric_when_features_coincide():
    K = psd(6, seed=5)
    y = np.array([1, -1, 1, 1, -1, -1.0])
    gamma = 0.7
    sol = asymmetric_kernel_solve(K, y, gamma=gamma, c=1.0)
    np.testing.assert_allclose(sol.alpha, sol.beta, rtol=1e-9, atol=1e-12)
    Kt = np.random.default_rng(6).standard_normal((3, 6))
    krr = kernel_ridge(K, y, ridge=(1 / gamma) / op_norm(K))
    np.testing.assert_allclose(sol.predict(Kt), krr.predict(Kt)[:, 0], rtol=1e-9)
    # f_s = f_t when phi_s = phi_t, so any c gives the same predictor
    both = asymmetric_kernel_solve(K, y, gamma=gamma, c=0.3)
    np.testing.assert_allclose(both.predict(Kt, Kt.T), sol.predict(Kt), rtol=1e-9)


def test_asymmetric_solves_its_system():
    rng = np.random.default_rng(7)
    S, T = rng.standard_normal((5, 4)), rng.standard_normal((5, 4))
    K = S @ T.T
    y = np.sign(rng.standard_normal(5))
    sol = asymmetric_kernel_solve(K, y, gamma=2.0)
    H = y[:, None] * K * y[None, :]
    np.testing.assert_allclose(sol.alpha / 2.0 + H @ sol.beta, 1, atol=1e-10)
    np.testing.assert_allclose(H.T @ sol.alpha + sol.beta / 2.0, 1, atol=1e-10)
    with pytest.raises(ValueError, match="gamma"):
        asymmetric_kernel_solve(K, y, gamma=0)


def _simulate(K, Kt, Y, F0, F0t, eta, steps):
    n = K.shape[0]
    f, ft = F0.copy(), F0t.copy()
    for _ in range(steps):
        r = f - Y
        f, ft = f - eta / n * K @ r, ft - eta / n * Kt @ r
    return f, ft


def test_gd_discrete_matches_simulation_singular_kernel():
    K = psd(6, rank=3, seed=8)
    Kt = np.random.default_rng(9).standard_normal((2, 3)) @ np.random.default_rng(8).standard_normal((6, 3)).T
    rng = np.random.default_rng(10)
    Y, F0, F0t = rng.standard_normal((6, 2)), rng.standard_normal((6, 2)), rng.standard_normal((2, 2))
    eta = 0.5 * 6 / op_norm(K)
    f, ft = _simulate(K, Kt, Y, F0, F0t, eta, 37)
    np.testing.assert_allclose(gd_predictions(K, Y, F0, eta=eta, t=37, discrete=True), f, rtol=1e-9, atol=1e-10)
    np.testing.assert_allclose(gd_predictions(K, Y, F0, eta=eta, t=37, K_test=Kt, f0_test=F0t, discrete=True), ft,
                               rtol=1e-9, atol=1e-10)


def test_gd_flow_matches_expm():
    K = psd(5, seed=11)
    rng = np.random.default_rng(12)
    Y, F0 = rng.standard_normal((5, 1)), rng.standard_normal((5, 1))
    eta, t = 0.3, 2.5
    ref = Y + linalg.expm(-eta * t * K / 5) @ (F0 - Y)
    np.testing.assert_allclose(gd_predictions(K, Y, F0, eta=eta, t=t), ref, rtol=1e-9)
    multi = np.einsum("ij,ab->iajb", K, np.eye(2))
    Y2, F02 = np.hstack([Y, -Y]), np.hstack([F0, F0])
    np.testing.assert_allclose(gd_predictions(multi, Y2, F02, eta=eta, t=t)[:, 0], ref[:, 0], rtol=1e-9)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**16), n=st.integers(2, 7), steps=st.integers(1, 40))
def test_gd_small_steps_approach_flow(seed, n, steps):
    """Many small steps of size eta / m over time t converge to the flow; the discrete form is exact per step."""
    K = psd(n, seed=seed) + np.eye(n)
    rng = np.random.default_rng(seed + 1)
    Y, F0 = rng.standard_normal((n, 1)), rng.standard_normal((n, 1))
    eta = n / op_norm(K)
    flow = gd_predictions(K, Y, F0, eta=eta, t=steps)
    fine = gd_predictions(K, Y, F0, eta=eta / 64, t=64 * steps, discrete=True)
    assert np.abs(fine - flow).max() < 0.05 * (np.abs(Y - F0).max() + 1e-12)
    # long time: interpolation of the training targets (K positive definite)
    np.testing.assert_allclose(gd_predictions(K, Y, F0, eta=eta, t=1e6), Y, atol=1e-6)


def test_bad_arguments():
    K = np.eye(3)
    with pytest.raises(ValueError, match="-1"):
        kernel_ridge(K, np.ones(3), ridge=-1)
    with pytest.raises(ValueError, match="Y"):
        kernel_ridge(K, np.ones(4))
    with pytest.raises(ValueError, match="integer"):
        gd_predictions(K, np.ones(3), np.zeros(3), eta=1.0, t=1.5, discrete=True)
