"""early_stopping: rates of early-stopped kernel gradient descent ([ES] Sec. 3.5, 6.2, 6.3; RWY 2014).

Claim. Kernel GD on y = f*(x) + sigma w, stopped at the data-dependent time of
Raskutti, Wainwright & Yu (2014) (RWY eq. 7; [ES] Sec. 3.5 eq. 10-11, App. B.1)

    T = min{t : R(1/sqrt(eta_t)) > 1/(2 e sigma eta_t)} - 1,
    R(rho) = [1/N sum_i min(lam_i, rho^2)]^(1/2)   (lam_i: eigenvalues of K/N),

reaches ||f_T - f*||^2 <= 12 rho_N^2 (RWY Thm 1), and for eigen-decay
lam_k ~ k^-2beta ([ES] eq. 29) the rate

    ||f_T - f*||_2^2 = O(N^(-2beta/(2beta+1)))                          ([ES] eq. 30)

(Thm 1's eq. 15, N^-1/2, is the beta = 1/2 worst case). Early stopping at t is
ridge regression with lambda = 1/eta_t ([ES] eq. 27); eq. 31-32 estimate beta
from the log-log spectrum.

Measured, on synthetic kernels with known decay (theory/early_stopping.py's
periodic Sobolev kernel, beta in {1, 2}, targets at distance delta from the
edge of the RKHS, noise sigma), versus N: the squared critical radius, the
L2 error at the rule, at the oracle time, of ridge at lambda = 1/eta_T and at
its best lambda, and of GD run to interpolation; beta-hat from the Gram
spectrum. Then an NTK-parametrized ReLU MLP trained by full-batch GD with
hold-out stopping (checks/_es_helpers.py), versus N, against the rate
predicted from its own eNTK's beta-hat.

Claims (eq. 30 is an upper bound: slopes are claimed "<=" it, and reported):
  - slope(err at the rule) <= -2beta/(2beta+1) + tol, and the same at the oracle time;
  - slope(rho_N^2) == -2beta/(2beta+1) (the radius carries the rate);
  - err at the rule <= 12 rho_N^2 at every point (RWY Thm 1);
  - beta-hat == beta;
  - ridge at lambda = 1/eta_T: slope <= rate + tol; best ridge within a factor 2 of best GD;
  - MLP with hold-out stopping: slope <= -2 beta_hat/(2 beta_hat + 1) + tol.
Control: GD run to interpolation on noisy data does not reach the rate (slope > rate + margin).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ntkcheck.checks._common import limit_threads
from ntkcheck.checks._es_helpers import mlp_point, synthetic_point
from ntkcheck.checks.config import CheckConfig, axis, setting
from ntkcheck.checks.fit import fit_rows
from ntkcheck.checks.plots import loglog_panels
from ntkcheck.checks.registry import CheckSpec
from ntkcheck.checks.sweep import grid, select, sweep
from ntkcheck.result import Claim, claim
from ntkcheck.theory import early_stopping as es


@dataclass(frozen=True)
class Config(CheckConfig):
    sample_sizes: tuple[int, ...] = axis("sample_size", (64, 128, 256, 512, 1024, 2048))
    seeds: int = axis("seeds", 8)
    betas: tuple[int, ...] = (1, 2)
    #: GD to interpolation is the control only where the Gram is well conditioned in float64:
    #: for beta = 2 the smallest eigenvalues of K/N reach ~N^-4 and the interpolant is rounding noise.
    control_betas: tuple[int, ...] = (1,)
    sigma: float = 0.5
    #: target at distance delta from the edge of the RKHS: its oracle rate is
    #: -(2beta+delta)/(2beta+1+delta), within 0.05 of eq. 30's for delta = 0.5, beta >= 1
    delta: float = 0.5
    target_norm: float = setting(1.0, gt=0)
    target_modes: int = 512
    grid: int = 2048
    #: step = step_fraction / lam_1: a tenth of RWY's largest step, so the integer stopping
    #: time resolves eta_T to 10% (with the largest step T is 2-8 and rounding moves the slope)
    step_fraction: float = setting(0.1, gt=0, le=1)
    n_times: int = 40
    #: beta-hat window: eigen-indices [lo N, hi N]; the top few carry the constant mode and the
    #: bottom of the Gram spectrum flattens below the population eigenvalues
    beta_window: tuple[float, float] = setting((0.02, 0.25), gt=0, lt=1)
    # MLP with hold-out stopping
    mlp_sample_sizes: tuple[int, ...] = axis("sample_size", (64, 128, 256, 512, 1024))
    mlp_seeds: int = axis("seeds", 4)
    mlp_width: int = 1024
    mlp_val_frac: float = setting(0.25, gt=0, lt=1)
    mlp_max_steps: int = 3000
    mlp_checkpoints: int = 60
    mlp_n_beta: int = 100
    mlp_beta_window: tuple[float, float] = setting((0.02, 0.3), gt=0, lt=1)
    #: the MLP's eNTK decays with beta_hat ~ 1.27; a target built on beta = 1.5 lies inside its RKHS
    #: (coefficients^2 k^-(2*1.5+1+delta) against eigenvalues k^-2.54)
    mlp_target_beta: float = setting(1.5, gt=0)
    mlp_target_modes: int = 64
    mlp_grid: int = 256
    #: eq. 30 is a bound; 0.1 absorbs the seed scatter of a slope over 1.5 decades of N
    #: (bootstrap CIs here are about +-0.08)
    tol_rate: float = 0.1
    #: the radius is a deterministic function of the Gram spectrum; its slope over 64..2048
    #: is within 0.01 of the asymptote for beta = 1, 2
    tol_radius: float = 0.05
    #: the Gram spectrum's window fit is biased by the paired (cos, sin) eigenvalues, ~0.1 at N = 64
    tol_beta: float = 0.15
    #: hold-out stopping on a quarter of the data, 4 seeds: slopes scatter by ~0.15
    tol_mlp: float = 0.2
    #: interpolation must miss the rate by a clear margin: its slope stays near 0
    control_margin: float = 0.3

    def __post_init__(self):
        super().__post_init__()
        if len(self.sample_sizes) < 2 or len(self.mlp_sample_sizes) < 2:
            raise ValueError("sample_sizes and mlp_sample_sizes need at least two sizes for a slope")
        if self.seeds < 2 or self.mlp_seeds < 2:
            raise ValueError(f"early_stopping needs seeds >= 2 and mlp_seeds >= 2 for a CI, got {self.seeds}, "
                             f"{self.mlp_seeds}")
        extra = [b for b in self.control_betas if b not in self.betas]
        if extra:
            raise ValueError(f"control_betas={self.control_betas!r}: {extra[0]} is not one of betas {self.betas}")
        for name in ("beta_window", "mlp_beta_window"):
            lo, hi = getattr(self, name)
            if not lo < hi:
                raise ValueError(f"{name}={(lo, hi)!r}: expected low < high")

    @classmethod
    def quick(cls) -> "Config":
        return cls(sample_sizes=(64, 128, 256, 512), seeds=4, target_modes=256, grid=1024, n_times=30,
                   mlp_sample_sizes=(64, 128, 256, 512), mlp_seeds=2, mlp_width=256, mlp_max_steps=1000)


def _geo_means(rows, x, y):
    xs = sorted({r[x] for r in rows})
    return xs, [float(np.exp(np.mean([np.log(r[y]) for r in rows if r[x] == v]))) for v in xs]


def run(config: Config, store) -> list[Claim]:
    claims: list[Claim] = []
    summary: dict = {}

    def synth(point):
        return synthetic_point(point["beta"], point["N"], point["seed"], sigma=config.sigma, delta=config.delta,
                               norm=config.target_norm, k_max=config.target_modes, grid=config.grid,
                               n_times=config.n_times, beta_window=config.beta_window,
                               step_fraction=config.step_fraction)

    def mlp(point):
        return mlp_point(point["N"], point["seed"], width=config.mlp_width, sigma=config.sigma,
                         delta=config.delta, norm=config.target_norm, k_max=config.mlp_target_modes,
                         beta_target=config.mlp_target_beta, grid=config.mlp_grid,
                         val_frac=config.mlp_val_frac, max_steps=config.mlp_max_steps,
                         n_checkpoints=config.mlp_checkpoints, n_beta=config.mlp_n_beta,
                         beta_window=config.mlp_beta_window)

    with limit_threads(1):
        rows = sweep(store, [dict(p, part="synthetic") for p in
                             grid(beta=config.betas, N=config.sample_sizes, seed=config.seed_range())],
                     lambda p: synth(p), desc="early_stopping synthetic")
        mrows = sweep(store, [dict(p, part="mlp") for p in
                              grid(N=config.mlp_sample_sizes, seed=config.seed_range(config.mlp_seeds))],
                      lambda p: mlp(p), desc="early_stopping mlp")
    store.write_measurements(rows + mrows)

    panels = []
    for beta in config.betas:
        sel = select(rows, beta=beta)
        rate = es.rate_exponent(beta)
        fits = {k: fit_rows(sel, "N", k) for k in ("err_rule", "err_oracle", "rho2", "err_ridge_rule",
                                                    "err_ridge_oracle", "err_interp")}
        summary[f"beta={beta}"] = {k: v.to_json() for k, v in fits.items()}
        src = "[ES] eq. 30"
        claims.append(claim(f"beta{beta}.err_rule.rate", f"beta={beta}: slope of L2 error at the stopping rule vs N "
                            "(bound)", predicted=rate, measured=fits["err_rule"].slope, relation="<=",
                            tolerance=config.tol_rate, ci=fits["err_rule"].ci, source=src))
        claims.append(claim(f"beta{beta}.err_oracle.rate", f"beta={beta}: slope of L2 error at the oracle time vs N "
                            "(bound)", predicted=rate, measured=fits["err_oracle"].slope, relation="<=",
                            tolerance=config.tol_rate, ci=fits["err_oracle"].ci, source=src))
        claims.append(claim(f"beta{beta}.rho2.rate", f"beta={beta}: slope of squared critical radius rho_N^2 vs N",
                            predicted=rate, measured=fits["rho2"].slope, relation="==", tolerance=config.tol_radius,
                            ci=fits["rho2"].ci, source="[ES] eq. 11, 30"))
        worst = max(r["err_rule"] / r["bound_rule"] for r in sel)
        claims.append(claim(f"beta{beta}.rwy_bound", f"beta={beta}: max over points of err_rule / (12 rho_N^2)",
                            predicted=1.0, measured=worst, relation="<=", source="RWY 2014 Thm 1"))
        bh = np.array([r["beta_hat"] for r in sel])
        claims.append(claim(f"beta{beta}.beta_hat", f"beta={beta}: beta-hat from the Gram spectrum",
                            predicted=float(beta), measured=float(bh.mean()), relation="==",
                            tolerance=config.tol_beta,
                            ci=(float(np.quantile(bh, 0.025)), float(np.quantile(bh, 0.975))),
                            source="[ES] eq. 31-32"))
        claims.append(claim(f"beta{beta}.ridge.rate", f"beta={beta}: slope of ridge error at lambda = 1/eta_T vs N",
                            predicted=rate, measured=fits["err_ridge_rule"].slope, relation="<=",
                            tolerance=config.tol_rate, ci=fits["err_ridge_rule"].ci, source="[ES] eq. 27"))
        xs, gd = _geo_means(sel, "N", "err_oracle")
        _, rr = _geo_means(sel, "N", "err_ridge_oracle")
        dev = max(abs(math.log(b / a)) for a, b in zip(gd, rr))
        claims.append(claim(f"beta{beta}.ridge_vs_gd", f"beta={beta}: max_N |log(best ridge error / best GD error)|",
                            predicted=0.0, measured=dev, relation="<=", tolerance=math.log(2.0),
                            source="[ES] Sec. 6.2"))
        if beta in config.control_betas:
            claims.append(claim(f"control.beta{beta}.interpolation", f"beta={beta}: slope of error of GD run to "
                                "interpolation vs N (no stopping)", predicted=rate, measured=fits["err_interp"].slope,
                                relation=">", tolerance=config.control_margin, ci=fits["err_interp"].ci,
                                control=True, source="[ES] Sec. 6.3"))
        panels.append({"title": f"synthetic kernel, beta={beta} (rate {rate:.3f})", "ylabel": "L2 error^2",
                       "xlabel": "N", "series": [(lab, [r["N"] for r in sel], [r[k] for r in sel]) for lab, k in
                                                 (("stopping rule", "err_rule"), ("oracle t", "err_oracle"),
                                                  ("ridge 1/eta_T", "err_ridge_rule"),
                                                  ("interpolation", "err_interp"), ("rho_N^2", "rho2"))]})

    bh = np.array([r["beta_hat"] for r in mrows])
    beta_mlp = float(bh.mean())
    rate_mlp = es.rate_exponent(beta_mlp)
    fit_h = fit_rows(mrows, "N", "err_holdout")
    fit_l = fit_rows(mrows, "N", "err_last")
    summary["mlp"] = {"beta_hat": beta_mlp, "predicted_rate": rate_mlp, "holdout": fit_h.to_json(),
                      "last_step": fit_l.to_json()}
    claims.append(claim("mlp.holdout.rate", "MLP (NTK, GD, hold-out stopping): slope of L2 error vs N against "
                        "its eNTK's -2 beta_hat/(2 beta_hat+1)", predicted=rate_mlp, measured=fit_h.slope,
                        relation="<=", tolerance=config.tol_mlp, ci=fit_h.ci, source="[ES] Sec. 6.2, 7.1"))
    panels.append({"title": f"NTK MLP, beta_hat={beta_mlp:.2f} (rate {rate_mlp:.3f})", "ylabel": "L2 error^2",
                   "xlabel": "N", "series": [("hold-out stop", [r["N"] for r in mrows],
                                              [r["err_holdout"] for r in mrows]),
                                             ("last step", [r["N"] for r in mrows], [r["err_last"] for r in mrows])]})
    loglog_panels(store.path("rates.png"), panels, suptitle="early stopping: error vs N", xlabel="N")
    store.write_json("fits.json", summary)
    return claims


def memory_bytes(config: Config) -> int:
    """Peak bytes of the largest point: the synthetic Gram, its eigenvectors and the grid-by-N kernel
    (float64), and the MLP's eNTK Gram."""
    n, m = max(config.sample_sizes), max(config.mlp_sample_sizes)
    return 8 * (6 * n * n + 2 * config.grid * n + 4 * m * m + 4 * config.mlp_width * (m + config.mlp_grid))


SPEC = CheckSpec(name="early_stopping", summary="early-stopped kernel GD reaches N^(-2beta/(2beta+1)); "
                 "interpolation does not ([ES] eq. 10-11, 27, 30)", config_cls=Config, run=run, order=60,
                 version=2, memory=memory_bytes)
