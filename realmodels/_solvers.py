"""Kernel predictors for realmodels.solve, built on ntkcheck.theory.solvers.

Kernels come as [N1, C, N2, C] arrays (solved in flattened (N1 C) x (N2 C)
form, [KV] App. A.3 "Solving Multi-Class Tasks"), targets Y [n, C] one-hot,
f0 [n, C] the pretrained logits. Hyperparameters ``hp``: reg r (relative ridge
lambda = r ||K||_op), f0_scale s (inf: no f0), gamma (asymmetric solver).

- sgd / signgd, loss "logistic" ([KV] App. A.3: the symmetric kernels minimize a
  regularized logistic loss): theory.solvers.kernel_logistic, logits h(x) = K(x, X) alpha + f0(x)/s, solved to
  its minimizer by Newton's method at reg > 0 (where L-BFGS ran out of iterations on ill-conditioned kernels);
  loss "ridge": theory.solvers.kernel_ridge, alpha = (K + lambda I)^+ vec(Y - f0/s);
- asym_signgd: theory.solvers.asymmetric_kernel_solve (He et al. 2022) on the flattened kernel
  with labels z = 2 Y - 1 in {-1, +1} per output, predictor f_s(x) = K(x, X)(beta * z) + f0(x)/s (c = 1).

The logistic loss at reg 0 has no minimizer when the training examples are separable in the kernel's features
(the loss falls towards 0 along a direction): L-BFGS then stops where its tolerance is met, and that point moves
with the kernel's rounding (a relative 1e-6 perturbation of TREC's kernel changed 7-15% of a seed's test
predictions, docs/measurements.md). Fit.no_minimizer carries theory.solvers.KernelLogistic's: reg 0 and a mean
training cross-entropy below solvers.NO_MINIMIZER_LOSS.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

Predictor = Callable[[np.ndarray, np.ndarray], np.ndarray]
LOSSES = ("logistic", "ridge")


@dataclass(frozen=True)
class Fit:
    """A fitted predictor, called as (K_xt [m, C, n, C], f0_x [m, C]) -> logits [m, C], and whether its loss had
    no minimizer (module docstring): then the fit depends on where the optimizer stopped, not on the problem."""

    predict: Predictor
    no_minimizer: bool = False

    def __call__(self, K_xt: np.ndarray, f0_x: np.ndarray) -> np.ndarray:
        return self.predict(K_xt, f0_x)


def fit(kind: str, K: np.ndarray, Y: np.ndarray, f0: np.ndarray, hp: dict, loss: str = "logistic") -> Fit:
    """The Fit of ``kind`` on the training block (see the module docstring)."""
    from ntkcheck.theory import solvers

    n, C = Y.shape
    s = float(hp.get("f0_scale", math.inf))
    r = float(hp.get("reg", 0.0))
    if kind in ("sgd", "signgd"):
        unbounded = False   # least squares has its minimum-norm solution at reg 0
        if loss == "ridge":
            model = solvers.kernel_ridge(K, Y, ridge=r, f0=f0, f0_scaling=s)
        elif loss == "logistic":
            solved = solvers.kernel_logistic(K, Y.argmax(1), C, ridge=r, f0=f0, f0_scaling=s)
            model, unbounded = solved.model, solved.no_minimizer
        else:
            raise ValueError(f"unknown loss {loss!r}; expected one of {LOSSES}")
        return Fit(lambda K_xt, f0_x: model.predict(K_xt, f0_x), no_minimizer=bool(unbounded))
    if kind == "asym_signgd":
        z = (2.0 * Y - 1.0).reshape(-1)
        sol = solvers.asymmetric_kernel_solve(K.reshape(n * C, n * C), z, gamma=float(hp.get("gamma", 1.0)),
                                              c=1.0, ridge=r, f0=f0.reshape(-1), f0_scaling=s)

        def predict(K_xt: np.ndarray, f0_x: np.ndarray) -> np.ndarray:
            m = K_xt.shape[0]
            return sol.predict(K_xt.reshape(m * C, n * C), f0_test=f0_x.reshape(-1)).reshape(m, C)

        return Fit(predict)
    raise ValueError(f"unknown kernel kind {kind!r}")
