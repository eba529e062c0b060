"""Kernel regression with the pretrained-LM kernels, hyperparameters chosen on dev ([KV] App. A.3, Table 4).

Per k-shot split and kernel kind, with K = K(train, train) flattened to
[n C, n C] (every logit an output, [KV] "Solving Multi-Class Tasks"):

- sgd / signgd (symmetric): regularized kernel logistic regression ([KV]
  App. A.3; or kernel ridge regression, loss="ridge") with relative ridge
  lambda = r ||K||_op, r in {0, 0.001, 0.01, 0.1, 1}, and the pretrained
  logits as offset scaled by s in {10, 100, 1000, 10000, inf} (inf: no f0),
  predicting h(x) = f0(x) / s + K(x, X) alpha;
- asym_signgd: the asymmetric solver of He et al. (2022) on
  K(x_i, x_j) = <grad f(x_i), sign grad f(x_j)>, with gamma in {0.01, 0.1, 1, 10}, c = 1
  (predictor f_s(x) = K(x, X)(beta * Y)), same r and s grids.

The solvers themselves are ntkcheck.theory.solvers (see ``_fit``). The grid
point with the best dev metric is evaluated on test; zero-shot is argmax f0.
Results: one sweep point per seed in the run store, summarized as [KV] Table 2.
"""
from __future__ import annotations

import itertools
import math
from typing import Sequence

import numpy as np
import torch

from ntkcheck.realmodels.metrics import score

REGS = (0.0, 0.001, 0.01, 0.1, 1.0)
F0_SCALES = (10.0, 100.0, 1000.0, 10000.0, math.inf)
GAMMAS = (0.01, 0.1, 1.0, 10.0)


def grid_for(kind: str, regs=REGS, f0_scales=F0_SCALES, gammas=GAMMAS) -> list[dict]:
    """The [KV] Table 4 hyperparameter grid of ``kind`` as a list of dicts."""
    base = [{"reg": r, "f0_scale": s} for r, s in itertools.product(regs, f0_scales)]
    if kind == "asym_signgd":
        return [dict(b, gamma=g) for b in base for g in gammas]
    return base


def grid_override(regs: Sequence[float] | None) -> dict | None:
    """grid_for's overrides for a ridge grid ``regs`` (--regs of lm solve and lm reproduce); None keeps [KV]
    Table 4's grid."""
    return None if regs is None else {"regs": tuple(float(r) for r in regs)}


def flat(K: torch.Tensor) -> np.ndarray:
    """[N1, C, N2, C] -> [N1 C, N2 C] float64 (row index i C + a)."""
    n1, c1, n2, c2 = K.shape
    return K.reshape(n1 * c1, n2 * c2).double().cpu().numpy()


def onehot(y: Sequence[int], C: int) -> np.ndarray:
    """[N, C] float64 one-hot targets."""
    Y = np.zeros((len(y), C))
    Y[np.arange(len(y)), np.asarray(y, dtype=int)] = 1.0
    return Y


def _fit(kind: str, K_tt: np.ndarray, Y: np.ndarray, f0_t: np.ndarray, hp: dict, loss: str):
    """A Fit (_solvers.Fit: (K_xt [m, C, n, C], f0_x [m, C]) -> logits [m, C], and no_minimizer) on the training
    block."""
    from ntkcheck.realmodels import _solvers

    return _solvers.fit(kind, K_tt, Y, f0_t, hp, loss)


def solve_split(kind: str, K_tt: torch.Tensor, K_dt: torch.Tensor, K_st: torch.Tensor, y_t, y_d, y_s,
                f0_t: torch.Tensor, f0_d: torch.Tensor, f0_s: torch.Tensor, metric: str,
                grid: list[dict] | None = None, loss: str = "logistic") -> dict:
    """Choose the grid point with the best dev metric, return its dev and test metric, hyperparameters and
    test predictions ("test_pred", argmax class per test example: what bootstrap intervals resample).

    Kernels [n, C, n, C], [m, C, n, C], [t, C, n, C]; f0 blocks [*, C]. Ties on dev keep the earlier grid
    point (the grid is ordered from less to more regularization).

    What the dev set could choose, from every grid point's test metric (grid_selection): "dev_ties", how many
    grid points share the best dev metric (a dev set of m examples scores in steps of 100/m points, so
    several usually do); "tied_test_lo" / "tied_test_hi", the test metrics those tied points span (the
    choice among them is the tie rule's, not the data's); "oracle_test", the best test metric of any grid
    point (an upper bound no dev rule can pass; not a result); "no_minimizer", whether the chosen point's loss
    had no minimizer (logistic at reg 0 on separable training examples, _solvers.Fit): its predictions are
    then where the optimizer stopped, and move with the kernel's rounding.
    """
    C = K_tt.shape[1]
    Kt, Kd, Ks = (np.asarray(K.double().cpu().numpy() if hasattr(K, "numpy") else K, dtype=np.float64)
                  for K in (K_tt, K_dt, K_st))
    Y = onehot(y_t, C)
    f0t, f0d, f0s = (np.asarray(v, dtype=np.float64) for v in (f0_t, f0_d, f0_s))
    y_s = np.asarray(y_s)
    scored = []   # (dev, test, hp, test logits, no minimizer) of every grid point that fits
    for hp in grid or grid_for(kind):
        try:
            pred = _fit(kind, Kt, Y, f0t, hp, loss)
        except (np.linalg.LinAlgError, ValueError, RuntimeError):
            continue
        dev = score(torch.from_numpy(pred(Kd, f0d)), np.asarray(y_d), metric)
        logits = torch.from_numpy(pred(Ks, f0s))
        scored.append((dev, score(logits, y_s, metric), hp, logits, pred.no_minimizer))
    if not scored:
        return {"dev": float("nan"), "test": float("nan"), "test_pred": [-1] * len(y_s)}
    dev, test, hp, logits, unbounded = max(scored, key=lambda p: p[0])   # max keeps the first of equal dev metrics
    return {"dev": dev, "test": test, **{f"hp_{k}": (v if math.isfinite(v) else "inf") for k, v in hp.items()},
            **grid_selection([(d, t) for d, t, *_ in scored]), "no_minimizer": unbounded,
            "test_pred": logits.argmax(-1).tolist()}


def grid_selection(dev_test: Sequence[tuple[float, float]]) -> dict:
    """{dev_ties, tied_test_lo, tied_test_hi, oracle_test} of (dev, test) metric pairs, one a grid point
    (solve_split's docstring)."""
    best = max(d for d, _ in dev_test)
    tied = [t for d, t in dev_test if d == best]
    return {"dev_ties": len(tied), "tied_test_lo": min(tied), "tied_test_hi": max(tied),
            "oracle_test": max(t for _, t in dev_test)}


def solve_session(session, kinds: Sequence[str], grid_override: dict | None = None,
                  loss: str = "logistic") -> list[dict]:
    """Rows {seed, method, dev, test, hp_*} for zero-shot and every kind, over the session's seeds.

    Each seed is one resumable sweep point (kernels come from the session's on-disk cache).
    """
    from ntkcheck.checks.sweep import sweep
    from ntkcheck.errors import UserError
    from ntkcheck.realmodels._solvers import LOSSES

    if loss not in LOSSES:   # checked here: solve_split skips a grid point whose fit raises, so all would be nan
        raise UserError(f"--loss {loss}: expected one of {', '.join(LOSSES)}")
    task = session.task
    y = session.labels.numpy()
    f0 = session.f0().numpy()
    kernels = {kind: session.kernel(kind) for kind in kinds}
    go = grid_override or {}

    def compute(pt):
        s = pt["seed"]
        ix = session.index[s]
        # In head mode f0 is the linear-probing head on frozen features, not a zero-shot prompt.
        out = [{"method": "zero_shot" if session.adapter.mode != "head" else "linear_probe", "dev": score(torch.from_numpy(f0[ix["dev"]]), y[ix["dev"]], task.metric),
                "test": score(torch.from_numpy(f0[ix["test"]]), y[ix["test"]], task.metric),
                "test_pred": f0[ix["test"]].argmax(-1).tolist()}]
        for kind in kinds:
            K = kernels[kind]
            r = solve_split(kind, session.block(K, s, "train"), session.block(K, s, "dev"),
                            session.block(K, s, "test"), y[ix["train"]], y[ix["dev"]], y[ix["test"]],
                            f0[ix["train"]], f0[ix["dev"]], f0[ix["test"]], task.metric,
                            grid=grid_for(kind, **go) if go else None, loss=loss)
            out.append({"method": kind, **r})
        return out

    binding = {"kinds": list(kinds), "grid": str(go), "loss": loss}
    # version 2: rows carry grid_selection's fields; 3: and no_minimizer; 4: logistic fits at ridge > 0 by Newton
    # (recomputed from the cached kernels, seconds)
    session.store.bind({"solve": session.point_fields(), **binding}, version=4,
                       formerly=[{"solve": session.formerly(session.point_fields()), **binding}])
    return sweep(session.store, [{"seed": sp.seed, "data": session.seed_data(sp.seed)} for sp in session.splits], compute,
                 desc=f"solve {task.name}")
