"""Experiments behind the early_stopping check: a kernel with known eigen-decay, and an MLP trained by GD.

Synthetic problem (one point = (beta, N, seed)):
  x ~ U[0, 1), kernel K = periodic_sobolev_kernel(., ., beta) whose Mercer
  eigenvalues under U[0, 1) are 1, k^-2beta (twice, cos and sin), k >= 1;
  target f*(x) = sum_{k <= k_max} sqrt2 (a_k cos 2 pi k x + b_k sin 2 pi k x)
  with energy a_k^2 + b_k^2 proportional to k^-2beta k^-(1+delta) at every k
  and a random phase, rescaled to ||f*||_H = norm: at distance delta from the
  edge of the RKHS ([ES] eq. 29's setting), the same function at every N of
  a seed; y = f*(x) + sigma w, w ~ N(0, 1).
  Errors are L2(P) errors averaged over the label noise w, exactly given x
  (theory.early_stopping.expected_sq_error): the stopping rule depends on x
  and sigma only, so the noise enters the error alone, and its average
  replaces one draw's scatter (a factor 2-3 on a point) by nothing. L2(P) is
  the mean over a uniform grid of M points, exact for the band-limited target
  (M > 2 k_max) up to the estimator's aliased frequencies above M / 2, whose
  amplitudes are below (M / 2)^-2beta.

MLP problem (one point = (N, seed)): inputs z(x) = (cos 2 pi x, sin 2 pi x),
a one-hidden-layer NTK-parametrized ReLU MLP with biases at width n (float64),
"pretrained" network = its initialization f_0 (fixed per seed), target
f_0 + g with g a Fourier target as above, noisy labels; full-batch GD on the
MSE from f_0, stopped at the best validation loss (hold-out, [ES] Sec. 6.2's
recommendation); beta-hat from the eNTK Gram of f_0 on a fixed sample
([ES] Sec. 7.1, eq. 31-32).
"""
from __future__ import annotations

import math

import numpy as np
import scipy.linalg
import scipy.optimize
import torch

from ntkcheck.models import build, optim, train
from ntkcheck.models.functional import output
from ntkcheck.models.kernels import empirical_kernel
from ntkcheck.seeding import rng as _seeded
from ntkcheck.theory import early_stopping as es


def _rng(*key: int) -> np.random.Generator:
    return _seeded(*key)


def gram_eigh(K: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigenpairs of K / N (descending, clipped at 0); LAPACK's divide-and-conquer driver, the fastest here."""
    n = K.shape[0]
    lam, U = scipy.linalg.eigh((K + K.T) / (2.0 * n), driver="evd")
    return np.clip(lam[::-1], 0.0, None), U[:, ::-1]


# ------------------------------------------------------------------ targets
def fourier_target(beta: float, delta: float, k_max: int, norm: float, rng: np.random.Generator
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Coefficients (a, b) [k_max] of sum_k sqrt2 (a_k cos + b_k sin)(2 pi k x), with ||f||_H = norm
    in the RKHS whose eigenvalues are k^-2beta: ||f||_H^2 = sum_k (a_k^2 + b_k^2) k^2beta.

    a_k^2 + b_k^2 = s k^-2beta k^-(1+delta) exactly (s from the norm), the phase uniform: the energy
    per frequency, which sets the bias of every spectral estimator, is the power law itself, not a
    chi-square draw around it (whose scatter moved a seed's error slope by ~0.2)."""
    k = np.arange(1, k_max + 1, dtype=np.float64)
    sd = k ** (-beta) * k ** (-(1.0 + delta) / 2.0)
    phase = rng.uniform(0.0, 2.0 * math.pi, k_max)
    a, b = sd * np.cos(phase), sd * np.sin(phase)
    h = math.sqrt(float(((a**2 + b**2) * k ** (2 * beta)).sum()))
    return a * norm / h, b * norm / h


def eval_fourier(a: np.ndarray, b: np.ndarray, x: np.ndarray) -> np.ndarray:
    """sum_k sqrt2 (a_k cos 2 pi k x + b_k sin 2 pi k x). x: [M] -> [M]."""
    ph = 2.0 * math.pi * np.outer(x, np.arange(1, a.size + 1))
    return math.sqrt(2.0) * (np.cos(ph) @ a + np.sin(ph) @ b)


# --------------------------------------------------------------- synthetic
def synthetic_point(beta: int, n: int, seed: int, *, sigma: float, delta: float, norm: float, k_max: int,
                    grid: int, n_times: int, beta_window: tuple[float, float], step_fraction: float,
                    fixed_eta: float) -> dict:
    """One (beta, N, seed) point: errors at the stopping rule, the oracle time, a fixed time, ridge, interpolation.

    Returns a flat row: rho2 (squared critical radius, [ES] eq. 11), rho2_pred (its power-law closed
    form, theory.early_stopping.power_law_critical_radius, m = 2), step, T_rule and eta_rule = step
    T_rule (RWY eq. 7), err_rule, bound_rule (12 rho^2, RWY Thm 1), err_oracle and eta_oracle (the
    best time: the best of n_times log-spaced steps and the rule's, refined between its neighbours),
    err_fixed at eta_fixed (GD stopped at a time that does not depend on N), err_ridge_rule (ridge at
    lambda = 1/eta_T, [ES] eq. 27), err_ridge_oracle (best lambda on the grid 1/eta_t), err_interp
    (GD run to convergence), beta_hat (eq. 31-32 on the Gram spectrum). Every err is
    expected_sq_error: the L2 error averaged over the label noise, given x.
    """
    a, b = fourier_target(beta, delta, k_max, norm, _rng(seed, beta, 1))
    x = _rng(seed, beta, n, 2).uniform(0.0, 1.0, n)
    xg = np.arange(grid) / grid
    fg = eval_fourier(a, b, xg)
    lam, U = gram_eigh(es.periodic_sobolev_kernel(x, x, beta))
    A = es.periodic_sobolev_kernel(xg, x, beta) @ U / n   # f(xg) = A (weights * U^T y)
    z = U.T @ eval_fourier(a, b, x)

    def err(weights: np.ndarray) -> float:
        return es.expected_sq_error(A, z, fg, weights, sigma)

    def gd_err(t: float) -> float:
        return err(es.gd_weights(lam, step, t))

    step = step_fraction * min(1.0, 1.0 / lam[0])  # RWY: alpha <= min(1, 1/lam_1)
    rho = es.critical_radius(lam, sigma, norm)
    T = es.stopping_time(lam, sigma, step, norm)
    ts = np.unique(np.concatenate([np.round(np.geomspace(1, 1e3 * max(T, 1) + 10, n_times)), [max(T, 1)]]))
    gd_errs = np.array([gd_err(t) for t in ts])
    i = int(np.argmin(gd_errs))
    t_or, e_or = float(ts[i]), float(gd_errs[i])
    if 0 < i < len(ts) - 1:  # the error is flat near its minimum: refine between the neighbours
        res = scipy.optimize.minimize_scalar(lambda lt: gd_err(math.exp(lt)), method="bounded",
                                             bounds=(math.log(ts[i - 1]), math.log(ts[i + 1])),
                                             options={"xatol": 1e-3})
        if res.fun < e_or:
            t_or, e_or = math.exp(res.x), float(res.fun)
    ridge_errs = np.array([err(es.ridge_weights(lam, es.ridge_lambda_for_time(step, t))) for t in ts])
    t_fixed = max(1, int(round(fixed_eta / step)))
    lo, hi = beta_window
    fit = es.fit_beta(lam, k_min=max(2, int(lo * n)), k_max=max(3, int(hi * n)))
    return {"rho2": rho**2, "rho2_pred": es.power_law_critical_radius(n, beta, sigma, norm, multiplicity=2),
            "step": step, "T_rule": int(T), "eta_rule": step * T, "err_rule": gd_err(T),
            "bound_rule": es.rwy_error_bound(rho), "err_oracle": e_or, "eta_oracle": step * t_or,
            "err_fixed": gd_err(t_fixed), "eta_fixed": step * t_fixed,
            "err_ridge_rule": err(es.ridge_weights(lam, es.ridge_lambda_for_time(step, max(T, 1)))),
            "err_ridge_oracle": float(ridge_errs.min()),
            "err_interp": err(es.interpolation_weights(lam)), "beta_hat": fit.beta}


# --------------------------------------------------------------------- MLP
def mlp_point(n: int, seed: int, *, width: int, sigma: float, delta: float, norm: float, k_max: int,
              beta_target: float, grid: int, val_frac: float, max_steps: int, n_checkpoints: int,
              n_beta: int, beta_window: tuple[float, float]) -> dict:
    """One (N, seed) point of the NTK-parametrized MLP trained by full-batch GD with hold-out stopping.

    The step size is 1 / lam_max of the training set's normalized eNTK Gram (weighted by the
    parametrization's per-tensor learning rates), GD's largest stable step up to a factor 2.
    The validation loss is read at n_checkpoints log-spaced steps (GD's progress is linear in
    log t across the spectrum); returns err_holdout (test MSE to f_0 + g at the checkpoint of
    least validation loss), step_holdout, err_last (after max_steps, no stopping),
    beta_hat (eNTK of f_0 on n_beta fixed points), lr.
    """
    dt = torch.float64
    model = build("mlp", width, "NTK", seed=int(seed) * 7919 + 17, dtype=dt, d_in=2, d_out=1, depth=1,
                  activation="relu", bias=True)
    f, p0 = model.apply, model.params()
    lrs = model.learning_rates("sgd", 1.0)

    def embed(x: np.ndarray) -> torch.Tensor:
        t = torch.as_tensor(2.0 * math.pi * x, dtype=dt)
        return torch.stack([torch.cos(t), torch.sin(t)], dim=1)

    a, b = fourier_target(beta_target, delta, k_max, norm, _rng(seed, 3))
    rng = _rng(seed, n, 4)
    x = rng.uniform(0.0, 1.0, n)
    n_val = max(2, int(round(val_frac * n)))
    xtr, xva = x[n_val:], x[:n_val]
    xg = np.arange(grid) / grid
    Xtr, Xva, Xg = embed(xtr), embed(xva), embed(xg)
    f0 = {k: output(f, p0, X)[:, 0] for k, X in (("tr", Xtr), ("va", Xva), ("g", Xg))}
    noise = sigma * rng.standard_normal(n)
    ytr = f0["tr"] + torch.as_tensor(eval_fourier(a, b, xtr) + noise[n_val:], dtype=dt)
    yva = f0["va"] + torch.as_tensor(eval_fourier(a, b, xva) + noise[:n_val], dtype=dt)
    target_g = f0["g"] + torch.as_tensor(eval_fourier(a, b, xg), dtype=dt)

    K = empirical_kernel(f, p0, Xtr, weights=lrs)[:, 0, :, 0].numpy()
    lr = 1.0 / float(np.linalg.eigvalsh(K / K.shape[0])[-1])
    xb = embed(_rng(seed, 5).uniform(0.0, 1.0, n_beta))
    Kb = empirical_kernel(f, p0, xb, weights=lrs)[:, 0, :, 0].numpy()
    lo, hi = beta_window
    beta_hat = es.fit_beta(np.linalg.eigvalsh(Kb / n_beta), k_min=max(2, int(lo * n_beta)),
                           k_max=max(3, int(hi * n_beta))).beta

    checkpoints = set(np.unique(np.round(np.geomspace(1, max_steps, n_checkpoints)).astype(int)).tolist())
    best = {"val": float("inf"), "step": 0, "err": float("nan")}

    def hold_out(step: int, params) -> None:
        """Validation loss at a checkpoint; the test error of the best one so far is kept."""
        val = float(((output(f, params, Xva)[:, 0] - yva) ** 2).mean())
        if val < best["val"]:
            best.update(val=val, step=step, err=float(((output(f, params, Xg)[:, 0] - target_g) ** 2).mean()))

    hold_out(0, p0)
    step_lr = {k: lr * v for k, v in lrs.items()}
    p_last = train(f, p0, optim.sgd(step_lr), (Xtr, ytr[:, None]), max_steps,
                   callback=lambda st: hold_out(st.t, st.params) if st.t in checkpoints else None)
    last_err = float(((output(f, p_last, Xg)[:, 0] - target_g) ** 2).mean())
    return {"err_holdout": best["err"], "step_holdout": best["step"], "err_last": last_err, "beta_hat": beta_hat,
            "lr": lr}
