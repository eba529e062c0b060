"""The LM measurements behind `ntkcheck lm ...`, as a Python API writing to the run store.

Every function takes an LMConfig (plus its own options), writes under
DIR/<command>/<task>_k<k>/ (result.json, measurements.csv, table.md, plots)
atomically, resumes from finished points, and returns its result dict.

- kernel_cmd:   K(train, train), K(dev, train), K(test, train) of each kind (cached, see experiment.py)
- solve_cmd:    kernel regression chosen on dev + zero-shot, [KV] Table 2 layout
- finetune_cmd: prompt-based SGD / Adam fine-tuning ([KV] App. A.3)
- behavior_cmd: linearized-model accuracy (Table 5), kernel distance before/after FT (Table 6),
                output derivative chi (Table 8)
- spectrum_cmd: Gram eigenvalues on 100 samples, beta from log(lam_k/lam_1) = -2 beta log k ([ES] 7.1, A.3)
- taskvec_cmd:  task vectors tau_t = theta_t - theta_PT, cosine heatmap, addition and negation ([ES] 7.2)
"""
from __future__ import annotations

import json
import math
import platform
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ntkcheck.errors import UserError
from ntkcheck.realmodels.experiment import KINDS, LMConfig, Session, _load_tensor, _save_tensor, iter_sessions, \
    load_bundle
from ntkcheck.realmodels.metrics import TASK_LABELS, mean_std, score, table2


def _provenance(t0: float, cfg: LMConfig) -> dict:
    import ntkcheck

    try:
        import transformers

        tv = transformers.__version__
    except ImportError:  # pragma: no cover - the lm commands need transformers
        tv = None
    return {"ntkcheck": getattr(ntkcheck, "__version__", "?"), "torch": torch.__version__, "transformers": tv,
            "seconds": round(time.perf_counter() - t0, 2), "device": cfg.device, "host": platform.node(),
            "threads": torch.get_num_threads()}


def _summaries(rows: Sequence[dict], key: str = "test") -> dict:
    out: dict = {}
    for r in rows:
        out.setdefault(r["method"], []).append(r[key])
    return {m: {"mean": mean_std(v)[0], "std": mean_std(v)[1], "per_seed": v} for m, v in out.items()}


# ------------------------------------------------------------------ kernel
def kernel_cmd(cfg: LMConfig) -> dict:
    """Compute (or load) every kind's kernel for the config; writes a summary with shapes, timings and norms."""
    t0 = time.perf_counter()
    out = {}
    for sess in iter_sessions(cfg, "lm_kernel"):
        f0 = sess.f0()
        for kind in cfg.kinds:
            K = sess.kernel(kind)
            tr = sess.block(K, sess.splits[0].seed, "train")
            n, C = tr.shape[:2]
            M = tr.reshape(n * C, n * C)
            out.setdefault(kind, []).append({
                "seed_group": [sp.seed for sp in sess.splits], "shape": list(K.shape),
                "train_op_norm": float(torch.linalg.matrix_norm(M, 2)),
                "train_asymmetry": float((M - M.T).norm() / M.norm().clamp_min(1e-300)),
                "seconds": sess.meta.get("kernel_seconds", {}).get(kind, 0.0)})
        sess.store.write_json("result.json", {"command": "lm kernel", "config": asdict(cfg), "kernels": out,
                                              "rows": len(sess.rows), "columns": sess.n_cols,
                                              "f0_shape": list(f0.shape), "meta": sess.meta,
                                              "kernel_dir": str(sess.kernel_dir()),
                                              "provenance": _provenance(t0, cfg)})
        _plot_kernel(sess, cfg.kinds)
    return out


def _plot_kernel(sess: Session, kinds: Sequence[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    seed = sess.splits[0].seed
    fig, axes = plt.subplots(1, len(kinds), figsize=(4 * len(kinds), 3.6), squeeze=False)
    for ax, kind in zip(axes[0], kinds):
        K = sess.block(sess.kernel(kind, progress=False), seed, "train")
        n, C = K.shape[:2]
        im = ax.imshow(K.reshape(n * C, n * C).numpy(), cmap="viridis")
        ax.set_title(f"{kind}: K(train, train), seed {seed}", fontsize=8)
        fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    path = sess.store.path("kernels.png")
    tmp = path.with_name(".kernels.tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(path)


# ------------------------------------------------------------------ solve
def solve_cmd(cfg: LMConfig, grid_override: dict | None = None, loss: str = "logistic") -> dict:
    """Kernel regression + zero-shot over the seeds; writes measurements.csv, table.md, result.json.

    loss: "logistic" (kernel logistic regression, [KV] App. A.3) or "ridge" for the symmetric kinds.
    """
    from ntkcheck.realmodels.solve import solve_session

    t0 = time.perf_counter()
    rows, store, meta = [], None, {}
    for sess in iter_sessions(cfg, "lm_solve"):
        rows += solve_session(sess, cfg.kinds, grid_override, loss=loss)
        store, meta = sess.store, sess.meta
    task = _task_name(cfg)
    summary = _summaries(rows)
    res = {(cfg.k, m): {task: s["per_seed"]} for m, s in summary.items()}
    table = table2(res)
    store.write_measurements(rows)
    store.write_json("result.json", {"command": "lm solve", "config": asdict(cfg), "loss": loss, "summary": summary,
                                     "meta": meta, "provenance": _provenance(t0, cfg)})
    from ntkcheck.store import atomic_write_text

    atomic_write_text(store.path("table.md"), table + "\n")
    _plot_bars(store.path("accuracy.png"), summary, f"{TASK_LABELS.get(task, task)}, k={cfg.k}")
    return {"summary": summary, "table": table, "rows": rows, "dir": str(store.dir)}


def _task_name(cfg: LMConfig) -> str:
    from ntkcheck.realmodels.tasks import get_task

    return get_task(cfg.task).name


def _plot_bars(path: Path, summary: dict, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ntkcheck.realmodels.metrics import METHOD_LABELS

    names = list(summary)
    fig, ax = plt.subplots(figsize=(1.2 + 1.1 * len(names), 3.2))
    ax.bar(range(len(names)), [summary[n]["mean"] for n in names], yerr=[summary[n]["std"] for n in names],
           color="tab:blue", alpha=0.8, capsize=3)
    ax.set_xticks(range(len(names)), [METHOD_LABELS.get(n, n) for n in names], rotation=30, fontsize=8)
    ax.set_ylabel("test metric (%)")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(path)


# ------------------------------------------------------------------ finetune
def finetune_cmd(cfg: LMConfig, ft) -> dict:
    """Prompt-based fine-tuning grid; per optimizer the dev-selected test metric, mean (std) over seeds."""
    from ntkcheck.realmodels.finetune import run_finetune
    from ntkcheck.store import atomic_write_text

    t0 = time.perf_counter()
    best, store = {}, None
    for sess in iter_sessions(cfg, "lm_finetune"):
        best.update(run_finetune(sess, ft))
        store = sess.store
    rows = [dict(v, method=f"ft_{o}") for (o, s), v in sorted(best.items())]
    summary = _summaries(rows)
    table = table2({(cfg.k, m): {_task_name(cfg): s["per_seed"]} for m, s in summary.items()})
    store.write_measurements(rows, "best.csv")
    store.write_json("result.json", {"command": "lm finetune", "config": asdict(cfg), "finetune": asdict(ft),
                                     "summary": summary, "best": rows, "provenance": _provenance(t0, cfg)})
    atomic_write_text(store.path("table.md"), table + "\n")
    return {"summary": summary, "table": table, "best": best, "dir": str(store.dir)}


# ------------------------------------------------------------------ behavior
def output_derivative(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """chi_i = d CE(f(x_i), y_i) / d f = softmax(f(x_i)) - e_{y_i}  ([KV] Def. 3.1), [N, C]."""
    p = torch.softmax(logits.double(), -1)
    return p - torch.nn.functional.one_hot(y.long(), logits.shape[-1]).double()


def behavior_cmd(cfg: LMConfig, ft, *, distance_samples: int = 64) -> dict:
    """Kernel behavior after fine-tuning ([KV] Def. 3.2, Tables 5, 6, 8), per seed and optimizer:

    - lin: test metric of f_lin(x) = f(x; theta_PT) + <grad f(x; theta_PT), theta_FT - theta_PT>
      against f(theta_PT) (0-shot) and f(theta_FT) (FT), Table 5;
    - dist: mean_e |K_FT - K_PT|_e / |K_PT|_e on ``distance_samples`` test inputs, sgd kernel for
      SGD-FT and signgd kernel for Adam-FT, Table 6;
    - chi: mean_i ||chi_i||_inf = mean_i (1 - p_{y_i}) at theta_PT over the split's train and dev, Table 8.
    """
    from ntkcheck.models.kernels import empirical_kernel, kernel_distance, linearize
    from ntkcheck.realmodels.experiment import _dtype
    from ntkcheck.realmodels.finetune import evaluate, load_params, run_finetune

    t0 = time.perf_counter()
    rows, store = [], None
    for sess in iter_sessions(cfg, "lm_behavior"):
        store = sess.store
        ad, task, y = sess.adapter, sess.task, sess.labels
        if ad.num_outputs < 2:
            raise UserError("lm behavior needs a classification output (C >= 2)")
        best = run_finetune(sess, ft)
        f0 = sess.f0()
        f_lin = linearize(ad.f, ad.params)
        for (opt, seed), b in sorted(best.items()):
            ix = sess.index[seed]
            theta = load_params(Path(b["params_path"]), ad.params)
            if theta is None:
                raise UserError(f"fine-tuned parameters {b['params_path']!r} are missing; rerun lm finetune")
            xs, ys = sess.x_rows[ix["test"]], y[ix["test"]]
            with torch.no_grad():
                lin = torch.cat([f_lin(theta, xs[i:i + 8]).cpu() for i in range(0, len(xs), 8)])
            kind = "sgd" if opt == "sgd" else "signgd"
            xd = xs[:distance_samples]
            kw = dict(kind=kind, method=cfg.method, dtype=_dtype(cfg.kernel_dtype), device=ad.device,
                      memory_budget=int(cfg.memory_budget_gb * 2**30))
            cache = sess.kernel_dir() / f"dist_{kind}_pt_{len(xd)}.pt"
            K0 = _load_tensor(cache)
            if K0 is None:
                K0 = empirical_kernel(ad.f, ad.params, xd, **kw).double().cpu()
                _save_tensor(cache, K0)
            K1 = empirical_kernel(ad.f, theta, xd, **kw).double().cpu()
            chi_set = ix["train"] + ix["dev"]
            chi = output_derivative(f0[chi_set], y[chi_set]).abs().amax(-1)
            rows.append({"seed": seed, "optimizer": opt, "zero_shot": score(f0[ix["test"]], ys.numpy(), task.metric),
                         "lin": score(lin, ys.numpy(), task.metric), "ft": b["test"],
                         "lin_gain_fraction": _gain(score(f0[ix["test"]], ys.numpy(), task.metric),
                                                    score(lin, ys.numpy(), task.metric), b["test"]),
                         "kernel": kind, "kernel_distance": kernel_distance(K0, K1, eps=1e-12),
                         "kernel_distance_fro": kernel_distance(K0, K1, reduction="frobenius"),
                         "chi_mean": float(chi.mean()), "chi_max": float(chi.max())})
    summary = {}
    for opt in sorted({r["optimizer"] for r in rows}):
        sel = [r for r in rows if r["optimizer"] == opt]
        summary[opt] = {c: dict(zip(("mean", "std"), mean_std([r[c] for r in sel])))
                        for c in ("zero_shot", "lin", "ft", "lin_gain_fraction", "kernel_distance", "chi_mean")}
    store.write_measurements(rows)
    store.write_json("result.json", {"command": "lm behavior", "config": asdict(cfg), "finetune": asdict(ft),
                                     "summary": summary, "provenance": _provenance(t0, cfg)})
    from ntkcheck.store import atomic_write_text

    atomic_write_text(store.path("table.md"), _behavior_table(summary, cfg) + "\n")
    return {"summary": summary, "rows": rows, "table": _behavior_table(summary, cfg), "dir": str(store.dir)}


def _gain(pt: float, lin: float, ft: float) -> float:
    """(lin - pt) / (ft - pt): the share of the FT gain the linearized model recovers ([KV] Table 1 criterion)."""
    return float("nan") if ft == pt else (lin - pt) / (ft - pt)


def _behavior_table(summary: dict, cfg: LMConfig) -> str:
    lines = [f"| k={cfg.k}, {cfg.task} | 0-shot | Lin. | FT | Lin. gain share | kernel dist. | chi |",
             "|---|---|---|---|---|---|---|"]
    for opt, s in summary.items():
        cells = [f"{s[c]['mean']:.{2 if c in ('lin_gain_fraction', 'kernel_distance', 'chi_mean') else 1}f} "
                 f"({s[c]['std']:.2f})" for c in ("zero_shot", "lin", "ft", "lin_gain_fraction", "kernel_distance",
                                                  "chi_mean")]
        lines.append(f"| {opt.upper() if opt == 'sgd' else 'Adam'}-FT | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ------------------------------------------------------------------ spectrum
def spectrum_cmd(cfg: LMConfig, *, samples: int = 100, reduce: str = "flatten", kind: str = "sgd",
                 k_min: int = 1, k_max: int | None = None) -> dict:
    """[ES] Sec. 7.1 / App. A.3: eigenvalues of the Gram matrix of ``samples`` training inputs at theta_PT and
    beta from least squares of log(lam_k / lam_1) on log k (slope -2 beta), per seed (a new sample per seed).

    reduce: "flatten" uses the [N C, N C] kernel, "trace" the [N, N] kernel sum_a K[:, a, :, a].
    """
    from ntkcheck.checks.plots import loglog_panels
    from ntkcheck.models.kernels import empirical_kernel
    from ntkcheck.realmodels.data import load_task
    from ntkcheck.realmodels.experiment import _dtype, resolve_task
    from ntkcheck.theory.early_stopping import fit_beta

    if reduce not in ("flatten", "trace"):
        raise UserError(f"--reduce {reduce!r}: expected flatten or trace")
    t0 = time.perf_counter()
    bundle = load_bundle(cfg)
    rows, series, store = [], [], None
    task = resolve_task(cfg)
    train, _ = load_task(task, cfg.data, holdout=cfg.holdout)
    if samples > len(train):
        raise UserError(f"--samples {samples}: the training set has only {len(train)} examples")
    for sess in iter_sessions(replace(cfg, seeds=cfg.seeds[:1]), "lm_spectrum", bundle=bundle):
        store = sess.store
        ad = sess.adapter
        for seed in cfg.seeds:
            pick = np.random.RandomState(seed).permutation(len(train))[:samples]
            x = ad.encode([train[i] for i in pick])
            cache = sess.kernel_dir() / f"spectrum_{kind}_{samples}_{seed}.pt"
            K = _load_tensor(cache)
            if K is None:
                K = empirical_kernel(ad.f, ad.params, x, kind=kind, method=cfg.method, dtype=_dtype(cfg.kernel_dtype),
                                     device=ad.device, memory_budget=int(cfg.memory_budget_gb * 2**30))
                K = K.double().cpu()
                _save_tensor(cache, K)
            n, C = K.shape[:2]
            G = K.reshape(n * C, n * C) if reduce == "flatten" else torch.einsum("iaja->ij", K)
            lam = np.sort(np.linalg.eigvalsh(0.5 * (G + G.T).numpy()))[::-1]
            fit = fit_beta(lam, k_min=k_min, k_max=k_max)
            pos = lam[lam > 0]
            series.append((f"seed {seed}", np.arange(1, len(pos) + 1), pos / pos[0]))
            rows.append({"seed": seed, "beta": fit.beta, "intercept": fit.intercept, "k_min": fit.k_min,
                         "k_max": fit.k_max, "lam_1": float(lam[0]), "n_eigs": int(len(lam)),
                         "n_positive": int(len(pos))})
            store.write_measurements([{"seed": seed, "k": i + 1, "lambda": float(v)} for i, v in enumerate(lam)],
                                     f"eigenvalues_seed{seed}.csv")
    betas = [r["beta"] for r in rows]
    summary = {"beta_mean": mean_std(betas)[0], "beta_std": mean_std(betas)[1], "per_seed": betas}
    store.write_measurements(rows)
    loglog_panels(store.path("spectrum.png"), [{"title": f"{task.name}: Gram eigenvalues ({samples} samples, "
                                                         f"beta = {summary['beta_mean']:.3f})",
                                                "series": series, "ylabel": "lambda_k / lambda_1",
                                                "xlabel": "k"}])
    store.write_json("result.json", {"command": "lm spectrum", "config": asdict(cfg), "samples": samples,
                                     "reduce": reduce, "kind": kind, "summary": summary, "fits": rows,
                                     "provenance": _provenance(t0, cfg)})
    return {"summary": summary, "rows": rows, "dir": str(store.dir)}


# ------------------------------------------------------------------ task vectors
def taskvec_cmd(cfg: LMConfig, ft, tasks: Sequence[str], *, scale: float = 1.0) -> dict:
    """[ES] Sec. 7.2: fine-tune each task from the same theta_PT (first seed, best of the FT grid on dev),
    tau_t = theta_t - theta_PT; report cos(tau_s, tau_t), the multitask model theta_PT + scale sum_t tau_t
    (its test metric normalized by each single-task model's) and negation theta_PT - tau_t (metric drop)."""
    from ntkcheck.realmodels.finetune import evaluate, load_params, run_finetune

    if len(tasks) < 2:
        raise UserError("--tasks needs at least two tasks")
    t0 = time.perf_counter()
    bundle = load_bundle(cfg)
    if bundle[2] == "head":
        raise UserError("lm taskvec needs a prompt mode (mlm or causal): heads differ between tasks")
    seed = cfg.seeds[0]
    sessions, taus, single = {}, {}, {}
    theta0 = None
    for t in tasks:
        c = replace(cfg, task=t, seeds=(seed,), template=None, label_words=None)
        sess = next(iter_sessions(c, "lm_taskvec", bundle=bundle))
        best = run_finetune(sess, ft)
        b = max((v for (o, s), v in best.items()), key=lambda v: v["dev"])
        theta = load_params(Path(b["params_path"]), sess.adapter.params)
        theta0 = sess.adapter.params if theta0 is None else theta0
        taus[sess.task.name] = {k: (theta[k] - theta0[k]).double().cpu() for k in theta0}
        sessions[sess.task.name] = sess
        single[sess.task.name] = b["test"]
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
    from ntkcheck.store import CheckStore

    store = CheckStore(Path(cfg.out), "lm_taskvec")
    store.write_measurements(rows)
    store.write_measurements([{"task": a, **{b: cos[i, j] for j, b in enumerate(names)}}
                              for i, a in enumerate(names)], "cosine.csv")
    _plot_heatmap(store.path("cosine.png"), cos, names)
    store.write_json("result.json", {"command": "lm taskvec", "config": asdict(cfg), "finetune": asdict(ft),
                                     "tasks": names, "scale": scale, "cosine": cos.tolist(), "rows": rows,
                                     "provenance": _provenance(t0, cfg)})
    return {"cosine": cos, "rows": rows, "dir": str(store.dir)}


def _plot_heatmap(path: Path, M: np.ndarray, names: Sequence[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(1.5 + 0.9 * len(names), 1.2 + 0.9 * len(names)))
    im = ax.imshow(M, cmap="RdBu_r", vmin=-1, vmax=1)
    ax.set_xticks(range(len(names)), names, rotation=30)
    ax.set_yticks(range(len(names)), names)
    for i in range(len(names)):
        for j in range(len(names)):
            ax.text(j, i, f"{M[i, j]:.2f}", ha="center", va="center", fontsize=8)
    ax.set_title("task-vector cosine similarity", fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(path)
