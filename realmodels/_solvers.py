"""Kernel predictors for realmodels.solve, built on ntkcheck.theory.solvers.

Kernels come as [N1, C, N2, C] arrays (solved in flattened (N1 C) x (N2 C)
form, [KV] App. A.3 "Solving Multi-Class Tasks"), targets Y [n, C] one-hot,
f0 [n, C] the pretrained logits. Hyperparameters ``hp``: reg r (relative ridge
lambda = r ||K||_op), f0_scale s (inf: no f0), gamma (asymmetric solver).

- sgd / signgd, loss "logistic" ([KV] App. A.3: the symmetric kernels minimize a
  regularized logistic loss): theory.solvers.kernel_logistic, logits h(x) = K(x, X) alpha + f0(x)/s;
  loss "ridge": theory.solvers.kernel_ridge, alpha = (K + lambda I)^+ vec(Y - f0/s);
- asym_signgd: theory.solvers.asymmetric_kernel_solve (He et al. 2022) on the flattened kernel
  with labels z = 2 Y - 1 in {-1, +1} per output, predictor f_s(x) = K(x, X)(beta * z) + f0(x)/s (c = 1).
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np

Predictor = Callable[[np.ndarray, np.ndarray], np.ndarray]
LOSSES = ("logistic", "ridge")


def fit(kind: str, K: np.ndarray, Y: np.ndarray, f0: np.ndarray, hp: dict, loss: str = "logistic") -> Predictor:
    """A predictor (K_xt [m, C, n, C], f0_x [m, C]) -> logits [m, C] (see the module docstring)."""
    from ntkcheck.theory import solvers

    n, C = Y.shape
    s = float(hp.get("f0_scale", math.inf))
    r = float(hp.get("reg", 0.0))
    if kind in ("sgd", "signgd"):
        if loss == "ridge":
            model = solvers.kernel_ridge(K, Y, ridge=r, f0=f0, f0_scaling=s)
        elif loss == "logistic":
            model = solvers.kernel_logistic(K, Y.argmax(1), C, ridge=r, f0=f0, f0_scaling=s).model
        else:
            raise ValueError(f"unknown loss {loss!r}; expected one of {LOSSES}")
        return lambda K_xt, f0_x: model.predict(K_xt, f0_x)
    if kind == "asym_signgd":
        z = (2.0 * Y - 1.0).reshape(-1)
        sol = solvers.asymmetric_kernel_solve(K.reshape(n * C, n * C), z, gamma=float(hp.get("gamma", 1.0)),
                                              c=1.0, ridge=r, f0=f0.reshape(-1), f0_scaling=s)

        def predict(K_xt: np.ndarray, f0_x: np.ndarray) -> np.ndarray:
            m = K_xt.shape[0]
            return sol.predict(K_xt.reshape(m * C, n * C), f0_test=f0_x.reshape(-1)).reshape(m, C)

        return predict
    raise ValueError(f"unknown kernel kind {kind!r}")
