"""Kernel solvers: what a kernel predicts once it is fixed ([KV] App. A.3, Table 4; Jacot et al. 2018).

Conventions shared by every function here:
- Kernels are numpy-convertible arrays (numpy or torch). A "multi-output"
  kernel has shape [N1, C, N2, C] (as empirical_kernel returns) and is solved
  in its flattened (N1 C) x (N2 C) form ([KV] App. A.3, "Solving Multi-Class
  Tasks": each logit is an example); a "shared" kernel [N1, N2] acts on every
  output column alike.
- Targets Y: [N, C] (or [N] for one output). f0: the model's outputs at
  initialization / the pre-trained model, [N, C].
- Ridge is relative: lambda = ridge * ||K_train||_op ([KV] Table 4 grid
  {0, 0.001, 0.01, 0.1, 1} x ||K||_op).
- f0 scaling s ([KV] Table 4, {10, ..., 10^4, inf}): the solver fits
  Y - f0 / s and predicts K alpha + f0 / s; s = inf ignores f0.
- Gradient descent under MSE uses L = 1 / (2N) sum_i ||f(x_i) - y_i||^2 (so
  dL/df = (f - y) / N, as ntkcheck.models.functional.mse_loss_grad), learning
  rate eta and the kernel K (which already carries per-tensor learning rates
  when built with ``weights=``; then pass eta = 1):
      gradient flow  d f_t(X)/dt = -(eta / N) K (f_t(X) - Y)
      f_t(x) = f_0(x) + K_xX K^{-1} (I - exp(-eta t K / N)) (Y - f_0(X))
      discrete steps f_s(x) = f_0(x) + K_xX K^{-1} (I - (I - eta K / N)^s) (Y - f_0(X)),
  with K^{-1}(I - g(K)) evaluated through the eigendecomposition, so zero
  eigenvalues take their limit (eta t / N, or eta s / N).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import linalg, optimize


def _arr(x, name: str) -> np.ndarray:
    if x is None:
        raise ValueError(f"{name} is required")
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    a = np.asarray(x, dtype=np.float64)
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} has non-finite entries")
    return a


def _kernel_2d(K, name: str) -> tuple[np.ndarray, int | None]:
    """(matrix, C or None): [N1, C, N2, C] -> [(N1 C), (N2 C)]; [N1, N2] stays (shared kernel)."""
    K = _arr(K, name)
    if K.ndim == 4:
        if K.shape[1] != K.shape[3]:
            raise ValueError(f"{name} must be [N1, C, N2, C], got {K.shape}")
        return K.reshape(K.shape[0] * K.shape[1], K.shape[2] * K.shape[3]), K.shape[1]
    if K.ndim == 2:
        return K, None
    raise ValueError(f"{name} must be [N1, N2] or [N1, C, N2, C], got shape {K.shape}")


def _targets(Y, n: int, c: int | None, name: str = "Y") -> np.ndarray:
    Y = _arr(Y, name)
    Y = Y[:, None] if Y.ndim == 1 else Y
    if Y.ndim != 2 or Y.shape[0] != n or (c is not None and Y.shape[1] != c):
        raise ValueError(f"{name} must be [N={n}, C{'' if c is None else '=' + str(c)}], got {Y.shape}")
    return Y


def op_norm(K) -> float:
    """||K||_op, the largest singular value (of the flattened kernel)."""
    M, _ = _kernel_2d(K, "K")
    return float(linalg.norm(M, 2))


def _f0_term(f0, scaling: float, n: int, c: int, name: str) -> np.ndarray:
    if f0 is None or math.isinf(scaling):
        return np.zeros((n, c))
    if not scaling > 0:
        raise ValueError(f"f0_scaling must be > 0 (inf = ignore f0), got {scaling}")
    return _targets(f0, n, c, name) / scaling


@dataclass(frozen=True)
class KernelRegression:
    """A fitted kernel predictor h(x) = K(x, X) alpha + f0(x) / s; alpha [N, C] (or [(N C)] flattened)."""

    alpha: np.ndarray
    multi_output: bool
    n_outputs: int
    f0_scaling: float

    def predict(self, K_test, f0_test=None) -> np.ndarray:
        """K_test: K(x, X) [M, C, N, C] (multi-output) or [M, N] (shared) -> predictions [M, C]."""
        M, c = _kernel_2d(K_test, "K_test")
        if (c is not None) != self.multi_output:
            raise ValueError("K_test must have the same form (multi-output or shared) as the training kernel")
        if self.multi_output:
            if M.shape[1] != self.alpha.shape[0]:
                raise ValueError(f"K_test has {M.shape[1]} training columns, expected {self.alpha.shape[0]}")
            pred = (M @ self.alpha).reshape(-1, self.n_outputs)
        else:
            if M.shape[1] != self.alpha.shape[0]:
                raise ValueError(f"K_test has {M.shape[1]} training columns, expected {self.alpha.shape[0]}")
            pred = M @ self.alpha
        return pred + _f0_term(f0_test, self.f0_scaling, pred.shape[0], self.n_outputs, "f0_test")


def kernel_ridge(K, Y, *, ridge: float = 0.0, f0=None, f0_scaling: float = math.inf) -> KernelRegression:
    """Kernel ridge regression: alpha = (K + lambda I)^+ (Y - f0 / s), lambda = ridge * ||K||_op.

    K: [N, C, N, C] (solved as (N C) x (N C) with Y flattened example-major) or [N, N] (shared).
    ridge = 0 gives the minimum-norm least-squares solution (lstsq), as in [KV]'s solver.
    """
    if not ridge >= 0:
        raise ValueError(f"ridge must be >= 0, got {ridge}")
    M, c = _kernel_2d(K, "K")
    if M.shape[0] != M.shape[1]:
        raise ValueError(f"training kernel must be square, got {M.shape}")
    n = M.shape[0] // (c or 1)
    Y = _targets(Y, n, c)
    cc = Y.shape[1]
    R = Y - _f0_term(f0, f0_scaling, n, cc, "f0")
    lam = ridge * float(linalg.norm(M, 2)) if ridge > 0 else 0.0
    A = M + lam * np.eye(M.shape[0])
    rhs = R.reshape(-1) if c is not None else R
    if lam > 0:
        alpha = linalg.solve(A, rhs, assume_a="sym") if np.allclose(A, A.T) else linalg.solve(A, rhs)
    else:
        alpha = linalg.lstsq(A, rhs)[0]
    return KernelRegression(alpha=alpha, multi_output=c is not None, n_outputs=cc, f0_scaling=f0_scaling)


@dataclass(frozen=True)
class KernelLogistic:
    """Multinomial kernel logistic regression: logits(x) = K(x, X) alpha + f0(x) / s.

    ``no_minimizer``: the fit had ridge 0 and drove the mean training cross-entropy below NO_MINIMIZER_LOSS, so
    the training examples are separable and the loss falls towards 0 along a direction without a minimizer:
    alpha is where L-BFGS stopped, and it moves with the kernel's rounding."""

    model: KernelRegression
    loss: float
    converged: bool
    n_iter: int
    no_minimizer: bool = False

    def predict_logits(self, K_test, f0_test=None) -> np.ndarray:
        return self.model.predict(K_test, f0_test)

    def predict(self, K_test, f0_test=None) -> np.ndarray:
        """Predicted classes [M]."""
        return np.argmax(self.predict_logits(K_test, f0_test), axis=1)


#: a mean training cross-entropy below this at ridge 0: every training margin above about 14 nats, the loss
#: still falling along a direction (separable examples), so the fit is the optimizer's stopping point
NO_MINIMIZER_LOSS = 1e-6
#: Newton's cap on steps at ridge > 0 (it converges quadratically; tens of steps on TREC's kernels)
NEWTON_MAX_STEPS = 200


def kernel_logistic(K, labels, n_classes: int | None = None, *, ridge: float = 0.0, f0=None,
                    f0_scaling: float = math.inf, max_iter: int = 1000, tol: float = 1e-10) -> KernelLogistic:
    """Minimize J(alpha) = (1/N) sum_i CE(softmax(h(x_i)), y_i) + (lambda / 2) alpha^T K alpha.

    h(X) = K alpha + f0 / s (multi-output: h(X)_flat = K_flat alpha_flat; shared: h(X) = K alpha, solved as
    the multi-output kernel K kron I_C), lambda = ridge * ||K||_op, labels: int [N] in [0, C).
    Gradient and Hessian, with P the softmax of h and W = blockdiag_i(diag(p_i) - p_i p_i^T):
        dJ/dalpha = K^T G + lambda K alpha = K (G + lambda alpha),  G = (P - onehot(y)) / N,
        d2J/dalpha2 = K (W K / N + lambda I).
    ridge > 0: J is strictly convex in h, and Newton's method runs on the reduced system
    (W K / N + lambda I) delta = -(G + lambda alpha), whose solution solves the Newton system (multiply by K)
    and exists because W K has a non-negative real spectrum; Armijo backtracking damps it, and it stops after
    the step whose Newton decrement -dJ^T delta / 2 is below ``tol`` (quadratic convergence: tens of steps). Newton
    is hand-rolled because scipy's Newton-CG and trust-region methods iterate with Hessian-vector products,
    which on kernels with ||K|| / lambda_min(K) about 1e5 need as many inner steps as L-BFGS needed outer
    ones (it stopped at its 1000-iteration cap at ridge 1e-6 on TREC's kernels), while the (N C) x (N C)
    system here (576 unknowns on TREC) is solved directly in milliseconds.
    ridge = 0: scipy L-BFGS-B from alpha = 0. On separable examples the loss has no minimizer (``no_minimizer``).
    """
    if not ridge >= 0:
        raise ValueError(f"ridge must be >= 0, got {ridge}")
    M, c = _kernel_2d(K, "K")
    y = np.asarray(labels.detach().cpu().numpy() if hasattr(labels, "detach") else labels)
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"labels must be a 1-D integer array, got dtype {y.dtype} shape {y.shape}")
    C = c if c is not None else (int(n_classes) if n_classes is not None else int(y.max()) + 1)
    if c is not None and n_classes is not None and n_classes != c:
        raise ValueError(f"n_classes={n_classes} disagrees with the kernel's C={c}")
    n = M.shape[0] // (c or 1)
    if y.shape[0] != n or y.min() < 0 or y.max() >= C:
        raise ValueError(f"labels must be N={n} integers in [0, {C}), got shape {y.shape}, range "
                         f"[{y.min()}, {y.max()}]")
    if C < 2:
        raise ValueError(f"logistic regression needs at least 2 classes, got C={C}")
    onehot = np.eye(C)[y]
    off = _f0_term(f0, f0_scaling, n, C, "f0")
    lam = ridge * float(linalg.norm(M, 2)) if ridge > 0 else 0.0
    Mf = M if c is not None else np.kron(M, np.eye(C))   # flat (N C) x (N C): h_flat = Mf alpha_flat
    shape = (n * C,) if c is not None else (n, C)          # alpha as KernelRegression holds it

    def fun(a):
        Z = (Mf @ a).reshape(n, C) + off
        Z = Z - Z.max(axis=1, keepdims=True)
        logp = Z - np.log(np.exp(Z).sum(axis=1, keepdims=True))
        P = np.exp(logp)
        Ka = Mf @ a
        val = -(onehot * logp).sum() / n + 0.5 * lam * float(a @ Ka)
        G = ((P - onehot) / n).reshape(-1)
        return val, Mf.T @ G + lam * Ka, G, P

    if lam > 0:
        a, (val, grad, G, P), converged, it = np.zeros(n * C), fun(np.zeros(n * C)), False, 0
        for it in range(1, min(max_iter, NEWTON_MAX_STEPS) + 1):
            W = (P[:, :, None] * np.eye(C)[None] - P[:, :, None] * P[:, None, :]) / n    # [n, C, C] blocks
            WK = np.einsum("iab,ibm->iam", W, Mf.reshape(n, C, n * C)).reshape(n * C, n * C)
            delta = linalg.solve(WK + lam * np.eye(n * C), -(G + lam * a))
            slope = float(grad @ delta)                      # = -delta^T H delta <= 0
            if -slope / 2 <= tol:
                # in the quadratic phase: the full step leaves an error of order tol^2; keep it unless
                # rounding makes J rise
                trial = fun(a + delta)
                if trial[0] <= val + 1e-12 * abs(val):
                    a, (val, grad, G, P) = a + delta, trial
                converged = True
                break
            t = 1.0
            while True:
                trial = fun(a + t * delta)
                if trial[0] <= val + 1e-4 * t * slope or t < 1e-12:
                    break
                t /= 2
            a, (val, grad, G, P) = a + t * delta, trial
        model = KernelRegression(alpha=a.reshape(shape), multi_output=c is not None, n_outputs=C,
                                 f0_scaling=f0_scaling)
        return KernelLogistic(model=model, loss=float(val), converged=converged, n_iter=it)

    res = optimize.minimize(lambda a: fun(a)[:2], np.zeros(n * C), jac=True, method="L-BFGS-B",
                            options={"maxiter": max_iter, "ftol": tol, "gtol": tol})
    model = KernelRegression(alpha=res.x.reshape(shape), multi_output=c is not None, n_outputs=C,
                             f0_scaling=f0_scaling)
    return KernelLogistic(model=model, loss=float(res.fun), converged=bool(res.success), n_iter=int(res.nit),
                          no_minimizer=bool(res.fun < NO_MINIMIZER_LOSS))


@dataclass(frozen=True)
class AsymmetricKernelSolution:
    """He et al. 2022 least-squares solution for K(x, x') = <phi_s(x), phi_t(x')> ([KV] App. A.3)."""

    alpha: np.ndarray
    beta: np.ndarray
    y: np.ndarray
    c: float
    f0_scaling: float

    def predict(self, K_test_train, K_train_test=None, f0_test=None) -> np.ndarray:
        """c f_s(x) + (1 - c) f_t(x) (+ f0 / s), [M]:

        f_s(x) = K(x, X) (beta ⊙ y) with K_test_train[m, j] = <phi_s(x_m), phi_t(x_j)>;
        f_t(x) = K(X, x)^T (alpha ⊙ y) with K_train_test[i, m] = <phi_s(x_i), phi_t(x_m)>
        (needed only when c < 1).
        """
        Ks = _arr(K_test_train, "K_test_train")
        out = self.c * (Ks @ (self.beta * self.y))
        if self.c < 1:
            if K_train_test is None:
                raise ValueError("c < 1 needs K_train_test = K(X, x) for the f_t part")
            out = out + (1 - self.c) * (_arr(K_train_test, "K_train_test").T @ (self.alpha * self.y))
        if f0_test is not None and not math.isinf(self.f0_scaling):
            out = out + _arr(f0_test, "f0_test").reshape(-1) / self.f0_scaling
        return out


def asymmetric_kernel_solve(K, y, *, gamma: float = 1.0, c: float = 1.0, ridge: float = 0.0, f0=None,
                            f0_scaling: float = math.inf) -> AsymmetricKernelSolution:
    """Solve [[I / gamma, H], [H^T, I / gamma]] [alpha; beta] = [1; 1], H_ij = y_i K_ij y_j (He et al. 2022).

    K: [N, N], K_ij = <phi_s(x_i), phi_t(x_j)> (e.g. the asym_signgd kernel of one output:
    phi_s = gradient, phi_t = its sign). y: [N] targets (labels in {-1, +1}, minus f0 / s when
    f0 is given, as [KV]'s code does). ridge adds ridge * ||K||_op I to K first (Table 4).
    [KV] uses the predictor f_s alone (c = 1). When phi_s = phi_t and y is +-1 the solution has
    alpha = beta and f_s is kernel ridge regression with absolute ridge 1 / gamma.
    """
    if not gamma > 0:
        raise ValueError(f"gamma must be > 0, got {gamma}")
    if not 0 <= c <= 1:
        raise ValueError(f"c must be in [0, 1], got {c}")
    if not ridge >= 0:
        raise ValueError(f"ridge must be >= 0, got {ridge}")
    K = _arr(K, "K")
    if K.ndim != 2 or K.shape[0] != K.shape[1]:
        raise ValueError(f"K must be a square [N, N] kernel, got shape {K.shape}")
    n = K.shape[0]
    y = _arr(y, "y").reshape(-1)
    if y.shape[0] != n:
        raise ValueError(f"y must have N={n} entries, got {y.shape[0]}")
    if f0 is not None and not math.isinf(f0_scaling):
        if not f0_scaling > 0:
            raise ValueError(f"f0_scaling must be > 0, got {f0_scaling}")
        y = y - _arr(f0, "f0").reshape(-1) / f0_scaling
    if ridge > 0:
        K = K + ridge * float(linalg.norm(K, 2)) * np.eye(n)
    H = y[:, None] * K * y[None, :]
    A = np.block([[np.eye(n) / gamma, H], [H.T, np.eye(n) / gamma]])
    sol = linalg.lstsq(A, np.ones(2 * n))[0]
    return AsymmetricKernelSolution(alpha=sol[:n], beta=sol[n:], y=y, c=float(c), f0_scaling=f0_scaling)


def _spectral(K, fn):
    """V diag(fn(lambda)) V^T for symmetric K (eigh)."""
    lam, V = linalg.eigh(0.5 * (K + K.T))
    return (V * fn(lam)) @ V.T


def gd_predictions(K_train, Y, f0_train, *, eta: float, t: float, K_test=None, f0_test=None,
                   discrete: bool = False) -> np.ndarray:
    """Kernel gradient descent under MSE after time t (or t steps when discrete); see the module docstring.

    K_train: [N, C, N, C] or [N, N] (shared), symmetric PSD; Y, f0_train: [N, C].
    K_test: K(x, X) [M, C, N, C] / [M, N], f0_test [M, C] -> predictions at x [M, C];
    without K_test, the training predictions f_t(X) [N, C].
    Flow filter  g(lambda) = -expm1(-eta t lambda / N) / lambda   (-> eta t / N at lambda = 0);
    steps filter g(lambda) = (1 - (1 - eta lambda / N)^t) / lambda   (-> eta t / N), t an integer.
    """
    if not eta > 0 or not t >= 0:
        raise ValueError(f"eta must be > 0 and t >= 0, got eta={eta}, t={t}")
    if discrete and float(t) != int(t):
        raise ValueError(f"discrete gradient descent needs an integer number of steps, got t={t}")
    M, c = _kernel_2d(K_train, "K_train")
    if M.shape[0] != M.shape[1]:
        raise ValueError(f"K_train must be square, got {M.shape}")
    n = M.shape[0] // (c or 1)
    Y = _targets(Y, n, c)
    F0 = _targets(f0_train, n, Y.shape[1], "f0_train")
    R = (Y - F0).reshape(-1) if c is not None else Y - F0
    z = eta / n

    if discrete:
        steps = int(t)

        def g(lam):
            small = np.abs(lam) < 1e-300
            safe = np.where(small, 1.0, lam)
            return np.where(small, z * steps, (1 - (1 - z * lam) ** steps) / safe)
    else:
        def g(lam):
            small = np.abs(lam * z * t) < 1e-12
            safe = np.where(small, 1.0, lam)
            return np.where(small, z * t, -np.expm1(-z * t * lam) / safe)

    W = _spectral(M, g) @ R  # K^{-1} (I - decay(K)) (Y - f0)
    if K_test is None:
        out = M @ W
        return F0 + (out.reshape(n, -1) if c is not None else out)
    Mt, ct = _kernel_2d(K_test, "K_test")
    if (ct is None) != (c is None) or Mt.shape[1] != M.shape[1]:
        raise ValueError(f"K_test {Mt.shape} does not match K_train {M.shape}")
    out = Mt @ W
    out = out.reshape(-1, Y.shape[1]) if c is not None else out
    F0t = _targets(f0_test, out.shape[0], Y.shape[1], "f0_test") if f0_test is not None else 0.0
    return F0t + out
