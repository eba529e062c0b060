"""Projected Grams and tail statistics for the jl_subspace check.

Dense layer z = x w^T (then h = mult * z): the per-example gradient is
dL/dw = dz (x) x, so the layer's eNTK block is K_l = (dZ dZ^T) o (X X^T) with
dZ [N, fan_out] the gradients of f with respect to z and X [N, fan_in] the
layer's inputs ([KV] Lemma D.4's dH, X; the kernel engine's ``linear_factors``).
With LoRA w + B A, A [k, fan_in], B [fan_out, k], at B = 0: dB = dz (x) (A x),
dA = B^T dz (x) x = 0, so K_LoRA,l = (dZ dZ^T) o (X A^T A X^T).

Projected Grams without forming the projection: for vectors with Gram
K = R^T R (R [r, N]) and P [k, d] with i.i.d. N(0, 1/k) entries, the projected
Gram is R^T (Z^T Z) R where Z = P Q [k, r] (Q an orthonormal basis of the
vectors' span) again has i.i.d. N(0, 1/k) entries, so Z^T Z ~ Wishart_r(I, k) / k.
For k >= r it is drawn by Bartlett's decomposition, Z^T Z = L L^T / k, in O(r^2 N)
per draw whatever k is, and the Gram formed as (L^T R)^T (L^T R) / k; this is
exact in distribution for Gaussian projections ([KV] Thm D.2 and Lemma D.3's
Gaussian case).

Tail statistics: exceedance counts over independent draws are binomial, so
their intervals are Clopper-Pearson's and the intervals of statistics built
from several counts come from a parametric bootstrap of the counts.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np
from scipy import stats


def gram_root(K: np.ndarray, rtol: float = 1e-12) -> np.ndarray:
    """R [r, N] with R^T R = K for a PSD Gram K [N, N] (eigen-directions below rtol * max dropped)."""
    s, V = np.linalg.eigh((K + K.T) / 2.0)
    keep = s > rtol * max(s.max(), 0.0)
    return np.sqrt(s[keep])[:, None] * V[:, keep].T


def projection_factor(r: int, k: int, draws: int, rng: np.random.Generator) -> np.ndarray:
    """[draws, m, r] samples F with F^T F ~ Z^T Z, Z [k, r] i.i.d. N(0, 1/k).

    k >= r (m = r): Bartlett, F = L^T / sqrt(k) with L lower-triangular, L_ii ~ sqrt(chi2(k - i)),
    i = 0..r-1, L_ij ~ N(0, 1) below the diagonal; k < r (m = k): F = Z drawn directly.
    """
    if k >= r:
        L = np.zeros((draws, r, r))
        rows, cols = np.tril_indices(r, -1)
        L[:, rows, cols] = rng.standard_normal((draws, len(rows)))
        L[:, np.arange(r), np.arange(r)] = np.sqrt(rng.chisquare(k - np.arange(r), size=(draws, r)))
        return np.swapaxes(L, 1, 2) / math.sqrt(k)
    return rng.standard_normal((draws, k, r)) / math.sqrt(k)


def wishart_over_k(r: int, k: int, draws: int, rng: np.random.Generator) -> np.ndarray:
    """[draws, r, r] samples of Z^T Z with Z [k, r] i.i.d. N(0, 1/k) (``projection_factor``'s F^T F)."""
    F = projection_factor(r, k, draws, rng)
    return np.swapaxes(F, 1, 2) @ F


def projected_grams(R: np.ndarray, k: int, draws: int, rng: np.random.Generator) -> np.ndarray:
    """[draws, N, N] Grams of the vectors with Gram R^T R after a Gaussian N(0, 1/k) projection to R^k:
    (F R)^T (F R) with F from ``projection_factor``."""
    M = projection_factor(R.shape[0], k, draws, rng) @ R
    return np.swapaxes(M, 1, 2) @ M


def clopper_pearson(count: float, n: float, level: float = 0.95) -> tuple[float, float]:
    """The exact (Clopper-Pearson) interval of a binomial proportion count / n at ``level``."""
    a = (1.0 - level) / 2.0
    lo = 0.0 if count <= 0 else float(stats.beta.ppf(a, count, n - count + 1))
    hi = 1.0 if count >= n else float(stats.beta.ppf(1.0 - a, count + 1, n - count))
    return lo, hi


def tail_decay_rate(ks: Sequence[float], counts: Sequence[float], n: Sequence[float]) -> float:
    """rho of the weighted least-squares fit log(p_hat sqrt(k)) = a - rho k, p_hat = counts / n.

    The sqrt(k) is Bahadur-Rao's prefactor of a chi-square tail (theory.jl.bahadur_rao_tail),
    so rho estimates the tail's exponential rate; weights n p / (1 - p) are the inverse variances
    of log p_hat. A zero count is taken as 1/2 (the fit needs a logarithm).
    """
    k = np.asarray(ks, dtype=float)
    c = np.maximum(np.asarray(counts, dtype=float), 0.5)
    p = c / np.asarray(n, dtype=float)
    y = np.log(p) + 0.5 * np.log(k)
    w = np.sqrt(c / np.maximum(1.0 - p, 1e-12))
    A = np.stack([k, np.ones_like(k)], axis=1)
    (slope, _), *_ = np.linalg.lstsq(A * w[:, None], y * w, rcond=None)
    return float(-slope)


def binomial_bootstrap(stat: Callable[[np.ndarray], float], counts: np.ndarray, n: np.ndarray, *,
                       n_boot: int = 1000, level: float = 0.95, seed: int = 0) -> tuple[float, tuple[float, float]]:
    """(stat(counts), CI): the CI's quantiles over stat of counts redrawn ~ Binomial(n, counts / n).

    counts, n: arrays of one shape (independent binomial counts); stat maps such an array to a number.
    """
    counts = np.asarray(counts, dtype=float)
    n = np.asarray(n, dtype=float)
    value = float(stat(counts))
    rng = np.random.default_rng(seed)
    reps = [stat(rng.binomial(n.astype(np.int64), counts / n).astype(float)) for _ in range(n_boot)]
    a = (1.0 - level) / 2.0
    return value, (float(np.quantile(reps, a)), float(np.quantile(reps, 1.0 - a)))
