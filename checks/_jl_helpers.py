"""Projected Grams for the jl_subspace check, drawn exactly in distribution without forming a projection.

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
For k >= r it is drawn by Bartlett's decomposition in O(r^2) whatever k is;
this is exact in distribution for Gaussian projections ([KV] Thm D.2 and
Lemma D.3's Gaussian case).
"""
from __future__ import annotations

import math

import numpy as np


def gram_root(K: np.ndarray, rtol: float = 1e-12) -> np.ndarray:
    """R [r, N] with R^T R = K for a PSD Gram K [N, N] (eigen-directions below rtol * max dropped)."""
    s, V = np.linalg.eigh((K + K.T) / 2.0)
    keep = s > rtol * max(s.max(), 0.0)
    return np.sqrt(s[keep])[:, None] * V[:, keep].T


def wishart_over_k(r: int, k: int, draws: int, rng: np.random.Generator) -> np.ndarray:
    """[draws, r, r] samples of Z^T Z with Z [k, r] i.i.d. N(0, 1/k).

    k >= r: Bartlett, Z^T Z / (1/k) = L L^T with L lower-triangular, L_ii ~ sqrt(chi2(k - i)),
    i = 0..r-1, L_ij ~ N(0, 1) below the diagonal; k < r: Z drawn directly.
    """
    if k >= r:
        L = np.tril(rng.standard_normal((draws, r, r)), -1)
        diag = np.sqrt(rng.chisquare(k - np.arange(r), size=(draws, r)))
        L[:, np.arange(r), np.arange(r)] = diag
        return L @ np.swapaxes(L, 1, 2) / k
    Z = rng.standard_normal((draws, k, r)) / math.sqrt(k)
    return np.swapaxes(Z, 1, 2) @ Z


def projected_grams(R: np.ndarray, k: int, draws: int, rng: np.random.Generator) -> np.ndarray:
    """[draws, N, N] Grams of the vectors with Gram R^T R after a Gaussian N(0, 1/k) projection to R^k."""
    W = wishart_over_k(R.shape[0], k, draws, rng)
    return np.einsum("ri,drs,sj->dij", R, W, R, optimize=True)
