"""The LM measurements behind `ntkcheck lm ...`, as a Python API writing to the run store.

Every function takes an LMConfig (plus its own options), writes
DIR/<command>_<task>_k<k>_<model>/ (result.json in the one result contract of
ntkcheck.result, kind "lm"; measurements.csv; table.md; details.json; plots)
atomically, resumes from finished points, and returns its result dict (with the
Result under "result"). Numbers the papers make no claim about are plain
measurements (predicted null), each with its CI over seeds where there are seeds.

- kernel_cmd:   K(train, train), K(dev, train), K(test, train) of each kind (cached, see experiment.py)
- solve_cmd:    kernel regression chosen on dev + zero-shot, [KV] Table 2 layout
- finetune_cmd: prompt-based SGD / Adam fine-tuning ([KV] App. A.3)
- behavior_cmd: linearized-model accuracy (Table 5), kernel distance before/after FT (Table 6),
                output derivative chi (Table 8)
- spectrum_cmd: Gram eigenvalues on 100 samples, beta from log(lam_k/lam_1) = -2 beta log k ([ES] 7.1, A.3)
- taskvec_cmd:  task vectors tau_t = theta_t - theta_PT, cosine heatmap, addition and negation ([ES] 7.2)
"""
from __future__ import annotations

import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ntkcheck.errors import UserError
from ntkcheck.provenance import now_iso, provenance
from ntkcheck.realmodels.experiment import (LMConfig, Session, check_sessions,
                                            iter_sessions, load_bundle, model_slug, validate_lm_config)
from ntkcheck.checks.fit import mean_ci
from ntkcheck.realmodels.metrics import (METHOD_LABELS, TASK_LABELS, bootstrap_stat, mean_std, score, seeds_needed,
                                        seeds_table, selection_table, table2)
from ntkcheck.result import Claim, Result, measurement
from ntkcheck.store import ResultStore, atomic_write_text

#: version of the LM measurements' result contract (part of every result.json)
VERSION = 2


class _Clock:
    """Wall time and start of one command, for its provenance."""

    def __init__(self):
        self.t0, self.started = time.perf_counter(), now_iso()

    def provenance(self, cfg: LMConfig) -> dict:
        return provenance(time.perf_counter() - self.t0, device=cfg.device, started=self.started)


def _seed_measurement(id: str, name: str, values: Sequence[float], source: str = "") -> Claim:
    """A measurement whose value is the mean over seeds, with its t-interval as the CI."""
    m, ci = mean_ci(values)
    return measurement(id, f"{name} (mean over {len(values)} seed{'s' * (len(values) != 1)})", m, ci=ci,
                       source=source)


def _test_measurement(id: str, name: str, rows: Sequence[dict], y_test, metric: str, source: str = "") -> Claim:
    """A measurement whose value is the mean test metric over the seeds' rows, with the bootstrap interval over
    seeds and test sentences that `lm reproduce` gives (metrics.bootstrap_stat; rows carry "test_pred", every
    seed's predictions on the same test sentences); the t-interval over seeds where a seed has no predictions
    (a solve that found no grid point, a fine-tuning point stored before points kept them)."""
    if any(r["test"] != r["test"] or "test_pred" not in r for r in rows):
        return _seed_measurement(id, name, [r["test"] for r in rows], source=source)
    value, ci = bootstrap_stat({"m": [r["test_pred"] for r in rows]}, y_test, metric, lambda v: v["m"])
    n = len(rows)
    return measurement(id, f"{name} (mean over {n} seed{'s' * (n != 1)}; CI over seeds and test sentences)", value,
                       ci=ci, source=source)


def write_lm_result(store: ResultStore, claims: list[Claim], cfg: LMConfig, clock: _Clock,
                    details: dict | None = None) -> Result:
    """result.json (kind "lm") of one LM measurement, and details.json with what the table alone holds."""
    result = Result(store.name, claims, kind="lm", config=asdict(cfg), provenance=clock.provenance(cfg),
                    version=VERSION)
    store.write_result(result)
    if details is not None:
        store.write_json("details.json", details)
    return result


def scalar_columns(rows: Sequence[dict]) -> list[dict]:
    """Rows without their list-valued columns (per-example predictions), for measurements.csv."""
    return [{k: v for k, v in r.items() if not isinstance(v, (list, tuple))} for r in rows]


def _summaries(rows: Sequence[dict], key: str = "test") -> dict:
    out: dict = {}
    for r in rows:
        out.setdefault(r["method"], []).append(r[key])
    return {m: {"mean": mean_std(v)[0], "std": mean_std(v)[1], "per_seed": v} for m, v in out.items()}


# ------------------------------------------------------------------ kernel
def kernel_share(cfg: LMConfig) -> None:
    """A non-zero rank's part of `lm kernel` / `lm solve` under torchrun: every kind's kernel blocks it can
    take (its share first, ntkcheck.distributed), written into the shared kernel cache; rank 0 reads them."""
    for sess in iter_sessions(cfg, "lm_kernel"):
        for kind in cfg.kinds:
            sess.kernel(kind, progress=False)


def kernel_cmd(cfg: LMConfig) -> dict:
    """Compute (or load) every kind's kernel for the config; measurements: shapes, timings and norms."""
    clock = _Clock()
    out = {}
    for sess in iter_sessions(cfg, "lm_kernel"):
        f0 = sess.f0()
        claims = []
        for kind in cfg.kinds:
            K = sess.kernel(kind)
            tr = sess.block(K, sess.splits[0].seed, "train")
            n, C = tr.shape[:2]
            M = tr.reshape(n * C, n * C)
            item = {"seed_group": [sp.seed for sp in sess.splits], "shape": list(K.shape),
                    "train_op_norm": float(torch.linalg.matrix_norm(M, 2)),
                    "train_asymmetry": float((M - M.T).norm() / M.norm().clamp_min(1e-300)),
                    "seconds": sess.meta.get("kernel_seconds", {}).get(kind, 0.0)}
            out.setdefault(kind, []).append(item)
            seed = sess.splits[0].seed
            claims += [measurement(f"{kind}.train_op_norm", f"{kind}: ||K(train, train)||_op, seed {seed}",
                                   item["train_op_norm"]),
                       measurement(f"{kind}.train_asymmetry", f"{kind}: ||K - K^T|| / ||K|| on train, seed {seed}",
                                   item["train_asymmetry"]),
                       measurement(f"{kind}.seconds", f"{kind}: seconds to compute the {K.shape[0]} x "
                                   f"{K.shape[2]} kernel", item["seconds"])]
        write_lm_result(sess.store, claims, cfg, clock,
                        {"kernels": out, "rows": len(sess.rows), "columns": sess.n_cols, "f0_shape": list(f0.shape),
                         "meta": sess.meta, "kernel_dir": str(sess.kernel_dir())})
        _plot_kernel(sess, cfg.kinds)
    return out


def _plot_kernel(sess: Session, kinds: Sequence[str]) -> None:
    from ntkcheck.checks.plots import figure, save_figure

    seed = sess.splits[0].seed
    fig, axes = figure(1, len(kinds), (4 * len(kinds), 3.6))
    for ax, kind in zip(axes[0], kinds):
        K = sess.block(sess.kernel(kind, progress=False), seed, "train")
        n, C = K.shape[:2]
        im = ax.imshow(K.reshape(n * C, n * C).numpy(), cmap="viridis")
        ax.set_title(f"{kind}: K(train, train), seed {seed}", fontsize=8)
        fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    save_figure(fig, sess.store.path("kernels.png"), dpi=100)


# ------------------------------------------------------------------ solve
def solve_cmd(cfg: LMConfig, grid_override: dict | None = None, loss: str = "logistic",
              halfwidth: float = 3.0) -> dict:
    """Kernel regression + zero-shot over the seeds; writes measurements.csv, table.md, result.json.

    loss: "logistic" (kernel logistic regression, [KV] App. A.3) or "ridge" for the symmetric kinds;
    halfwidth: the table ends with the seeds a +-halfwidth interval needs per method (metrics.seeds_needed).
    """
    from ntkcheck.realmodels.solve import solve_session

    clock = _Clock()
    rows, store, meta = [], None, {}
    for sess in iter_sessions(cfg, "lm_solve"):
        rows += solve_session(sess, cfg.kinds, grid_override, loss=loss)
        store, meta, metric = sess.store, sess.meta, sess.task.metric
        y_test = sess.test_labels()
    task = _task_name(cfg)
    summary = _summaries(rows)
    budgets = {}
    for m in summary:
        rs = [r for r in rows if r["method"] == m]
        if all(r["test"] == r["test"] and "test_pred" in r for r in rs):
            budgets[m] = seeds_needed([r["test_pred"] for r in rs], y_test, metric, halfwidth=halfwidth)
    table = "\n\n".join(t for t in (table2({(cfg.k, m): {task: s["per_seed"]} for m, s in summary.items()}),
                                    selection_table(rows), seeds_table({task: budgets}, halfwidth)) if t)
    store.write_measurements(scalar_columns(rows))
    claims = [_test_measurement(f"{task}.{m}.test", f"{TASK_LABELS.get(task, task)} {METHOD_LABELS.get(m, m)} "
                                f"test metric (%)", [r for r in rows if r["method"] == m], y_test, metric,
                                source="[KV] Table 2")
              for m in summary]
    result = write_lm_result(store, claims, cfg, clock, {"loss": loss, "grid": grid_override or "[KV] Table 4",
                                                         "summary": summary, "meta": meta,
                                                         "seeds_needed": budgets})
    atomic_write_text(store.path("table.md"), table + "\n")
    _plot_bars(store.path("accuracy.png"), summary, f"{TASK_LABELS.get(task, task)}, k={cfg.k}")
    return {"summary": summary, "table": table, "rows": rows, "dir": str(store.dir), "result": result}


def _task_name(cfg: LMConfig) -> str:
    from ntkcheck.realmodels.tasks import get_task

    return get_task(cfg.task).name


def _plot_bars(path: Path, summary: dict, title: str) -> None:
    from ntkcheck.checks.plots import figure, save_figure

    names = list(summary)
    fig, axes = figure(1, 1, (1.2 + 1.1 * len(names), 3.2))
    ax = axes[0, 0]
    ax.bar(range(len(names)), [summary[n]["mean"] for n in names], yerr=[summary[n]["std"] for n in names],
           color="tab:blue", alpha=0.8, capsize=3)
    ax.set_xticks(range(len(names)), [METHOD_LABELS.get(n, n) for n in names], rotation=30, fontsize=8)
    ax.set_ylabel("test metric (%)")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    save_figure(fig, path, dpi=100)


# ------------------------------------------------------------------ finetune
def finetune_cmd(cfg: LMConfig, ft) -> dict:
    """Prompt-based fine-tuning grid; per optimizer the dev-selected test metric, mean (std) over seeds."""
    from ntkcheck.realmodels.finetune import run_finetune

    clock = _Clock()
    best, store = {}, None
    for sess in iter_sessions(cfg, "lm_finetune"):
        best.update(run_finetune(sess, ft))
        store, metric = sess.store, sess.task.metric
        y_test = sess.test_labels()
    rows = [dict(v, method=f"ft_{o}") for (o, s), v in sorted(best.items())]
    summary = _summaries(rows)
    task = _task_name(cfg)
    table = table2({(cfg.k, m): {task: s["per_seed"]} for m, s in summary.items()})
    store.write_measurements(scalar_columns(rows), "best.csv")
    claims = [_test_measurement(f"{task}.{m}.test", f"{TASK_LABELS.get(task, task)} {METHOD_LABELS.get(m, m)} "
                                "test metric at the dev-chosen grid point (%)", [r for r in rows if r["method"] == m],
                                y_test, metric, source="[KV] Table 2")
              for m in summary]
    result = write_lm_result(store, claims, cfg, clock, {"finetune": asdict(ft), "summary": summary,
                                                         "best": [{k: v for k, v in r.items() if k != "test_pred"}
                                                                  for r in rows]})
    atomic_write_text(store.path("table.md"), table + "\n")
    return {"summary": summary, "table": table, "best": best, "dir": str(store.dir), "result": result}


# ------------------------------------------------------------------ behavior
def output_derivative(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """chi_i = d CE(f(x_i), y_i) / d f = softmax(f(x_i)) - e_{y_i}  ([KV] Def. 3.1), [N, C]."""
    p = torch.softmax(logits.double(), -1)
    return p - torch.nn.functional.one_hot(y.long(), logits.shape[-1]).double()


def behavior_rows(sess: Session, ft, *, distance_samples: int = 64) -> list[dict]:
    """Fine-tune every split of ``sess`` (the FT grid ``ft``, chosen on dev), then per (optimizer, seed),
    one resumable sweep point each ([KV] Def. 3.2, Tables 5, 6, 8):

    - lin: test metric of f_lin(x) = f(x; theta_PT) + <grad f(x; theta_PT), theta_FT - theta_PT>
      against f(theta_PT) (0-shot) and f(theta_FT) (FT), Table 5;
    - kernel_distance: mean_e |K_FT - K_PT|_e / |K_PT|_e on ``distance_samples`` test inputs, sgd kernel
      for SGD-FT and signgd kernel for Adam-FT, Table 6 (``distance_samples`` 0: not measured, and the rows
      carry no kernel_distance: the signgd kernel at theta_FT is most of an Adam point's time);
    - chi: mean_i ||chi_i||_inf = mean_i (1 - p_{y_i}) at theta_PT over the split's train and dev, Table 8;
    - zero_shot_pred, lin_pred, ft_pred: the test predictions (for bootstrap intervals).

    A point is named by the fine-tuning it measures (optimizer, seed and its data, the dev-chosen lr and batch
    size, the schedule), not by the grid it was chosen from: adding an optimizer or a grid point that the dev
    set does not choose reuses every stored point. Points live in sess.behavior_store(), which `lm behavior` and
    `lm reproduce` share, exact or countsketched where no kernel distance is measured.
    """
    from ntkcheck.checks.sweep import sweep
    from ntkcheck.models.kernels import kernel_distance, linearize
    from ntkcheck.realmodels.finetune import fine_tuned_params, ft_schedule, run_finetune, test_predictions

    ad, task, y = sess.adapter, sess.task, sess.labels
    if ad.num_outputs < 2:
        raise UserError("lm behavior needs a classification output (C >= 2)")
    best = run_finetune(sess, ft)
    f0 = sess.f0()
    f_lin = linearize(ad.f, ad.params)

    def compute(pt):
        opt, seed = pt["optimizer"], pt["seed"]
        b = best[(opt, seed)]
        ix = sess.index[seed]
        theta = ad.merged(fine_tuned_params(sess, b))
        xs, ys = sess.x_rows[ix["test"]], y[ix["test"]]
        lin = ad.batched(lambda xb: f_lin(theta, xb), xs, 8, desc=f"Lin. {opt} seed {seed} (test)")
        ft_pred = test_predictions(sess, b, seed, theta)
        distance = {}
        if distance_samples:
            kind = "sgd" if opt == "sgd" else "signgd"
            xd = xs[:distance_samples]
            K0 = sess.cached(f"dist_{kind}_pt", [sess.rows[i] for i in ix["test"][:distance_samples]],
                             lambda: sess.kernel_fn(kind)(xd).double().cpu())
            K1 = sess.kernel_fn(kind)(xd, params=theta).double().cpu()
            distance = {"kernel": kind, "kernel_distance": kernel_distance(K0, K1, eps=1e-12),
                        "kernel_distance_fro": kernel_distance(K0, K1, reduction="frobenius")}
        chi_set = ix["train"] + ix["dev"]
        chi = output_derivative(f0[chi_set], y[chi_set]).abs().amax(-1)
        zs, ln = score(f0[ix["test"]], ys.numpy(), task.metric), score(lin, ys.numpy(), task.metric)
        return {"zero_shot": zs, "lin": ln, "ft": b["test"], "lin_gain_fraction": _gain(zs, ln, b["test"]),
                **distance, "chi_mean": float(chi.mean()), "chi_max": float(chi.max()), "lr": b["lr"],
                "batch_size": b["batch_size"], "zero_shot_pred": f0[ix["test"]].argmax(-1).tolist(),
                "lin_pred": lin.argmax(-1).tolist(), "ft_pred": ft_pred}

    steps, every = ft_schedule(sess, ft)
    store = sess.behavior_store()   # shared with `lm behavior`; a point without a kernel distance reads no kernel
    if distance_samples:   # reads the kernel, so bound to its settings
        store.bind({"behavior": sess.point_fields(), "distance_samples": distance_samples}, version=2,
                   formerly=[{"behavior": sess.formerly(sess.point_fields()), "distance_samples": distance_samples}])
    else:
        store.bind({"behavior": sess.finetune_fields(), "distance_samples": 0}, version=2,
                   formerly=[{"behavior": f, "distance_samples": 0} for f in sess.former_finetune_fields()])
    points = [{"optimizer": o, "seed": s, "data": sess.seed_data(s), "lr": best[(o, s)]["lr"],
               "batch_size": best[(o, s)]["batch_size"], "steps": steps, "every": every} for (o, s) in sorted(best)]
    return sweep(store, points, compute, desc=f"behavior {task.name}")


def behavior_cmd(cfg: LMConfig, ft, *, distance_samples: int = 64, halfwidth: float = 3.0) -> dict:
    """Kernel behavior after fine-tuning (behavior_rows), summarized over seeds per optimizer.

    The test metrics of zero-shot, Lin. and FT are measurements with the bootstrap interval over seeds and test
    sentences (_test_measurement), and the table says how many seeds an interval of +-``halfwidth`` points needs
    for each (metrics.seeds_needed); the gain share, kernel distance and chi carry the t-interval over seeds.
    """
    clock = _Clock()
    rows, store = [], None
    for sess in iter_sessions(cfg, "lm_behavior"):
        store, metric = sess.store, sess.task.metric
        y_test = sess.test_labels()
        rows += behavior_rows(sess, ft, distance_samples=distance_samples)
    summary, claims, budgets = {}, [], {}
    tested = {"zero_shot": ("zero-shot test metric (%)", "[KV] Table 5"),
              "lin": ("linearized model's test metric (%)", "[KV] Table 5"),
              "ft": ("fine-tuned test metric (%)", "[KV] Table 5")}
    what = {"lin_gain_fraction": ("share of FT's gain the linearized model recovers", "[KV] Table 1"),
            "kernel_distance": ("element-wise kernel distance K_PT -> K_FT", "[KV] Table 6"),
            "chi_mean": ("mean output derivative chi at theta_PT", "[KV] Table 8")}
    for opt in sorted({r["optimizer"] for r in rows}):
        sel = [r for r in rows if r["optimizer"] == opt]
        label = "SGD-FT" if opt == "sgd" else "Adam-FT"
        cols = [c for c in (*tested, *what) if all(c in r for r in sel)]   # no distance at --distance-samples 0
        summary[opt] = {c: dict(zip(("mean", "std"), mean_std([r[c] for r in sel]))) for c in cols}
        for c, (text, src) in tested.items():   # a point stored before points kept predictions has none
            claims.append(_test_measurement(f"{opt}.{c}", f"{label}: {text}",
                                            [dict({"test": r[c]}, **({"test_pred": r[f"{c}_pred"]}
                                                                     if f"{c}_pred" in r else {})) for r in sel],
                                            y_test, metric, source=src))
            if all(f"{c}_pred" in r for r in sel):
                budgets[f"{c}_{opt}" if c != "zero_shot" else c] = seeds_needed(
                    [r[f"{c}_pred"] for r in sel], y_test, metric, halfwidth=halfwidth)
        claims += [_seed_measurement(f"{opt}.{c}", f"{label}: {text}", [r[c] for r in sel], source=src)
                   for c, (text, src) in what.items() if c in cols]
    store.write_measurements(scalar_columns(rows))
    table = "\n\n".join(t for t in (_behavior_table(summary, cfg), seeds_table({_task_name(cfg): budgets}, halfwidth))
                          if t)
    result = write_lm_result(store, claims, cfg, clock, {"finetune": asdict(ft), "summary": summary,
                                                         "seeds_needed": budgets})
    atomic_write_text(store.path("table.md"), table + "\n")
    return {"summary": summary, "rows": rows, "table": table, "dir": str(store.dir), "result": result}


def _gain(pt: float, lin: float, ft: float) -> float:
    """(lin - pt) / (ft - pt): the share of the FT gain the linearized model recovers ([KV] Table 1 criterion)."""
    return float("nan") if ft == pt else (lin - pt) / (ft - pt)


def _behavior_table(summary: dict, cfg: LMConfig) -> str:
    lines = [f"| k={cfg.k}, {cfg.task} | 0-shot | Lin. | FT | Lin. gain share | kernel dist. | chi |",
             "|---|---|---|---|---|---|---|"]
    for opt, s in summary.items():
        cells = [f"{s[c]['mean']:.{2 if c in ('lin_gain_fraction', 'kernel_distance', 'chi_mean') else 1}f} "
                 f"({s[c]['std']:.2f})" if c in s else "not measured"
                 for c in ("zero_shot", "lin", "ft", "lin_gain_fraction", "kernel_distance", "chi_mean")]
        lines.append(f"| {opt.upper() if opt == 'sgd' else 'Adam'}-FT | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ------------------------------------------------------------------ spectrum
def spectrum_fit(sess: Session, train: Sequence, seed: int, *, samples: int = 100, kind: str = "sgd",
                 reduce: str = "flatten", k_min: int = 1, k_max: int | None = None) -> tuple[dict, np.ndarray]:
    """([ES] App. A.3) ``samples`` training inputs drawn by RandomState(seed), their Gram matrix G at theta_PT
    (cached), its eigenvalues lam_1 >= lam_2 >= ..., and beta from least squares of
    log(lam_k / lam_1) = -2 beta log k; returns (fit row, eigenvalues descending)."""
    from ntkcheck.theory.early_stopping import fit_beta

    pick = np.random.RandomState(seed).permutation(len(train))[:samples]
    x = sess.adapter.encode([train[i] for i in pick])
    K = sess.cached(f"spectrum_{kind}", [train[i] for i in pick],
                    lambda: sess.kernel_fn(kind)(x).double().cpu())
    n, C = K.shape[:2]
    G = K.reshape(n * C, n * C) if reduce == "flatten" else torch.einsum("iaja->ij", K)
    lam = np.sort(np.linalg.eigvalsh(0.5 * (G + G.T).numpy()))[::-1]
    fit = fit_beta(lam, k_min=k_min, k_max=k_max)
    return ({"seed": seed, "beta": fit.beta, "intercept": fit.intercept, "k_min": fit.k_min, "k_max": fit.k_max,
             "lam_1": float(lam[0]), "n_eigs": int(len(lam)), "n_positive": int((lam > 0).sum())}, lam)


def spectrum_cmd(cfg: LMConfig, *, samples: int = 100, reduce: str = "flatten", kind: str = "sgd",
                 k_min: int = 1, k_max: int | None = None) -> dict:
    """[ES] Sec. 7.1 / App. A.3: eigenvalues of the Gram matrix of ``samples`` training inputs at theta_PT and
    beta from least squares of log(lam_k / lam_1) on log k (slope -2 beta), per seed (a new sample per seed).

    reduce: "flatten" uses the [N C, N C] kernel, "trace" the [N, N] kernel sum_a K[:, a, :, a].
    """
    from ntkcheck.checks.plots import loglog_panels
    from ntkcheck.realmodels.data import load_task
    from ntkcheck.realmodels.experiment import refuse_sketched_spectrum, resolve_task

    if reduce not in ("flatten", "trace"):
        raise UserError(f"--reduce {reduce!r}: expected flatten or trace")
    refuse_sketched_spectrum(cfg, samples)
    clock = _Clock()
    bundle = load_bundle(cfg)
    rows, series, store = [], [], None
    task = resolve_task(cfg)
    train, _ = load_task(task, cfg.data, holdout=cfg.holdout)
    if samples > len(train):
        raise UserError(f"--samples {samples}: the training set has only {len(train)} examples")
    for sess in iter_sessions(replace(cfg, seeds=cfg.seeds[:1]), "lm_spectrum", bundle=bundle):
        store = sess.store
        for seed in cfg.seeds:
            row, lam = spectrum_fit(sess, train, seed, samples=samples, kind=kind, reduce=reduce,
                                    k_min=k_min, k_max=k_max)
            pos = lam[lam > 0]
            series.append((f"seed {seed}", np.arange(1, len(pos) + 1), pos / pos[0]))
            rows.append(row)
            store.write_measurements([{"seed": seed, "k": i + 1, "lambda": float(v)} for i, v in enumerate(lam)],
                                     f"eigenvalues_seed{seed}.csv")
    betas = [r["beta"] for r in rows]
    summary = {"beta_mean": mean_std(betas)[0], "beta_std": mean_std(betas)[1], "per_seed": betas}
    store.write_measurements(rows)
    loglog_panels(store.path("spectrum.png"), [{"title": f"{task.name}: Gram eigenvalues ({samples} samples, "
                                                         f"beta = {summary['beta_mean']:.3f})",
                                                "series": series, "ylabel": "lambda_k / lambda_1",
                                                "xlabel": "k"}])
    claims = [_seed_measurement(f"{task.name}.beta", f"{task.name}: beta from the {kind} Gram spectrum of {samples} "
                                "samples", betas, source="[ES] Sec. 7.1, eq. 31-32")]
    result = write_lm_result(store, claims, cfg, clock, {"samples": samples, "reduce": reduce, "kind": kind,
                                                         "summary": summary, "fits": rows})
    return {"summary": summary, "rows": rows, "dir": str(store.dir), "result": result}


# ------------------------------------------------------------------ task vectors
def taskvec_cmd(cfg: LMConfig, ft, tasks: Sequence[str], *, scale: float = 1.0) -> dict:
    """[ES] Sec. 7.2: fine-tune each task from the same theta_PT (first seed, best of the FT grid on dev),
    tau_t = theta_t - theta_PT; report cos(tau_s, tau_t), the multitask model theta_PT + scale sum_t tau_t
    (its test metric normalized by each single-task model's) and negation theta_PT - tau_t (metric drop)."""
    if len(tasks) < 2:
        raise UserError("--tasks needs at least two tasks")
    if len(set(tasks)) != len(tasks):
        raise UserError(f"--tasks {','.join(tasks)}: a task is named twice")
    validate_lm_config(cfg, tasks)   # every task's data read before any model is loaded or trained
    clock = _Clock()
    bundle = load_bundle(cfg)
    if bundle[2] == "head":
        raise UserError("lm taskvec needs a prompt mode (mlm or causal): heads differ between tasks")
    seed = cfg.seeds[0]
    configs = {t: replace(cfg, task=t, seeds=(seed,), template=None, label_words=None) for t in tasks}
    check_sessions(list(configs.values()), "lm_taskvec", bundle)   # every task's prompt, before any training
    vectors = task_vectors(configs, ft, seed, bundle, "lm_taskvec", scale=scale)
    names, cos, rows = vectors["tasks"], vectors["cosine"], vectors["rows"]
    store = ResultStore(Path(cfg.out), f"lm_taskvec_{'-'.join(names)}_k{cfg.k}_{model_slug(cfg.model)}")
    store.write_measurements(rows)
    store.write_measurements([{"task": a, **{b: cos[i, j] for j, b in enumerate(names)}}
                              for i, a in enumerate(names)], "cosine.csv")
    _plot_heatmap(store.path("cosine.png"), cos, names)
    src = "[ES] Sec. 7.2"
    claims = [measurement(f"cos.{a}.{b}", f"cos(tau_{a}, tau_{b})", cos[i, j], source=src)
              for i, a in enumerate(names) for j, b in enumerate(names) if i < j]
    for r in rows:
        claims += [measurement(f"{r['task']}.normalized", f"{r['task']}: test metric of theta_PT + {scale:g} sum tau "
                               "over the single-task model's", r["normalized"], source=src),
                   measurement(f"{r['task']}.negated_drop", f"{r['task']}: test metric drop of theta_PT - tau "
                               "against theta_PT (points)", r["pretrained"] - r["negated"], source=src)]
    result = write_lm_result(store, claims, cfg, clock, {"finetune": asdict(ft), "tasks": names, "scale": scale,
                                                         "cosine": cos.tolist(), "rows": rows})
    return {"cosine": cos, "rows": rows, "dir": str(store.dir), "result": result}


def task_vectors(configs: dict, ft, seed: int, bundle, check: str, *, scale: float = 1.0) -> dict:
    """[ES] Sec. 7.2 on ``seed``: per task (``configs``: task -> LMConfig, all on one model ``bundle``) the
    dev-best point of the fine-tuning grid ``ft`` over every optimizer (run_finetune: trained, or loaded when
    the session ``check`` already holds it), tau_t = theta_t - theta_PT, then task_vector_rows.
    Returns {"tasks", "cosine", "rows", "seed"}."""
    from ntkcheck.realmodels.finetune import fine_tuned_params, run_finetune

    sessions, taus, single, theta0 = {}, {}, {}, None
    for c in configs.values():
        sess = next(iter_sessions(c, check, bundle=bundle))
        best = run_finetune(sess, ft, seeds=[seed])
        b = max((v for (o, s), v in best.items() if s == seed), key=lambda v: v["dev"])
        theta = fine_tuned_params(sess, b)
        theta0 = sess.adapter.trainable if theta0 is None else theta0
        taus[sess.task.name] = {k: (theta[k] - theta0[k]).double().cpu() for k in theta0}
        sessions[sess.task.name], single[sess.task.name] = sess, b["test"]
    names, cos, rows = task_vector_rows(sessions, taus, single, theta0, seed, scale=scale)
    return {"tasks": names, "cosine": cos, "rows": rows, "seed": seed}


def task_vector_rows(sessions: dict, taus: dict, single: dict, theta0: dict, seed: int, *,
                     scale: float = 1.0) -> tuple[list[str], np.ndarray, list[dict]]:
    """([ES] Sec. 7.2) Given task vectors tau_t = theta_t - theta_PT (``taus``, per task {name: tensor}), their
    cosine matrix cos(tau_s, tau_t) = <tau_s, tau_t> / (|tau_s| |tau_t|), and per task the test metric of
    theta_PT, of its own fine-tuned model (``single``), of the sum theta_PT + scale sum_t tau_t (and that over
    the single-task metric) and of the negation theta_PT - tau_t; ``sessions`` hold each task's test split of
    ``seed``. Returns (task names, cosines, rows)."""
    from ntkcheck.realmodels.finetune import evaluate

    names = list(taus)
    vec = {t: torch.cat([v.reshape(-1) for v in taus[t].values()]) for t in names}
    cos = np.array([[float(torch.dot(vec[a], vec[b]) / (vec[a].norm() * vec[b].norm()).clamp_min(1e-300))
                     for b in names] for a in names])
    multi = {k: theta0[k] + scale * sum(taus[t][k] for t in names).to(theta0[k]) for k in theta0}
    rows = []
    for t in names:
        sess = sessions[t]
        ix = sess.index[seed]
        xs, ys = sess.x_rows[ix["test"]], sess.labels[ix["test"]]
        neg = {k: theta0[k] - taus[t][k].to(theta0[k]) for k in theta0}
        pt = evaluate(sess.adapter, theta0, xs, ys, sess.task.metric)
        m = evaluate(sess.adapter, multi, xs, ys, sess.task.metric)
        rows.append({"task": t, "pretrained": pt, "single": single[t], "multitask": m,
                     "normalized": m / single[t] if single[t] else float("nan"),
                     "negated": evaluate(sess.adapter, neg, xs, ys, sess.task.metric),
                     "tau_norm": float(vec[t].norm())})
    return names, cos, rows


def _plot_heatmap(path: Path, M: np.ndarray, names: Sequence[str]) -> None:
    from ntkcheck.checks.plots import figure, save_figure

    fig, axes = figure(1, 1, (1.5 + 0.9 * len(names), 1.2 + 0.9 * len(names)))
    ax = axes[0, 0]
    im = ax.imshow(M, cmap="RdBu_r", vmin=-1, vmax=1)
    ax.set_xticks(range(len(names)), names, rotation=30)
    ax.set_yticks(range(len(names)), names)
    for i in range(len(names)):
        for j in range(len(names)):
            ax.text(j, i, f"{M[i, j]:.2f}", ha="center", va="center", fontsize=8)
    ax.set_title("task-vector cosine similarity", fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    save_figure(fig, path, dpi=100)
