"""Early-stopped kernel gradient descent: stopping rule, spectral filters, rates.

[ES] Sec. 3.5 (eq. 10-11), Sec. 6.2 (eq. 27), Sec. 6.3 (eq. 29-30), App. A.3
(eq. 31-32), App. B.1; Raskutti, Wainwright & Yu (2014) ("RWY").

Conventions (RWY's). X = (x_1..x_N), K the raw Gram matrix K(x_i, x_j),
K_N = K / N the normalized one with eigenpairs (lam_i, u_i), lam_1 >= ... >= 0.
Kernel gradient descent on L(f) = 1/(2N) sum_i (f(x_i) - y_i)^2 from f_0 = 0
with constant step alpha (alpha <= 1 / lam_1) moves the fitted values as

    f_{t+1}(X) = f_t(X) - alpha K_N (f_t(X) - y),

so after t steps, eta_t = alpha t being the running sum of step sizes,

    f_t(X) = sum_i g_t(lam_i) u_i u_i^T y,   g_t(lam) = 1 - (1 - alpha lam)^t     (GD filter)
    f_t(.) = K(., X) c_t / N,                c_t = sum_i (g_t(lam_i) / lam_i) u_i u_i^T y.

Kernel ridge regression, argmin_f 1/(2N) sum (y_i - f(x_i))^2 + lam/2 ||f||_H^2
([ES] eq. 27 in function space), is the same formula with the ridge filter
g(lam) = lam / (lam + lambda). Early stopping at t corresponds to ridge with
lambda = 1 / eta_t ([ES] Sec. 6.2: "the running sum eps T acts as lambda"):
with s = eta_t lam,

    s / (1 + s) <= 1 - exp(-s) <= g_t(lam) <= min(1, s) <= 2 s / (1 + s),

so the GD filter lies between the ridge filter and twice it (the known constant 2).

Local empirical Rademacher complexity ([ES] eq. 10, RWY eq. 5):
    R(rho) = [ 1/N sum_i min(lam_i, rho^2) ]^(1/2).
Critical empirical radius ([ES] eq. 11, RWY eq. 6): the smallest rho > 0 with
    R(rho) <= a rho^2,   a = scale / (2 e sigma),
where RWY take ||f*||_H <= 1 (scale 1); for ||f*||_H = R rescaling the
problem gives scale = R, while [ES] eq. 11 writes C_H^2 (equal at C_H = 1).
Data-dependent stopping time (RWY eq. 7):
    T = min{ t : R(1/sqrt(eta_t)) > 1 / (2 e sigma eta_t) } - 1   (with the same scale),
i.e. the last t with eta_t <= 1 / rho^2; RWY Thm 1: ||f_T - f*||_N^2 <= 12 rho^2 w.h.p.
Rate ([ES] eq. 29-30): eigen-decay lam_k ~ k^-2beta gives rho^2 ~ N^(-2beta/(2beta+1)),
with the constant in closed form (power_law_critical_radius), so the rule's time
eta_T ~ 1/rho^2 grows like N^(2beta/(2beta+1)) (rule_time_exponent).
Beta fit ([ES] eq. 31-32): least squares of log(lam_k / lam_1) on log k, slope -2 beta.
Risk of a spectral estimator f = A (weights * (z + sigma xi)), xi ~ N(0, I): expected_sq_error.

Pure numpy; shapes are stated per function.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

E = math.e


# ---------------------------------------------------------------- spectra
def normalized_gram_eigh(K: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigenpairs of K / N for a symmetric PSD Gram K [N, N]: (lam [N] descending, >= 0; U [N, N] columns)."""
    K = np.asarray(K, dtype=np.float64)
    n = K.shape[0]
    lam, U = np.linalg.eigh((K + K.T) / (2.0 * n))
    order = np.argsort(lam)[::-1]
    return np.clip(lam[order], 0.0, None), U[:, order]


# ------------------------------------------------------ Rademacher, radius
def local_rademacher(eigs: np.ndarray, rho: float | np.ndarray) -> np.ndarray:
    """[ES] eq. 10: R(rho) = [1/N sum_i min(lam_i, rho^2)]^(1/2). eigs: [N] of K/N; rho: scalar or [R]."""
    lam = np.asarray(eigs, dtype=np.float64).reshape(1, -1)
    r = np.atleast_1d(np.asarray(rho, dtype=np.float64)).reshape(-1, 1)
    out = np.sqrt(np.minimum(lam, r**2).sum(axis=1) / lam.shape[1])
    return out.reshape(np.shape(rho))


def critical_radius(eigs: np.ndarray, sigma: float, scale: float = 1.0) -> float:
    """[ES] eq. 11: the smallest rho > 0 with R(rho) <= a rho^2, a = scale / (2 e sigma).

    R(rho)^2 / rho^4 is strictly decreasing, so the solution is the unique root
    of R(rho)^2 = a^2 rho^4. With u = rho^2 and m eigenvalues above u this is
    the quadratic a^2 u^2 - (m/N) u - S_m/N = 0 (S_m = sum of the others),
    solved exactly on the interval between consecutive eigenvalues where its
    root falls. eigs: [N] eigenvalues of K/N (any order).
    """
    if sigma <= 0 or scale <= 0:
        raise ValueError(f"sigma and scale must be positive, got sigma={sigma}, scale={scale}")
    lam = np.sort(np.clip(np.asarray(eigs, dtype=np.float64), 0.0, None))[::-1]
    n = lam.size
    if n == 0 or lam[0] <= 0:
        raise ValueError("critical_radius needs at least one positive eigenvalue")
    a2 = (scale / (2.0 * E * sigma)) ** 2
    tail = np.concatenate([np.cumsum(lam[::-1])[::-1], [0.0]])  # tail[m] = sum_{i >= m} lam_i (0-based)
    upper = np.concatenate([[np.inf], lam])                     # u must lie in [lam_{m}, lam_{m-1}] (0-based m)
    lower = np.concatenate([lam, [0.0]])
    for m in range(n + 1):
        b, c = m / n, tail[m] / n
        u = (b + math.sqrt(b * b + 4.0 * a2 * c)) / (2.0 * a2)
        if lower[m] <= u <= upper[m]:
            return math.sqrt(u)
    raise RuntimeError("critical_radius: no root found (eigenvalues not finite?)")


def stopping_time(eigs: np.ndarray, sigma: float, step: float, scale: float = 1.0) -> int:
    """RWY eq. 7: T = min{t >= 1 : R(1/sqrt(eta_t)) > scale / (2 e sigma eta_t)} - 1, eta_t = step * t.

    The condition holds exactly for eta_t > 1 / rho^2 (rho = critical_radius), so
    T = floor(1 / (step rho^2)); the literal rule is then confirmed at T and T + 1
    (and T adjusted by one where float rounding puts it on the other side).
    """
    if step <= 0:
        raise ValueError(f"step must be positive, got {step}")
    a = scale / (2.0 * E * sigma)
    rho = critical_radius(eigs, sigma, scale)

    def violated(t: int) -> bool:
        eta = step * t
        return bool(local_rademacher(eigs, 1.0 / math.sqrt(eta)) > a / eta)

    t = max(int(math.floor(1.0 / (step * rho**2))), 0)
    while t >= 1 and violated(t):
        t -= 1
    while not violated(t + 1):
        t += 1
    return t


def power_law_critical_radius(n: int, beta: float, sigma: float, scale: float = 1.0, c: float = 1.0,
                              multiplicity: int = 1) -> float:
    """rho_N^2 of [ES] eq. 11 for eigenvalues lam = c k^-2beta (k >= 1, each ``multiplicity`` times), N -> inf.

    With k* = (c / rho^2)^(1/(2beta)) levels above rho^2 and the tail sum replaced by its integral,

        R(rho)^2 = (m/N) [rho^2 k* + sum_{k > k*} c k^-2beta] = (m/N) c^(1/(2beta)) rho^(2 - 1/beta) 2beta/(2beta-1),

    and R(rho) = a rho^2 (a = scale / (2 e sigma), eq. 11) solves to

        rho_N^2 = [2 beta m c^(1/(2beta)) / ((2beta - 1) N a^2)]^(2beta/(2beta+1)).

    The exponent is eq. 30's; the constant is what pins the rule's 1/(2 e sigma): the stopping time
    of RWY eq. 7 is eta_T = 1/rho_N^2 up to one step. For a one-sided spectrum (k >= 1) the sum
    differs from its integral by a relative O(1/k*); for a spectrum over k in Z (multiplicity 2 for
    +-k and c itself at k = 0, the periodic Sobolev kernel's) Poisson summation leaves only the kinks
    at +-k*: within 5% once k* > 3, 20% at any k* >= 1. Needs beta > 1/2 ([ES] eq. 29).
    """
    if beta <= 0.5:
        raise ValueError(f"power_law_critical_radius needs beta > 1/2 ([ES] eq. 29), got {beta}")
    if sigma <= 0 or scale <= 0 or c <= 0 or n < 1 or multiplicity < 1:
        raise ValueError(f"need n, multiplicity >= 1 and sigma, scale, c > 0; got n={n}, m={multiplicity}, "
                         f"sigma={sigma}, scale={scale}, c={c}")
    a2 = (scale / (2.0 * math.e * sigma)) ** 2
    base = 2.0 * beta * multiplicity * c ** (1.0 / (2.0 * beta)) / ((2.0 * beta - 1.0) * n * a2)
    return float(base ** (2.0 * beta / (2.0 * beta + 1.0)))


def rwy_error_bound(rho: float) -> float:
    """RWY Thm 1: ||f_T - f*||_N^2 <= 12 rho^2 at the stopping time (with high probability)."""
    return 12.0 * rho**2


# ------------------------------------------------------------------ filters
def gd_filter(eigs: np.ndarray, step: float, t: float) -> np.ndarray:
    """g_t(lam) = 1 - (1 - step lam)^t, the GD filter after t steps. eigs: [N] -> [N]. Needs step lam <= 1."""
    lam = np.asarray(eigs, dtype=np.float64)
    with np.errstate(divide="ignore"):  # step lam = 1 gives log1p(-1) = -inf and the exact filter 1
        return -np.expm1(t * np.log1p(-step * lam))


def gradient_flow_filter(eigs: np.ndarray, eta_t: float) -> np.ndarray:
    """1 - exp(-eta_t lam): the GD filter's limit as step -> 0 at fixed eta_t = step t."""
    return -np.expm1(-eta_t * np.asarray(eigs, dtype=np.float64))


def ridge_filter(eigs: np.ndarray, lam_ridge: float) -> np.ndarray:
    """lam / (lam + lambda): kernel ridge regression's filter. eigs: [N] -> [N]."""
    lam = np.asarray(eigs, dtype=np.float64)
    return lam / (lam + lam_ridge)


def ridge_lambda_for_time(step: float, t: float) -> float:
    """[ES] Sec. 6.2: lambda = 1 / eta_t = 1 / (step t), the ridge penalty matching t GD steps."""
    return 1.0 / (step * t)


def gd_weights(eigs: np.ndarray, step: float, t: float) -> np.ndarray:
    """g_t(lam) / lam, the coefficient weights of GD (finite at lam = 0, where it equals step t). [N] -> [N]."""
    lam = np.asarray(eigs, dtype=np.float64)
    out = np.empty_like(lam)
    small = lam * step * max(t, 1.0) < 1e-12
    out[small] = step * t
    out[~small] = gd_filter(lam[~small], step, t) / lam[~small]
    return out


def ridge_weights(eigs: np.ndarray, lam_ridge: float) -> np.ndarray:
    """g(lam) / lam = 1 / (lam + lambda) for kernel ridge regression. [N] -> [N]."""
    return 1.0 / (np.asarray(eigs, dtype=np.float64) + lam_ridge)


def interpolation_weights(eigs: np.ndarray, rcond: float = 1e-13) -> np.ndarray:
    """1 / lam (GD run to convergence: the minimum-norm interpolant); eigenvalues below rcond lam_1 get 0."""
    lam = np.asarray(eigs, dtype=np.float64)
    keep = lam > rcond * lam.max()
    out = np.zeros_like(lam)
    out[keep] = 1.0 / lam[keep]
    return out


def expected_sq_error(A: np.ndarray, z: np.ndarray, f: np.ndarray, weights: np.ndarray, sigma: float) -> float:
    """E_xi mean_m (A (weights * (z + sigma xi)) - f)_m^2 for xi ~ N(0, I_N), exactly:

        = mean_m (A (weights * z) - f)_m^2  +  sigma^2 / M sum_j w_j^2 sum_m A_mj^2     (bias^2 + variance).

    For a spectral estimator, A = K(X_test, X) U / N, z = U^T f*(X) and f = f*(X_test): U^T of white
    noise is white, so this is the test error averaged over the label noise y = f*(X) + sigma xi,
    given X. A: [M, N], z: [N], f: [M], weights: [N].
    """
    A = np.asarray(A, dtype=np.float64)
    w = np.asarray(weights, dtype=np.float64)
    bias = A @ (w * np.asarray(z, dtype=np.float64)) - np.asarray(f, dtype=np.float64)
    return float(np.mean(bias**2) + sigma**2 * float((A**2).sum(axis=0) @ w**2) / A.shape[0])


def spectral_coefficients(U: np.ndarray, y: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """c = U diag(weights) U^T y, so that f(.) = K(., X) c / N. U: [N, N], y: [N], weights: [N] -> [N]."""
    return U @ (weights * (U.T @ np.asarray(y, dtype=np.float64)))


def predict(K_test_train: np.ndarray, coef: np.ndarray) -> np.ndarray:
    """f(x) = K(x, X) c / N. K_test_train: [M, N], coef: [N] -> [M]."""
    return np.asarray(K_test_train, dtype=np.float64) @ coef / K_test_train.shape[1]


# ---------------------------------------------------------------- rates, beta
def rate_exponent(beta: float) -> float:
    """[ES] eq. 30: the squared-error exponent -2 beta / (2 beta + 1) for eigen-decay k^-2beta."""
    return -2.0 * beta / (2.0 * beta + 1.0)


def oracle_rate_exponent(beta: float, delta: float) -> float:
    """Squared-error exponent at the best stopping time for a target with coefficients c_k^2 = lam_k k^-(1+delta).

    Bias^2 after keeping the top K modes is sum_{k>K} k^-(2beta+1+delta) ~ K^-(2beta+delta),
    variance ~ sigma^2 K / N; balancing gives N^-(2beta+delta)/(2beta+1+delta), which tends
    to eq. 30's exponent as delta -> 0 (the edge of the RKHS) and is steeper for delta > 0.
    """
    return -(2.0 * beta + delta) / (2.0 * beta + 1.0 + delta)


def radius_exponent(beta: float) -> float:
    """rho_N^2 ~ N^(-2beta/(2beta+1)): the exponent of the squared critical radius (RWY Cor. 3)."""
    return rate_exponent(beta)


def rule_time_exponent(beta: float) -> float:
    """eta_T ~ 1/rho_N^2 ~ N^(2beta/(2beta+1)): the exponent of the rule's time (RWY eq. 7, [ES] eq. 10-11)."""
    return -radius_exponent(beta)


def oracle_time_exponent(beta: float, delta: float) -> float:
    """eta_oracle ~ N^(2beta/(2beta+1+delta)) for coefficients c_k^2 = lam_k k^-(1+delta) (oracle_rate_exponent's
    setting): the oracle keeps K ~ N^(1/(2beta+1+delta)) modes, and GD fits mode k once eta lam_k ~ 1,
    so eta_oracle ~ K^(2beta). Below rule_time_exponent for delta > 0: the rule, calibrated to the
    worst case of the ball, does not adapt to a smoother target."""
    return 2.0 * beta / (2.0 * beta + 1.0 + delta)


def stopping_cost(r: float | np.ndarray, beta: float, delta: float) -> float | np.ndarray:
    """err(r eta_o) / err(eta_o): the cost of stopping at r times the oracle's time, in the bias-variance model

        err(eta) = B (eta/eta_o)^-p + V (eta/eta_o)^q,   p = (2beta+delta)/(2beta),  q = 1/(2beta),

    (bias of coefficients c_k^2 = lam_k k^-(1+delta) left after modes k <= eta^(1/(2beta)) are fit;
    variance ~ the number of modes fit / N), optimal at eta_o where p B = q V, so

        F(r) = (q r^-p + p r^q) / (p + q)      (F(1) = 1 is the minimum; F grows as r leaves 1).
    """
    p, q = (2.0 * beta + delta) / (2.0 * beta), 1.0 / (2.0 * beta)
    r = np.asarray(r, dtype=np.float64)
    out = (q * r ** (-p) + p * r**q) / (p + q)
    return float(out) if out.ndim == 0 else out


@dataclass(frozen=True)
class BetaFit:
    beta: float
    intercept: float
    k_min: int
    k_max: int


def fit_beta(eigs: np.ndarray, k_min: int = 1, k_max: int | None = None, intercept: bool = True) -> BetaFit:
    """[ES] eq. 31-32: fit log(lam_k / lam_1) = -2 beta log k (+ c) by least squares over k_min <= k <= k_max.

    eigs: [N] (sorted descending here; non-positive values dropped). intercept=False is
    eq. 32 literally (a line through the origin at k = 1); intercept=True lets the
    top eigenvalue's prefactor differ from the tail's, which a fit over a window needs.
    """
    lam = np.sort(np.asarray(eigs, dtype=np.float64))[::-1]
    lam = lam[lam > 0]
    k_max = lam.size if k_max is None else min(k_max, lam.size)
    if k_max - k_min < 1:
        raise ValueError(f"fit_beta needs at least two eigenvalues in [{k_min}, {k_max}]")
    k = np.arange(k_min, k_max + 1, dtype=np.float64)
    ly = np.log(lam[k_min - 1:k_max] / lam[0])
    lx = np.log(k)
    if intercept:
        A = np.stack([lx, np.ones_like(lx)], axis=1)
        (s, c), *_ = np.linalg.lstsq(A, ly, rcond=None)
    else:
        s, c = float(lx @ ly / (lx @ lx)), 0.0
    return BetaFit(beta=float(-s / 2.0), intercept=float(c), k_min=int(k_min), k_max=int(k_max))


# --------------------------------------------------- a kernel with known decay
def periodic_sobolev_kernel(x1: np.ndarray, x2: np.ndarray, beta: int) -> np.ndarray:
    """K(x, x') = 1 + 2 sum_{k>=1} k^-2beta cos(2 pi k (x - x')) on [0, 1), integer beta >= 1, in closed form.

    With sum_k cos(2 pi k u) / k^(2m) = (-1)^(m+1) (2 pi)^(2m) B_2m(u) / (2 (2m)!) (B the
    Bernoulli polynomial, u = frac(x - x')), K = 1 + (-1)^(beta+1) (2 pi)^(2beta) B_2beta(u) / (2beta)!.
    Under the uniform law its eigenfunctions are 1, sqrt2 cos(2 pi k x), sqrt2 sin(2 pi k x)
    with eigenvalues 1, k^-2beta, k^-2beta. x1: [M], x2: [N] -> [M, N].
    """
    if int(beta) != beta or beta < 1:
        raise ValueError(f"periodic_sobolev_kernel needs an integer beta >= 1, got {beta}")
    m = int(beta)
    u = np.mod(np.subtract.outer(np.asarray(x1, np.float64), np.asarray(x2, np.float64)), 1.0)
    poly = _bernoulli_poly(2 * m, u)
    return 1.0 + (-1) ** (m + 1) * (2 * math.pi) ** (2 * m) / math.factorial(2 * m) * poly


def _bernoulli_poly(n: int, u: np.ndarray) -> np.ndarray:
    """B_n(u) = sum_j C(n, j) B_j u^(n-j) with Bernoulli numbers B_1 = -1/2."""
    from scipy.special import bernoulli, comb

    b = bernoulli(n)  # B_0..B_n with B_1 = -1/2
    out = np.zeros_like(u)
    for j in range(n + 1):
        out = out + comb(n, j, exact=True) * b[j] * u ** (n - j)
    return out
