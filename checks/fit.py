"""The one exponent fit: least squares on log-log data with a bootstrap CI over seeds.

Model: log y = s log x + c. The point estimate fits all (x, y) pairs; the CI
resamples whole seeds with replacement (B draws, fixed generator) and refits,
reporting the 2.5% and 97.5% quantiles of s. With a single seed the pairs are
resampled instead.

A measurement that has no logarithm (y <= 0, NaN or infinite: a width that
diverged, a quantity that vanished) is not dropped: the fit fails (slope,
intercept and CI NaN, so every claim on it fails) and lists the failed points
with their coordinates, which ``slope_claim`` writes into the claim's name.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from ntkcheck.result import Claim, claim


@dataclass(frozen=True)
class ExponentFit:
    slope: float
    intercept: float
    ci: tuple[float, float]
    n_points: int
    #: points that could not enter the fit: [{"x": ..., "y": ..., "seed": ...}]
    failed: list = field(default_factory=list)

    def to_json(self) -> dict:
        return {"slope": self.slope, "intercept": self.intercept, "ci": list(self.ci), "n_points": self.n_points,
                "failed": self.failed}

    def describe_failures(self, x_name: str = "x", limit: int = 3) -> str:
        """'width=4096 seed=2: nan; ...' for the failed points (empty when there are none)."""
        parts = [f"{x_name}={f['x']:g} seed={f['seed']}: {f['y']:g}" for f in self.failed[:limit]]
        more = len(self.failed) - limit
        return "; ".join(parts) + (f"; {more} more" if more > 0 else "")


NAN_FIT = (float("nan"), float("nan"), (float("nan"), float("nan")))


def _ls(logx: np.ndarray, logy: np.ndarray) -> tuple[float, float]:
    A = np.stack([logx, np.ones_like(logx)], axis=1)
    (s, c), *_ = np.linalg.lstsq(A, logy, rcond=None)
    return float(s), float(c)


def fit_exponent(x: Sequence[float], y: Sequence[float], seeds: Sequence | None = None, *,
                 n_boot: int = 1000, level: float = 0.95, rng_seed: int = 0) -> ExponentFit:
    """Fit y ~ C x^s (see the module docstring for points without a logarithm)."""
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    seed_values = np.zeros(len(x), dtype=int) if seeds is None else np.asarray(seeds)
    groups = np.unique(seed_values, return_inverse=True)[1] if len(x) else np.zeros(0, dtype=int)
    bad = ~(np.isfinite(y) & (y > 0) & np.isfinite(x) & (x > 0))
    if bad.any():
        failed = [{"x": float(a), "y": float(b), "seed": s.item() if hasattr(s, "item") else s}
                  for a, b, s in zip(x[bad], y[bad], seed_values[bad])]
        return ExponentFit(*NAN_FIT, int(len(x)), failed)
    if len(np.unique(x)) < 2:
        return ExponentFit(*NAN_FIT, int(len(x)))
    lx, ly = np.log(x), np.log(y)
    s, c = _ls(lx, ly)
    rng = np.random.default_rng(rng_seed)
    uniq = np.unique(groups)
    by_group = [np.flatnonzero(groups == g) for g in uniq]
    slopes = []
    for _ in range(n_boot):
        if len(uniq) >= 2:
            idx = np.concatenate([by_group[i] for i in rng.integers(0, len(uniq), len(uniq))])
        else:
            idx = rng.integers(0, len(x), len(x))
        if len(np.unique(lx[idx])) < 2:
            continue
        slopes.append(_ls(lx[idx], ly[idx])[0])
    alpha = (1 - level) / 2
    ci = (float(np.quantile(slopes, alpha)), float(np.quantile(slopes, 1 - alpha))) if slopes else (s, s)
    return ExponentFit(s, c, ci, int(len(x)))


def fit_rows(rows: Sequence[dict], x: str, y: str, where: dict | None = None, seed_key: str = "seed",
             **kw) -> ExponentFit:
    """fit_exponent over the rows matching ``where`` (column -> value)."""
    sel = [r for r in rows if all(r.get(k) == v for k, v in (where or {}).items())]
    return fit_exponent([r[x] for r in sel], [r[y] for r in sel], [r.get(seed_key, 0) for r in sel], **kw)


def mean_ci(values: Sequence[float], level: float = 0.95, *, log: bool = False) -> tuple[float, tuple[float, float]]:
    """(mean, Student-t interval of the mean) over seeds; the interval is (nan, nan) with fewer than two
    values (and then a claim on it is judged by the mean alone). With ``log`` (positive quantities spread
    over scales, such as relative errors): the geometric mean and the exponentiated interval of log values."""
    from scipy import stats

    v = np.asarray([x for x in values if x == x], dtype=float)
    if log:
        if len(v) == 0 or (v <= 0).any():
            return float("nan"), (float("nan"), float("nan"))
        m, (lo, hi) = mean_ci(np.log(v), level)
        return float(np.exp(m)), (float(np.exp(lo)), float(np.exp(hi)))
    if len(v) == 0:
        return float("nan"), (float("nan"), float("nan"))
    m = float(v.mean())
    if len(v) < 2:
        return m, (float("nan"), float("nan"))
    half = float(stats.t.ppf(0.5 + level / 2, len(v) - 1) * v.std(ddof=1) / np.sqrt(len(v)))
    return m, (m - half, m + half)


def ratio_ci(numerators: Sequence[float], denominators: Sequence[float], level: float = 0.95, *,
             n_boot: int = 2000, rng_seed: int = 0) -> tuple[float, tuple[float, float]]:
    """(sum num / sum den, percentile bootstrap interval over seeds): the ratio estimator of
    E[num] / E[den], one (num, den) pair per seed. Unlike the mean of per-seed ratios it is not thrown
    by a seed whose denominator is near zero (there an absolute remainder becomes a large relative one)."""
    num = np.asarray(numerators, dtype=float)
    den = np.asarray(denominators, dtype=float)
    if len(num) == 0 or len(num) != len(den) or not (np.isfinite(num).all() and np.isfinite(den).all()) \
            or den.sum() == 0:
        return float("nan"), (float("nan"), float("nan"))
    r = float(num.sum() / den.sum())
    if len(num) < 2:
        return r, (float("nan"), float("nan"))
    idx = np.random.default_rng(rng_seed).integers(0, len(num), (n_boot, len(num)))
    dsum = den[idx].sum(axis=1)
    boots = num[idx].sum(axis=1)[dsum != 0] / dsum[dsum != 0]
    alpha = (1 - level) / 2
    return r, (float(np.quantile(boots, alpha)), float(np.quantile(boots, 1 - alpha)))


def slope_claim(id: str, name: str, fit: ExponentFit, *, predicted: float, relation: str, tolerance: float = 0.0,
                control: bool = False, source: str = "", x_name: str = "width") -> Claim:
    """The claim 'fitted slope (relation) predicted' with the fit's CI; a failed fit's points are named."""
    if fit.failed:
        name = f"{name} [fit failed at {fit.describe_failures(x_name)}]"
    elif math.isnan(fit.slope):
        name = f"{name} [no fit: fewer than two distinct {x_name}s]"
    return claim(id, name, predicted=predicted, measured=fit.slope, relation=relation, tolerance=tolerance,
                 ci=fit.ci, control=control, source=source)
