"""Task metrics and the [KV] Table 2 layout (mean (std) over k-shot seeds)."""
from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np
import torch


def accuracy(pred: torch.Tensor | np.ndarray, y: torch.Tensor | np.ndarray) -> float:
    """mean_i [pred_i == y_i], in percent."""
    pred, y = np.asarray(pred), np.asarray(y)
    return float(100.0 * (pred == y).mean())


def f1_binary(pred, y, positive: int = 1) -> float:
    """F1 of the positive class, in percent: 2 TP / (2 TP + FP + FN) (0 when there is no positive at all)."""
    pred, y = np.asarray(pred), np.asarray(y)
    tp = float(((pred == positive) & (y == positive)).sum())
    fp = float(((pred == positive) & (y != positive)).sum())
    fn = float(((pred != positive) & (y == positive)).sum())
    return 0.0 if tp == 0 else 100.0 * 2 * tp / (2 * tp + fp + fn)


def score(logits: torch.Tensor, y, metric: str) -> float:
    """The task metric of argmax predictions of ``logits`` [N, C] against labels ``y`` [N]."""
    pred = torch.as_tensor(logits).argmax(-1).cpu().numpy()
    return f1_binary(pred, y) if metric == "f1" else accuracy(pred, y)


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """(mean, population std) as LM-BFF / [KV] report over seeds."""
    v = np.asarray(list(values), dtype=float)
    return (float(v.mean()), float(v.std())) if len(v) else (float("nan"), float("nan"))


METHOD_LABELS = {"zero_shot": "zero-shot f0", "linear_probe": "linear probe f0", "sgd": "K(SGD)", "signgd": "K(SignGD)",
                 "asym_signgd": "K(A-SignGD)", "ft_sgd": "SGD-FT", "ft_adam": "Adam-FT",
                 "lin_sgd": "Lin. (SGD-FT)", "lin_adam": "Lin. (Adam-FT)", "lora_sgd": "K_LoRA(SGD)",
                 "lora_ft_sgd": "SGD-LoRA-FT", "lora_ft_adam": "Adam-LoRA-FT"}
TASK_LABELS = {"sst2": "SST-2", "sst5": "SST-5", "mr": "MR", "cr": "CR", "mpqa": "MPQA", "subj": "Subj",
               "trec": "TREC", "agnews": "AG News", "mnli": "MNLI", "snli": "SNLI", "qnli": "QNLI",
               "rte": "RTE", "mrpc": "MRPC", "qqp": "QQP"}


def table2(results: Mapping[tuple[int, str], Mapping[str, Sequence[float]]]) -> str:
    """A markdown table in the [KV] Table 2 layout.

    results: {(k, method): {task: [score per seed]}}; rows are k-shot then
    method (in METHOD_LABELS order), columns tasks, cells 'mean (std)'.
    """
    tasks: list[str] = []
    for per_task in results.values():
        tasks += [t for t in per_task if t not in tasks]
    order = list(METHOD_LABELS)
    keys = sorted(results, key=lambda km: (km[0], order.index(km[1]) if km[1] in order else len(order)))
    head = "| k-shot | Method | " + " | ".join(TASK_LABELS.get(t, t) for t in tasks) + " |"
    lines = [head, "|" + "---|" * (len(tasks) + 2)]
    last_k = None
    for k, method in keys:
        cells = []
        for t in tasks:
            vals = results[(k, method)].get(t)
            if not vals:
                cells.append("-")
            else:
                m, s = mean_std(vals)
                cells.append(f"{m:.1f} ({s:.1f})")
        lines.append(f"| {k if k != last_k else ''} | {METHOD_LABELS.get(method, method)} | " + " | ".join(cells) + " |")
        last_k = k
    return "\n".join(lines)


def selection_table(rows: Sequence[dict]) -> str:
    """What the dev set chose, per kernel method (rows of solve_session): the dev-chosen test metric, how many
    grid points tied at the best dev metric and the test span they cover, the best grid point on test
    (solve.grid_selection), per seed, then the mean over seeds; and of how many seeds the chosen fit's loss had
    no minimizer (solve_split's no_minimizer: its predictions are where the optimizer stopped). Empty for rows
    without those fields."""
    by: dict[str, list[dict]] = {}
    for r in rows:
        if "oracle_test" in r:
            by.setdefault(r["method"], []).append(r)
    if not by:
        return ""

    def per_seed(rs: list[dict], cell) -> str:
        return " / ".join(cell(r) for r in rs)

    def mean(rs: list[dict], key: str) -> str:
        return f"{mean_std([r[key] for r in rs])[0]:.1f}"

    lines = ["| method | dev-chosen test | mean | grid points tied on dev | their test span | "
             "best grid point on test | mean | chosen fit without a minimizer |", "|---|---|---|---|---|---|---|---|"]
    for m, rs in by.items():
        chosen = per_seed(rs, lambda r: f"{r['test']:.1f}")
        ties = per_seed(rs, lambda r: str(r["dev_ties"]))
        span = per_seed(rs, lambda r: f"{r['tied_test_lo']:.1f}-{r['tied_test_hi']:.1f}")
        oracle = per_seed(rs, lambda r: f"{r['oracle_test']:.1f}")
        known = [r["no_minimizer"] for r in rs if "no_minimizer" in r]
        unbounded = f"{sum(known)} of {len(rs)} seeds" if len(known) == len(rs) else "not recorded"
        lines.append(f"| {METHOD_LABELS.get(m, m)} | {chosen} | {mean(rs, 'test')} | {ties} | {span} | {oracle} | "
                     f"{mean(rs, 'oracle_test')} | {unbounded} |")
    return "\n".join(lines)


def _weighted_metric(a: np.ndarray, y: np.ndarray, W: np.ndarray, metric: str) -> np.ndarray:
    """[B, S] metric (%) of predictions ``a`` [S, N] against ``y`` [N] with test sentence i counted W[b, i]
    times (W [B, N]: bootstrap multiplicities; a row of ones is the plain metric)."""
    if metric == "f1":
        tp = W @ ((a == 1) & (y == 1)).T.astype(float)
        fp = W @ ((a == 1) & (y != 1)).T.astype(float)
        fn = W @ ((a != 1) & (y == 1)).T.astype(float)
        den = 2 * tp + fp + fn
        return np.where(tp > 0, 100.0 * 2 * tp / np.where(den > 0, den, 1.0), 0.0)
    return 100.0 * (W @ (a == y).T.astype(float)) / W.sum(1, keepdims=True)


def bootstrap_stat(preds: Mapping[str, Sequence[Sequence[int]]], y, metric: str, stat, *, n_boot: int = 2000,
                   level: float = 0.95, rng_seed: int = 0) -> tuple[float, tuple[float, float]]:
    """(stat(m), percentile bootstrap interval) over k-shot seeds and test sentences, where
    m = {method: mean over seeds s of metric(preds[method][s], y)} and preds[method] is [S, N] (one row of
    test predictions per seed, every method on the same S seeds and N test sentences).

    Each replicate draws S seeds and N test sentences with replacement, the same draw for every method
    (paired), and recomputes stat: the interval covers both the seed-to-seed spread of a k-shot split and
    the finite test set. One seed gives an interval over test sentences alone. Vectorized through
    per-replicate multiplicity weights: with W [B, N] test counts and V [B, S] seed counts,
    metric_s(b) comes from the weighted counts (W @ indicator^T), and m(b) = V[b] . metric(b) / S.
    """
    y = np.asarray(y)
    arrs = {k: np.asarray(v) for k, v in preds.items()}
    S, N = next(iter(arrs.values())).shape
    if any(a.shape != (S, N) for a in arrs.values()) or len(y) != N:
        raise ValueError(f"every method needs [S, N] = [{S}, {N}] predictions for {len(y)} labels")

    ones = np.ones((1, N))
    value = float(stat({k: float(_weighted_metric(a, y, ones, metric)[0].mean()) for k, a in arrs.items()}))
    rng = np.random.default_rng(rng_seed)
    W = rng.multinomial(N, np.full(N, 1.0 / N), size=n_boot).astype(float)
    V = rng.multinomial(S, np.full(S, 1.0 / S), size=n_boot).astype(float) / S
    means = {k: (_weighted_metric(a, y, W, metric) * V).sum(1) for k, a in arrs.items()}
    boots = np.array([stat({k: float(means[k][b]) for k in arrs}) for b in range(n_boot)], dtype=float)
    boots = boots[np.isfinite(boots)]
    if len(boots) < n_boot // 2:
        return value, (float("nan"), float("nan"))
    alpha = (1 - level) / 2
    return value, (float(np.quantile(boots, alpha)), float(np.quantile(boots, 1 - alpha)))


def seeds_needed(preds: Sequence[Sequence[int]], y, metric: str, *, halfwidth: float = 3.0, level: float = 0.95,
                 n_boot: int = 2000, rng_seed: int = 0) -> dict:
    """How many k-shot seeds an interval of half-width ``halfwidth`` (points) on one method's mean metric needs
    at this test set, from the two sources of its width (bootstrap_stat resamples both).

    The mean over S seeds of metric_s has variance  sigma^2 / S + v_test,  where sigma^2 is the seeds'
    variance (the unbiased sample variance of the S per-seed metrics: a k-shot split's draw) and v_test the
    variance that resampling the N test sentences gives the mean over these seeds (a multinomial bootstrap of
    ``n_boot`` replicates, the one bootstrap_stat draws; for accuracy it is Var_i(mean_s correct_si) / N).
    With z the normal quantile of ``level``, the half-width at S' seeds is z sqrt(sigma^2 / S' + v_test), so

        S' = ceil(sigma^2 / ((h / z)^2 - v_test)),   and no S' suffices when z sqrt(v_test) >= h

    (the test set alone is wider than h: more test sentences, not seeds, are needed; N' = N v_test (z / h)^2
    at unlimited seeds). v_test is taken as measured with S seeds; averaging correctness over more seeds can
    only lower it, so S' errs on the safe side. The normal approximation with the unbiased sigma^2 is a little
    wider than the percentile bootstrap at the same S (that one resamples with the plug-in variance,
    (S - 1) / S of it).

    preds: [S, N] test predictions (one row per seed). Returns {"seeds", "sd_seeds", "halfwidth_test",
    "halfwidth_at_seeds", "seeds_needed" (math.inf when no number of seeds suffices; 1 when the seeds agree;
    nan from one seed),
    "why_none" ("test set" or "one seed" where seeds_needed is not a number: JSON writes both as null),
    "test_needed" (test sentences needed with unlimited seeds, ceil(N v_test (z / h)^2))}."""
    from statistics import NormalDist

    if halfwidth <= 0:
        raise ValueError(f"halfwidth {halfwidth}: needs to be positive")
    a, y = np.asarray(preds), np.asarray(y)
    if a.ndim != 2 or a.shape[1] != len(y):
        raise ValueError(f"preds need shape [S, {len(y)}], got {list(a.shape)}")
    S, N = a.shape
    z = NormalDist().inv_cdf(0.5 + level / 2)
    per_seed = _weighted_metric(a, y, np.ones((1, N)), metric)[0]
    var_seeds = float(per_seed.var(ddof=1)) if S > 1 else math.nan   # one seed says nothing of the spread
    W = np.random.default_rng(rng_seed).multinomial(N, np.full(N, 1.0 / N), size=n_boot).astype(float)
    v_test = float(_weighted_metric(a, y, W, metric).mean(1).var(ddof=1))
    room = (halfwidth / z) ** 2 - v_test
    if room <= 0:
        needed = math.inf
    elif var_seeds != var_seeds:
        needed = math.nan
    else:
        needed = max(1, math.ceil(var_seeds / room))
    return {"seeds": S, "sd_seeds": math.sqrt(var_seeds), "halfwidth_test": z * math.sqrt(v_test),
            "halfwidth_at_seeds": z * math.sqrt(var_seeds / S + v_test), "seeds_needed": needed,
            "why_none": "test set" if needed == math.inf else "one seed" if needed != needed else "",
            "test_needed": math.ceil(N * v_test * (z / halfwidth) ** 2)}


def seeds_table(budgets: Mapping[str, Mapping[str, dict]], halfwidth: float) -> str:
    """A line saying what it is, then a markdown table of seeds_needed per task and method ({task: {method:
    budget}}), methods in Table 2's order; empty without budgets."""
    if not any(budgets.values()):
        return ""
    lines = [f"Seeds an interval of +-{halfwidth:g} points needs at this test set (metrics.seeds_needed: half-width "
             "z sqrt(sd^2 / S + the test set's variance)):", "", f"| task | method | seeds' sample sd | test set's own half-width | half-width at these seeds | "
             f"seeds for +-{halfwidth:g} |", "|---|---|---|---|---|---|"]
    order = list(METHOD_LABELS)
    for t, per_method in budgets.items():
        for m, b in sorted(per_method.items(), key=lambda mb: order.index(mb[0]) if mb[0] in order else len(order)):
            need = {"test set": f"none suffices: the test set alone is wider (needs {b['test_needed']} sentences)",
                    "one seed": "unknown (one seed)"}.get(b["why_none"], str(b["seeds_needed"]))
            lines.append(f"| {TASK_LABELS.get(t, t)} | {METHOD_LABELS.get(m, m)} | {b['sd_seeds']:.1f} | "
                         f"{b['halfwidth_test']:.1f} | {b['halfwidth_at_seeds']:.1f} ({b['seeds']} seeds) | {need} |")
    return "\n".join(lines)
