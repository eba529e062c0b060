"""Prompt-based (or head-based) fine-tuning on the k-shot splits: the baseline kernels are judged against.

[KV] App. A.3: cross-entropy on f(params, x) (the label-word logits), SGD or
Adam, no weight decay, learning rate decayed linearly to 0 with no warmup,
T = 32 k C steps with a dev evaluation every 4 k C steps; the checkpoint with
the best dev metric is kept, and (lr, batch size) is chosen on dev per split.
Training is ntkcheck.models.train with a pure optimizer whose rate follows
``optim.linear_decay(T)``:

    eta_t = eta (1 - t / T),   theta_{t+1} = theta_t - eta_t * step(grad L_B(theta_t))

where step is the identity (SGD) or Adam's normalized moment ratio.
Each (optimizer, lr, batch size, seed) is one point of the sweep in the fine-tuning store every `lm` command
shares (experiment.Session.finetune_store);
its best parameters are saved atomically, so an interrupted grid resumes.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import torch

from ntkcheck.errors import UserError
from ntkcheck.models import optim
from ntkcheck.models.training import train as train_loop
from ntkcheck.realmodels.metrics import score
from ntkcheck.seeding import generator
from ntkcheck.store import save_checked_tensor

DEFAULT_LRS = {"sgd": (1e-4, 5e-4, 1e-3, 5e-3, 1e-2), "adam": (1e-5, 2e-5, 5e-5)}  # [KV] Table 4
DEFAULT_BATCH_SIZES = (2, 4, 8)


@dataclass(frozen=True)
class FTConfig:
    """Fine-tuning grid: optimizers, learning rates per optimizer, batch sizes, steps (None = 32kC)."""

    optimizers: tuple[str, ...] = ("sgd", "adam")
    lrs_sgd: tuple[float, ...] = DEFAULT_LRS["sgd"]
    lrs_adam: tuple[float, ...] = DEFAULT_LRS["adam"]
    batch_sizes: tuple[int, ...] = DEFAULT_BATCH_SIZES
    steps: int | None = None
    eval_every: int | None = None

    def lrs(self, opt: str) -> tuple[float, ...]:
        return self.lrs_sgd if opt == "sgd" else self.lrs_adam


def cross_entropy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """L = mean_i -log softmax(f(x_i))_{y_i} (float32), or mean squared error for a scalar output."""
    if logits.shape[-1] == 1:
        return 0.5 * ((logits[:, 0] - y.to(logits.dtype)) ** 2).mean()
    return torch.nn.functional.cross_entropy(logits, y.long())


def fine_tune(adapter, x_train: torch.Tensor, y_train: torch.Tensor, x_dev: torch.Tensor, y_dev: torch.Tensor, *,
              optimizer: str, lr: float, batch_size: int, steps: int, eval_every: int, seed: int,
              metric: str = "acc", params0: Mapping[str, torch.Tensor] | None = None,
              progress=None) -> tuple[dict, dict]:
    """Fine-tune the selected tensors (adapter.select) from ``params0`` (default: pretrained); returns
    (best trainable tensors, log).

    Minibatches: a seeded permutation per epoch (torch.Generator(seed)). The
    log holds the best dev metric, its step (the first of tied evaluations), the dev metric of every
    evaluation as [step, metric] pairs (``dev_curve``: how far the choice stood out), and the final train loss.
    """
    if optimizer not in ("sgd", "adam"):
        raise UserError(f"--optimizers {optimizer!r}: expected sgd or adam")
    if steps <= 0 or batch_size <= 0:
        raise UserError(f"fine-tuning needs positive steps and batch size (got {steps}, {batch_size})")
    dev = adapter.device
    p = {k: v.detach().to(dev) for k, v in adapter.merged(params0 or {}).items()}
    keep = adapter.select
    opt = optim.make(optimizer, lr, schedule=optim.linear_decay(steps))  # linear decay to 0, no warmup
    g = generator(seed)
    y_train = y_train.to(dev)
    n = x_train.shape[0]
    order: list[int] = []

    def batch(t: int):
        nonlocal order
        if len(order) < batch_size:
            order += torch.randperm(n, generator=g).tolist()
        idx, order = order[:batch_size], order[batch_size:]
        return adapter.trim(x_train[idx]).to(dev), y_train[idx]   # right padding no example needs is cut

    best, best_step, best_params = -math.inf, 0, {k: p[k].clone() for k in keep}
    last_loss = float("nan")
    curve: list[list] = []

    def on_step(step) -> None:
        nonlocal best, best_step, best_params, last_loss
        if step.t % eval_every == 0 or step.t == steps:
            with torch.no_grad():
                last_loss = float(cross_entropy(adapter.f(step.params, step.x), step.y))
            m = evaluate(adapter, step.params, x_dev, y_dev, metric)
            curve.append([step.t, m])
            if m > best:
                best, best_step, best_params = m, step.t, {k: step.params[k].clone() for k in keep}
        if progress is not None:
            progress(1)

    train_loop(adapter.f, p, opt, batch, steps, loss=cross_entropy, select=keep, callback=on_step)
    return best_params, {"dev": best, "best_step": best_step, "dev_curve": curve, "final_batch_loss": last_loss}


def evaluate(adapter, params, x: torch.Tensor, y: torch.Tensor, metric: str) -> float:
    """The task metric of f(params, x) (argmax over outputs; negative MSE for a scalar output)."""
    return metric_of(adapter.outputs(x, params), y, metric)


def metric_of(out: torch.Tensor, y: torch.Tensor, metric: str) -> float:
    """The task metric of outputs ``out`` [N, C] against labels ``y``: argmax over C, negative MSE for C = 1."""
    if out.shape[-1] == 1:
        return -float(((out[:, 0].double() - y.double().cpu()) ** 2).mean())
    return score(out, y.cpu().numpy(), metric)


def default_schedule(k: int, num_classes: int) -> tuple[int, int]:
    """(T, eval_every) = (32 k C, 4 k C) of [KV] App. A.3 (C = 1 for regression)."""
    c = max(1, num_classes)
    return 32 * k * c, 4 * k * c


def ft_schedule(session, ft: FTConfig) -> tuple[int, int]:
    """(steps, eval_every) of ``ft`` on ``session``'s split: ft's own, else default_schedule's; evaluation
    never less often than once in the run."""
    steps, every = default_schedule(session.config.k, session.adapter.num_outputs)
    return ft.steps or steps, ft.eval_every or min(every, ft.steps or every)


def save_params(path: Path, params: Mapping[str, torch.Tensor]) -> None:
    """Atomically save a params dict, flattened to one float32 vector, with a checksum
    (store.save_checked_tensor, the format experiment._load_tensor reads)."""
    flat = torch.cat([v.detach().reshape(-1).float().cpu() for v in params.values()])
    save_checked_tensor(path, "t", flat, rows=None)


def load_params(path: Path, like: Mapping[str, torch.Tensor]) -> dict | None:
    """Inverse of save_params, shaped like ``like``; None when absent or corrupt."""
    from ntkcheck.realmodels.experiment import _load_tensor

    flat = _load_tensor(path)
    if flat is None:
        return None
    out, i = {}, 0
    for k, v in like.items():
        out[k] = flat[i:i + v.numel()].reshape(v.shape).to(device=v.device, dtype=v.dtype)
        i += v.numel()
    if i != flat.numel():
        return None
    return out


def run_finetune(session, ft: FTConfig, *, seeds: Sequence[int] | None = None) -> dict:
    """Grid-search fine-tuning on every split of ``session``; returns per-(optimizer, seed) best results.

    Returns {(optimizer, seed): {"lr", "batch_size", "dev", "test", "test_pred", "params_path"}}; every grid
    point is a resumable sweep point of session.finetune_store(), the one every `lm` command shares (its best
    params in params/<point>.pt). ``test_pred``
    holds argmax_c f(theta_FT, x)_c per test example, so the stages after fine-tuning need no second pass over
    the test set (test_predictions).
    """
    from ntkcheck.checks.sweep import sweep
    from ntkcheck.store import point_key

    task, ad = session.task, session.adapter
    steps, every = ft_schedule(session, ft)
    seeds = list(seeds or [sp.seed for sp in session.splits])
    # a point carries its seed's data digest (Session.seed_data): reused by any run holding that seed's data
    points = [{"optimizer": o, "lr": lr, "batch_size": b, "seed": s, "data": session.seed_data(s)}
              for o in ft.optimizers for lr in ft.lrs(o) for b in ft.batch_sizes for s in seeds]
    store = session.finetune_store()
    store.bind({"finetune": session.finetune_fields(), "steps": steps, "every": every},
               formerly=[{"finetune": f, "steps": steps, "every": every} for f in session.former_finetune_fields()])
    pdir = store.points_dir / "params"
    y_all = session.labels

    def compute(pt):
        s = pt["seed"]
        ix = session.index[s]
        xt, yt = session.x_rows[ix["train"]], y_all[ix["train"]]
        xd, yd = session.x_rows[ix["dev"]], y_all[ix["dev"]]
        best, log = fine_tune(ad, xt, yt, xd, yd, optimizer=pt["optimizer"], lr=pt["lr"], batch_size=pt["batch_size"],
                          steps=steps, eval_every=every, seed=s, metric=task.metric)
        save_params(pdir / f"{point_key(pt)}.pt", best)
        out = ad.outputs(session.x_rows[ix["test"]], best)
        return dict(log, test=metric_of(out, y_all[ix["test"]], task.metric), steps=steps,
                    test_pred=out.argmax(-1).tolist())

    rows = sweep(store, points, compute, desc=f"finetune {task.name}")
    keys = ("optimizer", "lr", "batch_size", "seed", "data")
    # a finished point whose parameters file is gone is trained again (a corrupt one is removed when it fails
    # to load, so the next run trains it again)
    lost = [{q: r[q] for q in keys} for r in rows if not (pdir / f"{point_key({q: r[q] for q in keys})}.pt").exists()]
    if lost:
        for pt in lost:
            store.drop_point(pt)
        rows = sweep(store, points, compute, desc=f"finetune {task.name}")
    best: dict = {}
    for r in rows:
        key = (r["optimizer"], r["seed"])
        if key not in best or r["dev"] > best[key]["dev"]:
            best[key] = dict(r, params_path=str(pdir / f"{point_key({q: r[q] for q in keys})}.pt"))
    return best


def fine_tuned_params(session, best: dict) -> dict:
    """theta_FT of one run_finetune result (its trainable parameters, as saved); a one-line error if the file is
    missing or corrupt."""
    theta = load_params(Path(best["params_path"]), session.adapter.trainable)
    if theta is None:
        raise UserError(f"fine-tuned parameters {best['params_path']!r} are missing or corrupt; rerun lm finetune")
    return theta


def test_predictions(session, best: dict, seed: int, params: Mapping[str, torch.Tensor] | None = None) -> list[int]:
    """argmax_c f(theta_FT, x)_c over ``seed``'s test set: stored with the fine-tuning point; a point stored
    before points held them (a resumed older run store) is evaluated again, at ``params`` if given."""
    if "test_pred" in best:
        return list(best["test_pred"])
    theta = params if params is not None else fine_tuned_params(session, best)
    return session.adapter.outputs(session.x_rows[session.index[seed]["test"]], theta).argmax(-1).tolist()
