"""Speed of the model factory's pure apply and of the one training loop, against what they replaced.

Before the factory, checks trained MLPs through their own hand-written forwards (a
loop over the layers' weights with ``layer.mult``, plain autograd, in-place GD
updates), because torch.func.functional_call cost most of a small step. This
benchmark times, in one process and round-robin so load hits every row alike:

  step      one full-batch GD step (forward, backward, update) through
            hand      the old hand-written forward and in-place update (the baseline),
            apply     models.train on model.apply (the pure optimizer allocates new tensors),
            fcall     models.train on torch.func.functional_call(model, ...);
  forward   the forward alone: hand, apply, fcall (and for the transformer apply vs fcall).

Each row prints seconds per call (best of the repeats) and the ratio to the hand-written
baseline; the machine's load average is printed first. Usage:
    python benchmarks/models.py [--quick]
"""
from __future__ import annotations

import argparse
import os
import time

import torch
from torch.func import functional_call

from ntkcheck.models import build, optim, train


def hand_forward(model, ws, x):
    """The forward the checks used to hand-write: h <- phi(mult * x w^T) over the layers."""
    h = x
    last = len(model.layers) - 1
    for i, (layer, w) in enumerate(zip(model.layers, ws)):
        h = torch.nn.functional.linear(h, w) * layer.mult
        if i < last:
            h = model.phi(h)
    return h


def hand_train(model, ws, lrs, x, y, steps):
    """The hand-written GD loop the checks had: plain autograd and in-place updates."""
    ws = [w.clone().requires_grad_(True) for w in ws]
    for _ in range(steps):
        loss = 0.5 * ((hand_forward(model, ws, x) - y) ** 2).sum() / x.shape[0]
        grads = torch.autograd.grad(loss, ws)
        with torch.no_grad():
            for w, g, eta in zip(ws, grads, lrs):
                w -= eta * g
    return ws


def best_of(fns: dict, repeats: int) -> dict:
    """{name: best seconds per call}; the functions are called round-robin."""
    best = {k: float("inf") for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            t = time.perf_counter()
            fn()
            best[k] = min(best[k], time.perf_counter() - t)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(1)   # as the checks run (checks._common.limit_threads)
    print(f"load average {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} on {os.cpu_count()} cores; "
          f"torch {torch.__version__}, 1 thread, float64")
    widths = (64, 256, 1024) if args.quick else (64, 256, 1024, 4096)
    steps, repeats = (20, 5) if args.quick else (50, 7)
    print(f"\nMLP (d_in 8, 2 hidden tanh layers, NTK), batch 32, {steps} GD steps per call")
    print(f"{'width':>6} {'what':>8} {'hand s':>10} {'apply s':>10} {'fcall s':>10} {'apply/hand':>11} "
          f"{'fcall/hand':>11}")
    for n in widths:
        model = build("mlp", n, "NTK", seed=0, dtype=torch.float64, d_in=8)
        p = model.params()
        names = list(p)
        ws = [p[k] for k in names]
        lrs = model.learning_rates("sgd", 0.5)
        g = torch.Generator().manual_seed(1)
        x = torch.randn(32, 8, generator=g, dtype=torch.float64)
        y = torch.randn(32, 1, generator=g, dtype=torch.float64)
        fcall = lambda q, z: functional_call(model, q, (z,))  # noqa: E731
        t_step = best_of({"hand": lambda: hand_train(model, ws, [lrs[k] for k in names], x, y, steps),
                          "apply": lambda: train(model.apply, p, optim.sgd(lrs), (x, y), steps),
                          "fcall": lambda: train(fcall, p, optim.sgd(lrs), (x, y), steps)}, repeats)
        with torch.no_grad():
            t_fwd = best_of({"hand": lambda: [hand_forward(model, ws, x) for _ in range(steps)],
                             "apply": lambda: [model.apply(p, x) for _ in range(steps)],
                             "fcall": lambda: [fcall(p, x) for _ in range(steps)]}, repeats)
        for what, t in (("step", t_step), ("forward", t_fwd)):
            print(f"{n:>6} {what:>8} {t['hand']:>10.4f} {t['apply']:>10.4f} {t['fcall']:>10.4f} "
                  f"{t['apply'] / t['hand']:>11.2f} {t['fcall'] / t['hand']:>11.2f}")
    print(f"\ntransformer ([ES] 3.2 block, 2 heads, LayerNorm), batch 16 x 4 tokens, forward, {steps} calls")
    print(f"{'width':>6} {'apply s':>10} {'fcall s':>10} {'fcall/apply':>12}")
    for n in widths[:-1] if not args.quick else widths[:2]:
        model = build("transformer", n, "NTK", seed=0, dtype=torch.float64, d_in=8)
        p = model.params()
        x = torch.randn(16, 4, 8, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
        with torch.no_grad():
            t = best_of({"apply": lambda: [model.apply(p, x) for _ in range(steps)],
                         "fcall": lambda: [functional_call(model, p, (x,)) for _ in range(steps)]}, repeats)
        print(f"{n:>6} {t['apply']:>10.4f} {t['fcall']:>10.4f} {t['fcall'] / t['apply']:>12.2f}")


if __name__ == "__main__":
    main()
