"""Kernel predictors for realmodels.solve: fit on a flattened training kernel, predict logits.

All matrices are flattened over outputs ([N C, N C], row i C + a), targets Y
[n, C] one-hot, f0 [n, C] the pretrained logits. Hyperparameters ``hp``:
reg r (relative ridge lambda = r ||K||_op), f0_scale s (inf: no f0), gamma.

- symmetric kinds (kernel ridge regression with an f0 offset, [KV] App. A.3):
      alpha = (K + lambda I)^+ vec(Y - f0/s),   h(x) = f0(x)/s + K(x, X) alpha
  (pseudo-inverse when lambda = 0, so interpolation of a singular K is well defined);
- asym_signgd (He et al. 2022, [KV] App. A.3), with labels z = 2 Y - 1 in {-1, +1} per output:
      H = diag(z) K diag(z),  [[I/gamma + lambda I, H], [H^T, I/gamma + lambda I]] [a; b] = [1; 1],
      h(x) = f0(x)/s + K(x, X) (b * z)        (only f_s, as [KV] prescribes for SignGD).
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np

Predictor = Callable[[np.ndarray, np.ndarray], np.ndarray]


def _op_norm(K: np.ndarray) -> float:
    return float(np.linalg.norm(K, 2)) if K.size else 0.0


def fit(kind: str, K: np.ndarray, Y: np.ndarray, f0: np.ndarray, hp: dict) -> Predictor:
    """A predictor (K_xt [m C, n C], f0_x [m, C]) -> logits [m, C] (see the module docstring)."""
    n, C = Y.shape
    s = float(hp.get("f0_scale", math.inf))
    inv_s = 0.0 if math.isinf(s) else 1.0 / s
    lam = float(hp.get("reg", 0.0)) * _op_norm(K)
    if kind in ("sgd", "signgd"):
        r = (Y - inv_s * f0).reshape(-1)
        A = 0.5 * (K + K.T) + lam * np.eye(n * C)
        alpha = np.linalg.lstsq(A, r, rcond=1e-12)[0] if lam == 0 else np.linalg.solve(A, r)
    elif kind == "asym_signgd":
        gamma = float(hp.get("gamma", 1.0))
        z = (2.0 * Y - 1.0).reshape(-1)
        H = z[:, None] * K * z[None, :]
        m = n * C
        D = (1.0 / gamma + lam) * np.eye(m)
        M = np.block([[D, H], [H.T, D]])
        sol = np.linalg.solve(M, np.ones(2 * m))
        alpha = sol[m:] * z
    else:
        raise ValueError(f"unknown kernel kind {kind!r}")

    def predict(K_xt: np.ndarray, f0_x: np.ndarray) -> np.ndarray:
        return inv_s * f0_x + (K_xt @ alpha).reshape(-1, C)

    return predict
