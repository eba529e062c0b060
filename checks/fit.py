"""The one exponent fit: least squares on log-log data with a bootstrap CI over seeds.

Model: log y = s log x + c. The point estimate fits all (x, y) pairs; the CI
resamples whole seeds with replacement (B draws, fixed generator) and refits,
reporting the 2.5% and 97.5% quantiles of s. With a single seed the pairs are
resampled instead.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np


@dataclass(frozen=True)
class ExponentFit:
    slope: float
    intercept: float
    ci: tuple[float, float]
    n_points: int

    def to_json(self) -> dict:
        return {"slope": self.slope, "intercept": self.intercept, "ci": list(self.ci), "n_points": self.n_points}


def _ls(logx: np.ndarray, logy: np.ndarray) -> tuple[float, float]:
    A = np.stack([logx, np.ones_like(logx)], axis=1)
    (s, c), *_ = np.linalg.lstsq(A, logy, rcond=None)
    return float(s), float(c)


def fit_exponent(x: Sequence[float], y: Sequence[float], seeds: Sequence | None = None, *,
                 n_boot: int = 1000, level: float = 0.95, rng_seed: int = 0) -> ExponentFit:
    """Fit y ~ C x^s. Non-positive or non-finite y are dropped (they have no logarithm)."""
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    groups = np.zeros(len(x), dtype=int) if seeds is None else np.unique(np.asarray(seeds), return_inverse=True)[1]
    keep = np.isfinite(y) & (y > 0) & np.isfinite(x) & (x > 0)
    x, y, groups = x[keep], y[keep], groups[keep]
    if len(np.unique(x)) < 2:
        return ExponentFit(float("nan"), float("nan"), (float("nan"), float("nan")), int(len(x)))
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
