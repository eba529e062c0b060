"""`ntkcheck lm reproduce`: the papers' language-model results on one model, every task in one result.

Per task (prompt modes: one session, kernels shared by the seeds; head mode: one session per seed):

1. zero-shot f0, K(SGD), K(A-SignGD) (and K(SignGD) when asked) by kernel regression with
   hyperparameters chosen on dev ([KV] Table 2; realmodels.solve; the symmetric kernels by kernel logistic
   regression as [KV] App. A.3 does, or least squares with ``loss="ridge"``);
2. prompt fine-tuning with SGD and Adam over [KV] Table 4's grid, chosen on dev (realmodels.finetune);
3. after each fine-tuning: the linearized model's metric, the kernel distance K_PT -> K_FT and chi
   ([KV] Tables 5, 6, 8; measure.behavior_rows);
4. the Gram spectrum of ``spectrum_samples`` training inputs and its beta ([ES] Sec. 7.1);

across tasks (prompt modes, two tasks or more): task vectors of the first seed's dev-best fine-tuning,
their cosines, addition and negation ([ES] Sec. 7.2); with ``--lora R``: LoRA-FT with SGD and Adam over
[KV] Table 4's LoRA grid and K_LoRA(SGD), beside FT and K(SGD) ([KV] Table 11).

Claims, where the papers make them, use [KV]'s own criteria (Table 1, "selected manually for ease of
presentation", so they are thresholds of a summary, not theorems) and hold only when the whole bootstrap
interval over seeds and test sentences (metrics.bootstrap_stat) lies in the band:

- kernel regression beats zero-shot: mean K(SGD) - mean f0 > 0 points ([KV] Table 2);
- the eNTK solves the task: mean K(SGD) / mean SGD-FT >= 0.9 and mean K(A-SignGD) / mean Adam-FT >= 0.9
  ([KV] Table 1; Sec. 6 asks for "within 10%"), prompt modes only: [KV] Sec. 5 predicts the kernel view
  for prompt-based FT, and standard FT with a new head (head mode) is reported without a prediction;
- linearization: (Lin - f0) / (FT - f0) >= 0.5 per optimizer ([KV] Table 1's Linearization criterion;
  undefined, and reported so, when FT is no better than f0),
  reported beside the kernel distance whose fixed-features criterion is distance < 2.0 ([KV] Table 1);
- beta-hat lies in [0.51, 0.62], the range of [ES] Sec. 7.1's six tasks (eq. 29 assumes beta > 1/2);
- LoRA ([KV] Sec. 7, Table 11): mean LoRA-SGD-FT / mean SGD-FT >= 0.9, and K_LoRA(SGD) / K(SGD) within
  0.1 of 1 (Table 11's comparison: K_LoRA sums over the adapted layers only, K over every parameter).

A claim whose bootstrap has too few finite replicates for an interval is inconclusive.

A claim that fails is reported as failing. Everything is resumable: every stage is a sweep point or a
cached kernel of the task's session store.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Sequence

import numpy as np

from ntkcheck.errors import UserError
from ntkcheck.log import note
from ntkcheck.realmodels.experiment import (LMConfig, check_sessions, iter_sessions, load_bundle,
                                            refuse_sketched_spectrum, resolve_task, result_name, validate_lm_config)
from ntkcheck.realmodels.measure import scalar_columns
from ntkcheck.realmodels.metrics import (METHOD_LABELS, TASK_LABELS, bootstrap_stat, seeds_needed, seeds_table,
                                         selection_table, table2)
from ntkcheck.result import Claim, claim, measurement
from ntkcheck.store import ResultStore, atomic_write_text

#: [KV] Table 1 criteria: the kernel analog reaches 90% of FT; Lin. recovers 50% of FT's gain; distance < 2
SOLVES_RATIO, LIN_GAIN, FIXED_FEATURES = 0.9, 0.5, 2.0
#: [ES] Sec. 7.1: beta of the six tasks measured there lies in [0.51, 0.62]
BETA_RANGE = (0.51, 0.62)
#: [KV] Table 11 / Theorem 7.2: K_LoRA(SGD) and K(SGD) reach the same metric (within 10%)
LORA_KERNEL_TOL = 0.1


@dataclass(frozen=True)
class ReproduceOptions:
    """What `lm reproduce` runs besides the kernels (the LMConfig says model, data, seeds, kinds)."""

    tasks: tuple[str, ...]
    finetune: object = None            # FTConfig of full fine-tuning; None: kernels and spectrum only
    lora_finetune: object = None       # FTConfig of LoRA fine-tuning (with cfg.lora_rank)
    spectrum_samples: int = 100
    distance_samples: int = 64
    task_vectors: bool = True
    loss: str = "logistic"             # solver of the sgd/signgd kernels (solve.solve_session)
    regs: tuple[float, ...] | None = None   # the solvers' ridge grid (--regs); None: [KV] Table 4's
    halfwidth: float = 3.0             # the interval half-width (points) whose seed count the table states


def lora_grid(ft):
    """[KV] Table 4's LoRA grid (batch sizes {4, 16}; SGD lr {1e-4, 1e-3, 1e-2}; Adam lr {1e-5, 4e-5,
    4e-4}) with the steps of the full fine-tuning ``ft``."""
    from ntkcheck.realmodels.finetune import FTConfig

    return FTConfig(optimizers=ft.optimizers, lrs_sgd=(1e-4, 1e-3, 1e-2), lrs_adam=(1e-5, 4e-5, 4e-4),
                    batch_sizes=(4, 16), steps=ft.steps, eval_every=ft.eval_every)


def reproduce(cfg: LMConfig, opts: ReproduceOptions) -> dict:
    """Run every stage of the module docstring for each task of ``opts``; write DIR/lm_reproduce_<tasks>_k<k>_
    <model>/ (result.json in the one result contract, table.md, measurements.csv, plots) and DIR/report.md."""
    from ntkcheck.realmodels.data import load_task
    from ntkcheck.realmodels.measure import _Clock, write_lm_result
    from ntkcheck.report import write_report

    tasks = tuple(opts.tasks)
    if not tasks:
        raise UserError("--tasks needs at least one task")
    if len(set(tasks)) != len(tasks):
        raise UserError(f"--tasks {','.join(tasks)}: a task is named twice")
    if cfg.lora_rank is not None and opts.finetune is None:
        raise UserError("--lora compares LoRA-FT with FT: drop --no-finetune")
    if len(tasks) > 1 and (cfg.template or cfg.label_words):
        raise UserError("--template / --label-words apply to one task; with several --tasks each uses its own")
    validate_lm_config(replace(cfg, task=tasks[0]), tasks)   # every value and every task's data, up front
    refuse_sketched_spectrum(cfg, opts.spectrum_samples)
    clock = _Clock()
    bundle = load_bundle(replace(cfg, lora_rank=None))
    head = bundle[2] == "head"
    configs = {t: replace(cfg, task=t) for t in tasks}
    check_sessions([v for c in configs.values() for v in _variants(c)], "lm_reproduce", bundle)
    for t, c in configs.items():
        train, _ = load_task(resolve_task(c), cfg.data, holdout=cfg.holdout)
        if opts.spectrum_samples > len(train):
            raise UserError(f"--spectrum-samples {opts.spectrum_samples}: {t} has only {len(train)} training examples")
    per_task = {t: _task_stages(configs[t], bundle, opts) for t in tasks}
    vectors = None
    if opts.task_vectors and opts.finetune is not None and not head and len(tasks) > 1:
        from ntkcheck.realmodels.measure import task_vectors

        vectors = task_vectors({t: _variants(c)[0] for t, c in configs.items()}, opts.finetune, cfg.seeds[0],
                               bundle, "lm_reproduce")
    claims = []
    for t in tasks:
        claims += task_claims(t, per_task[t], judged=not head)
    if vectors is not None:
        claims += _vector_claims(vectors)
    budgets = {t: {m: seeds_needed(p, per_task[t]["y_test"], per_task[t]["metric"], halfwidth=opts.halfwidth)
                   for m, p in per_task[t]["preds"].items()} for t in tasks}
    store = ResultStore(Path(cfg.out), result_name("lm_reproduce", "-".join(tasks), cfg))
    rows = [dict(r, task=t) for t in tasks for r in scalar_columns(per_task[t]["rows"])]
    store.write_measurements(rows)
    details = {"options": {k: (asdict(v) if hasattr(v, "__dataclass_fields__") else v)
                           for k, v in asdict(opts).items()},
               "tasks": {t: dict({k: v for k, v in per_task[t].items() if k not in ("rows", "preds")},
                                 seeds_needed=budgets[t]) for t in tasks},
               "task_vectors": vectors and {k: (v.tolist() if isinstance(v, np.ndarray) else v)
                                            for k, v in vectors.items()}}
    result = write_lm_result(store, claims, cfg, clock, details)
    table = reproduce_table(per_task, cfg.k, sketch_dim=cfg.sketch_dim, loss=opts.loss, budgets=budgets,
                            halfwidth=opts.halfwidth, regs=opts.regs)
    atomic_write_text(store.path("table.md"), table + "\n")
    _plots(store, per_task, vectors)
    report = write_report(cfg.out)
    return {"result": result, "table": table, "per_task": per_task, "vectors": vectors, "dir": str(store.dir),
            "report": str(report)}


def _variants(cfg: LMConfig) -> list[LMConfig]:
    """The full-FT configuration of a task, and its LoRA one when --lora is given."""
    full = replace(cfg, lora_rank=None, lora_alpha=None, lora_targets=None)
    return [full] + ([cfg] if cfg.lora_rank is not None else [])


# ------------------------------------------------------------------ stages of one task
def _task_stages(cfg: LMConfig, bundle, opts: ReproduceOptions) -> dict:
    """Rows and per-method test predictions [S, N] of one task (see the module docstring, steps 1-4). Sessions
    are opened one at a time (prompt modes: one for all seeds; head mode: one per seed) and let go after."""
    from ntkcheck.realmodels.finetune import run_finetune, test_predictions
    from ntkcheck.realmodels.measure import behavior_rows
    from ntkcheck.realmodels.solve import grid_override, solve_session

    rows: list[dict] = []
    preds: dict[str, dict[int, list[int]]] = {}
    behavior: list[dict] = []
    spectrum: list[dict] = []
    info: dict = {}

    def keep(method: str, row: dict, pred) -> None:
        if row.get("test") == row.get("test"):   # a seed whose solve found no grid point (nan) is left out
            preds.setdefault(method, {})[row["seed"]] = list(pred)

    full, *lora = _variants(cfg)
    for sess in iter_sessions(full, "lm_reproduce", bundle=bundle):
        if not info:
            y_test = sess.test_labels()
            info = {"task": sess.task.name, "metric": sess.task.metric, "mode": sess.adapter.mode,
                    "y_test": y_test}
        for r in solve_session(sess, cfg.kinds, grid_override(opts.regs), loss=opts.loss):
            rows.append(dict(r, stage="kernel"))
            keep(r["method"], r, r["test_pred"])
        if opts.finetune is not None:
            for r in behavior_rows(sess, opts.finetune, distance_samples=opts.distance_samples):
                behavior.append(r)
                rows.append(dict(r, stage="finetune", method=f"ft_{r['optimizer']}", test=r["ft"]))
                keep(f"ft_{r['optimizer']}", rows[-1], r["ft_pred"])
                rows.append(dict(r, stage="linearized", method=f"lin_{r['optimizer']}", test=r["lin"]))
                keep(f"lin_{r['optimizer']}", rows[-1], r["lin_pred"])
        if opts.spectrum_samples:   # head mode: each seed's Gram matrix with its own probed head
            spectrum += _spectrum(sess, cfg, opts, [sp.seed for sp in sess.splits])
        del sess
    for variant in lora:
        for sess in iter_sessions(variant, "lm_reproduce", bundle=bundle):
            for r in solve_session(sess, ["sgd"], grid_override(opts.regs), loss=opts.loss):
                if r["method"] == "sgd":
                    rows.append(dict(r, stage="lora_kernel", method="lora_sgd"))
                    keep("lora_sgd", r, r["test_pred"])
            best = run_finetune(sess, opts.lora_finetune or lora_grid(opts.finetune))
            for (opt, seed), b in sorted(best.items()):
                pred = test_predictions(sess, b, seed)
                rows.append({"stage": "lora_finetune", "method": f"lora_ft_{opt}", "seed": seed, "dev": b["dev"],
                             "test": b["test"], "lr": b["lr"], "batch_size": b["batch_size"]})
                keep(f"lora_ft_{opt}", rows[-1], pred)
            del sess
    seeds = list(cfg.seeds)
    stacked = {m: np.array([v[s] for s in seeds]) for m, v in preds.items() if all(s in v for s in seeds)}
    return dict(info, seeds=seeds, n_test=int(len(info["y_test"])), y_test=info["y_test"].tolist(), rows=rows,
                preds=stacked, behavior=scalar_columns(behavior), spectrum=spectrum)


def _spectrum(sess, cfg: LMConfig, opts: ReproduceOptions, seeds: Sequence[int]) -> list[dict]:
    """[ES] Sec. 7.1 per seed (measure.spectrum_fit, cached), with the eigenvalues for the plot."""
    from ntkcheck.realmodels.data import load_task
    from ntkcheck.realmodels.measure import spectrum_fit

    train, _ = load_task(sess.task, cfg.data, holdout=cfg.holdout)
    out = []
    for seed in seeds:
        row, lam = spectrum_fit(sess, train, seed, samples=opts.spectrum_samples)
        out.append(dict(row, eigenvalues=lam.tolist()))
    return out


# ------------------------------------------------------------------ claims
def _ci_claim(id: str, name: str, data: dict, methods: Sequence[str], stat, *, relation: str | None,
              predicted: float | None = None, tolerance: float = 0.0, source: str = "") -> Claim | None:
    """A claim (or, with relation None, a measurement) on stat(mean metric per method) with its bootstrap
    interval over seeds and test sentences; None when a method was not run."""
    if any(m not in data["preds"] for m in methods):
        return None
    value, ci = bootstrap_stat({m: data["preds"][m] for m in methods}, data["y_test"], data["metric"], stat)
    if value != value:   # a ratio over no gain (FT no better than f0) or a zero metric: nothing to judge
        return measurement(id, f"{name}: undefined on these numbers (its denominator is not positive)", value,
                           source=source)
    if relation is None:
        return measurement(id, name, value, ci=ci, source=source)
    if any(c != c for c in ci):   # too few finite replicates: the data cannot tell, whatever the point value
        ci = (-math.inf, math.inf)
    return claim(id, name, predicted=predicted, measured=value, relation=relation, tolerance=tolerance, ci=ci,
                 source=source)


def task_claims(task: str, data: dict, *, judged: bool = True) -> list[Claim]:
    """The claims and measurements of one task's stages (see the module docstring)."""
    from ntkcheck.checks.fit import mean_ci

    label = TASK_LABELS.get(task, task)
    zs = "zero_shot" if "zero_shot" in data["preds"] else "linear_probe"
    out: list[Claim | None] = []
    for m in data["preds"]:
        out.append(_ci_claim(f"{task}.{m}.test", f"{label} {METHOD_LABELS.get(m, m)}: test metric (%)", data,
                             [m], lambda v, m=m: v[m], relation=None, source="[KV] Table 2"))
    rel = (lambda r: r) if judged else (lambda r: None)
    out.append(_ci_claim(f"{task}.kernel_beats_zero_shot", f"{label}: K(SGD) - {METHOD_LABELS[zs]} (points)", data,
                         ["sgd", zs], lambda v: v["sgd"] - v[zs], relation=rel(">"), predicted=0.0,
                         source="[KV] Table 2"))
    for kernel, ft in (("sgd", "ft_sgd"), ("asym_signgd", "ft_adam"), ("signgd", "ft_adam")):
        out.append(_ci_claim(f"{task}.{kernel}_solves", f"{label}: {METHOD_LABELS[kernel]} / {METHOD_LABELS[ft]}",
                             data, [kernel, ft], lambda v, a=kernel, b=ft: v[a] / v[b] if v[b] else float("nan"),
                             relation=rel(">=") if kernel != "signgd" else None, predicted=SOLVES_RATIO,
                             source="[KV] Table 1 (eNTK solves the task), Sec. 6"))
    for opt in ("sgd", "adam"):
        ft, lin = f"ft_{opt}", f"lin_{opt}"
        out.append(_ci_claim(f"{task}.{opt}_linearization", f"{label}: (Lin. - f0) / (FT - f0) after "
                             f"{METHOD_LABELS[ft]}", data, [lin, ft, zs],
                             lambda v, a=lin, b=ft: (v[a] - v[zs]) / (v[b] - v[zs]) if v[b] > v[zs] else float("nan"),
                             relation=rel(">="), predicted=LIN_GAIN, source="[KV] Table 1 (Linearization), Table 5"))
        rows = [r for r in data["behavior"] if r["optimizer"] == opt and "kernel_distance" in r]
        if rows:   # none at --distance-samples 0
            d, ci = mean_ci([r["kernel_distance"] for r in rows])
            name = f"{label}: kernel distance K_PT -> K_FT after {METHOD_LABELS[ft]} (mean over seeds)"
            out.append(claim(f"{task}.{opt}_fixed_features", name, predicted=FIXED_FEATURES, measured=d,
                             relation="<", ci=ci, source="[KV] Table 1 (Fixed Features), Table 6") if judged
                       else measurement(f"{task}.{opt}_fixed_features", name, d, ci=ci, source="[KV] Table 6"))
    chi = {r["seed"]: r["chi_mean"] for r in data["behavior"]}   # at theta_PT: one value per seed
    if chi:
        m, ci = mean_ci(list(chi.values()))
        out.append(measurement(f"{task}.chi", f"{label}: mean ||chi||_inf at theta_PT over train and dev (mean "
                               "over seeds)", m, ci=ci, source="[KV] Table 8"))
    out.append(_ci_claim(f"{task}.adam_minus_sgd_ft", f"{label}: Adam-FT - SGD-FT (points)", data,
                         ["ft_adam", "ft_sgd"], lambda v: v["ft_adam"] - v["ft_sgd"], relation=None,
                         source="[KV] Sec. 6 (within 4 points in prompt mode)"))
    out.append(_ci_claim(f"{task}.lora_ft_vs_ft", f"{label}: SGD-LoRA-FT / SGD-FT", data, ["lora_ft_sgd", "ft_sgd"],
                         lambda v: v["lora_ft_sgd"] / v["ft_sgd"] if v["ft_sgd"] else float("nan"),
                         relation=rel(">="), predicted=SOLVES_RATIO, source="[KV] Table 11"))
    out.append(_ci_claim(f"{task}.lora_kernel_vs_kernel", f"{label}: K_LoRA(SGD) / K(SGD)", data,
                         ["lora_sgd", "sgd"], lambda v: v["lora_sgd"] / v["sgd"] if v["sgd"] else float("nan"),
                         relation=rel("=="), predicted=1.0, tolerance=LORA_KERNEL_TOL,
                         source="[KV] Table 11 (K_LoRA over the adapted layers against K over all parameters, "
                                "as the table compares them; Theorem 7.2 concerns the adapted weights alone)"))
    if data["spectrum"]:
        betas = [r["beta"] for r in data["spectrum"]]
        b, ci = mean_ci(betas)
        lo, hi = BETA_RANGE
        out.append(claim(f"{task}.beta", f"{label}: beta of the Gram spectrum of {data['spectrum'][0]['n_eigs']} "
                         "eigenvalues (mean over seeds)", predicted=(lo + hi) / 2, measured=b, relation="==",
                         tolerance=(hi - lo) / 2, ci=ci, source="[ES] Sec. 7.1 (range of its six tasks)"))
    return [c for c in out if c is not None]


def _vector_claims(v: dict) -> list[Claim]:
    names, cos = v["tasks"], v["cosine"]
    src = "[ES] Sec. 7.2"
    out = [measurement(f"taskvec.cos.{a}.{b}", f"cos(tau_{a}, tau_{b})", float(cos[i, j]), source=src)
           for i, a in enumerate(names) for j, b in enumerate(names) if i < j]
    for r in v["rows"]:
        out += [measurement(f"taskvec.{r['task']}.normalized", f"{r['task']}: metric of theta_PT + sum tau over the "
                            "single-task model's", r["normalized"], source=src),
                measurement(f"taskvec.{r['task']}.negated_drop", f"{r['task']}: metric drop of theta_PT - tau (points)",
                            r["pretrained"] - r["negated"], source=src)]
    return out


# ------------------------------------------------------------------ table and plots
def reproduce_table(per_task: dict, k: int, sketch_dim: int | None = None, loss: str = "logistic",
                    budgets: dict | None = None, halfwidth: float = 3.0, regs: tuple[float, ...] | None = None) -> str:
    """[KV] Table 2 layout (mean (std) over seeds) of every method and task, then Lin./distance per task, then
    per task what the dev sets chose among the kernels' grid points (metrics.selection_table), then how many
    seeds an interval of +-``halfwidth`` points needs per method (``budgets``: {task: {method:
    metrics.seeds_needed}}); a line under it says when the kernels were countsketched (--sketch-dim), one when
    the symmetric kernels were solved by least squares (--loss ridge) instead of the paper's logistic loss, and
    one when the ridge grid was not [KV] Table 4's (--regs)."""
    results: dict = {}
    for t, data in per_task.items():
        for r in data["rows"]:
            if "method" in r and "test" in r:
                results.setdefault((k, r["method"]), {}).setdefault(t, []).append(r["test"])
    lines = [table2(results), "", "| task | FT | Lin. gain share | kernel distance | chi | beta |", "|---|---|---|---|---|---|"]
    for t, data in per_task.items():
        beta = np.mean([r["beta"] for r in data["spectrum"]]) if data["spectrum"] else float("nan")
        for opt in ("sgd", "adam"):
            rows = [r for r in data["behavior"] if r["optimizer"] == opt]
            if rows:
                lines.append(f"| {TASK_LABELS.get(t, t)} | {METHOD_LABELS[f'ft_{opt}']} | "
                             f"{np.mean([r['lin_gain_fraction'] for r in rows]):.2f} | "
                             + (f"{np.mean([r['kernel_distance'] for r in rows]):.3f} | "
                                if all("kernel_distance" in r for r in rows) else "not measured | ")
                             + f"{np.mean([r['chi_mean'] for r in rows]):.3f} | {beta:.3f} |")
    for t, data in per_task.items():
        chosen = selection_table([r for r in data["rows"] if r.get("stage") == "kernel"])
        if chosen:
            lines += ["", f"What {TASK_LABELS.get(t, t)}'s dev sets chose:", "", chosen]
    budget_block = seeds_table(budgets or {}, halfwidth)   # empty without budgets
    if budget_block:
        lines += ["", budget_block]
    if loss != "logistic":
        lines += ["", f"K(SGD) and K(SignGD) are solved by {'least squares' if loss == 'ridge' else loss} "
                      f"(--loss {loss}), not [KV] App. A.3's kernel logistic regression."]
    if regs is not None:
        lines += ["", f"The solvers' ridge grid is {', '.join(f'{r:g}' for r in regs)} x ||K_train||_op (--regs), "
                      "not [KV] Table 4's 0, 0.001, 0.01, 0.1, 1."]
    if sketch_dim:
        lines += ["", f"Kernels and kernel distances are countsketched to k = {sketch_dim} buckets plus the smallest "
                      "tensors exactly (--sketch-dim): unbiased estimates of the exact ones."]
    return "\n".join(lines)


def _plots(store: ResultStore, per_task: dict, vectors: dict | None) -> None:
    from ntkcheck.checks.plots import figure, save_figure

    tasks = list(per_task)
    methods = [m for m in METHOD_LABELS if any(m in per_task[t]["preds"] for t in tasks)]
    fig, axes = figure(1, 1, (2 + 1.6 * len(tasks) * max(1, len(methods)) / 3, 3.6))
    ax = axes[0, 0]
    width = 0.8 / max(1, len(methods))
    for j, m in enumerate(methods):
        xs, ys, err = [], [], [[], []]
        for i, t in enumerate(tasks):
            d = per_task[t]
            if m not in d["preds"]:
                continue
            v, (lo, hi) = bootstrap_stat({m: d["preds"][m]}, d["y_test"], d["metric"], lambda s: s[m])
            xs.append(i + (j - (len(methods) - 1) / 2) * width)
            ys.append(v)
            err[0].append(max(0.0, v - lo) if lo == lo else 0.0)
            err[1].append(max(0.0, hi - v) if hi == hi else 0.0)
        ax.bar(xs, ys, width=width, yerr=err, capsize=2, label=METHOD_LABELS.get(m, m))
    ax.set_xticks(range(len(tasks)), [TASK_LABELS.get(t, t) for t in tasks])
    ax.set_ylabel("test metric (%), 95% CI over seeds and test sentences", fontsize=7)
    ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    save_figure(fig, store.path("accuracy.png"), dpi=100)

    with_spec = [t for t in tasks if per_task[t]["spectrum"]]
    if with_spec:
        fig, axes = figure(1, len(with_spec), (3.6 * len(with_spec), 3.2))
        for ax, t in zip(axes[0], with_spec):
            r = per_task[t]["spectrum"][0]
            lam = np.asarray(r["eigenvalues"])
            lam = lam[lam > 0] / lam[0]
            k = np.arange(1, len(lam) + 1)
            ax.loglog(k, lam, "o", ms=2, label=f"seed {r['seed']}")
            ax.loglog(k, np.exp(r["intercept"]) * k ** (-2 * r["beta"]), "--", lw=1,
                      label=f"fit: beta = {r['beta']:.3f}")
            ax.set_title(f"{TASK_LABELS.get(t, t)}: Gram eigenvalues", fontsize=8)
            ax.set_xlabel("k", fontsize=8)
            ax.set_ylabel("lambda_k / lambda_1", fontsize=8)
            ax.legend(fontsize=6)
        fig.tight_layout()
        save_figure(fig, store.path("spectrum.png"), dpi=100)

    with_ft = [t for t in tasks if any("kernel_distance" in r for r in per_task[t]["behavior"])]
    if with_ft:
        fig, axes = figure(1, 1, (2 + 1.2 * len(with_ft), 3.2))
        ax = axes[0, 0]
        for j, opt in enumerate(("sgd", "adam")):
            vals = [np.mean([r["kernel_distance"] for r in per_task[t]["behavior"] if r["optimizer"] == opt
                             and "kernel_distance" in r] or [np.nan])
                    for t in with_ft]
            ax.bar(np.arange(len(with_ft)) + (j - 0.5) * 0.4, vals, width=0.4, label=METHOD_LABELS[f"ft_{opt}"])
        ax.axhline(FIXED_FEATURES, color="k", ls="--", lw=1, label="[KV] Table 1 threshold")
        ax.set_xticks(range(len(with_ft)), [TASK_LABELS.get(t, t) for t in with_ft])
        ax.set_ylabel("kernel distance K_PT -> K_FT", fontsize=8)
        ax.legend(fontsize=6)
        fig.tight_layout()
        save_figure(fig, store.path("kernel_distance.png"), dpi=100)
    if vectors is not None:
        from ntkcheck.realmodels.measure import _plot_heatmap

        _plot_heatmap(store.path("cosine.png"), vectors["cosine"], vectors["tasks"])
