"""The shared kernel of several k-shot seeds: the entries the seeds read against every entry, in one process.

    python benchmarks/lm_seeds.py --quick                       # tiny random Llama, SST-2, 5 seeds, a minute
    python benchmarks/lm_seeds.py --task subj --test-max 200    # 16-shot Subj, 5 seeds
    python benchmarks/lm_seeds.py --model /tmp/smollm2-hf --test-max 40 --k 4   # real weights (slow on CPU)

``ntkcheck lm`` holds one kernel for all seeds of a run: rows are the union of
the seeds' train, dev and test examples, columns the union of their training
examples. A seed reads only its own train and dev rows against its own training
columns, and the shared test rows against them (Session.needed), so a run
computes (N + 2n) S n entries, not the (N + 2Sn) S n of every row against every
column (S seeds of n = k C training examples, N test rows).

Measured here, on the same model, task, seeds and examples, each in its own
empty kernel folder:
- every entry: Session.kernel with needed() all true (what ``ntkcheck lm`` did
  before it computed only the read entries), the baseline;
- read entries: Session.kernel as ``ntkcheck lm`` runs it.
Per row: entries computed, kernel calls, seconds, and the ratio to the
baseline; then the largest relative difference of the read entries between the
two (they agree to the model dtype's rounding: float32 by default, where a
batch of other rows rounds differently), and the machine's load average
before and after. Whether time follows entries depends on the model: the
kernel's cost is per-example passes (forward and C backward, unchanged) plus
per-pair products (which the read entries cut).
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
# as in lm_kernels.py: benchmarks/ first on the path would shadow the `kernels` package transformers probes for
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]


class Counting:
    """A session's kernel function that counts its calls and the (row, column) pairs they compute."""

    def __init__(self, fn):
        self.fn, self.calls, self.entries = fn, 0, 0

    def __getattr__(self, name):       # side_memo, plans, budget: the wrapped function's
        return getattr(self.fn, name)

    def __call__(self, x1, x2=None, **kw):
        self.calls += 1
        self.entries += len(x1) * (len(x1) if x2 is None else len(x2))
        return self.fn(x1, x2, **kw)


def timed_kernel(cfg, every_entry: bool, kind: str):
    """(K, seconds, calls, entries) of one session's kernel in cfg.out, from an empty folder."""
    from ntkcheck.realmodels.experiment import iter_sessions

    sess = next(iter_sessions(cfg, "lm_kernel"))
    if every_entry:
        sess.needed = lambda: np.ones((len(sess.rows), sess.n_cols), dtype=bool)
    fn = Counting(sess.kernel_fn(kind))
    sess.kernel_fns[kind] = fn
    t0 = time.perf_counter()
    K = sess.kernel(kind, progress=False)
    return sess, K, time.perf_counter() - t0, fn.calls, fn.entries


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny random Llama, SST-2, k 4, 40 test rows")
    ap.add_argument("--model", default=None, help="a model folder (default: a tiny random Llama made here)")
    ap.add_argument("--hidden", type=int, default=128, help="the tiny model's width")
    ap.add_argument("--layers", type=int, default=4, help="the tiny model's layers")
    ap.add_argument("--task", default="sst2")
    ap.add_argument("--k", type=int, default=None, help="examples per label (default 16; quick 4)")
    ap.add_argument("--seeds", default="13,21,42,87,100")
    ap.add_argument("--test-max", type=int, default=None, help="test rows (default 200; quick 40)")
    ap.add_argument("--kind", default="sgd", choices=["sgd", "signgd", "asym_signgd"])
    ap.add_argument("--block", type=int, default=256)
    ap.add_argument("--memory-gb", type=float, default=None)
    ap.add_argument("--data", default=str(REPO.parent / "shared" / "data"))
    args = ap.parse_args(argv)
    from ntkcheck.realmodels.experiment import LMConfig
    from ntkcheck.realmodels.tiny import make_tiny

    k = args.k or (4 if args.quick else 16)
    test_max = args.test_max or (40 if args.quick else 200)
    seeds = tuple(int(s) for s in args.seeds.split(","))
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model or str(make_tiny(Path(tmp) / "tiny", "llama", data_dir=args.data, hidden=args.hidden,
                                            layers=args.layers, heads=4, seed=0))
        cfg = LMConfig(model=model, task=args.task, data=args.data, k=k, seeds=seeds, test_max=test_max,
                       out=str(Path(tmp) / "warm"), block=args.block, memory_budget_gb=args.memory_gb)
        timed_kernel(replace(cfg, seeds=seeds[:1], test_max=2), True, args.kind)   # warm-up: load, plan, threads
        load = os.getloadavg()
        print(f"# {args.model or f'tiny random Llama (hidden {args.hidden}, {args.layers} layers)'}, {args.task}, "
              f"k {k}, seeds {args.seeds}, {test_max} test rows, {args.kind}, torch {torch.__version__}, "
              f"{torch.get_num_threads()} threads")
        print(f"# load average before: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} on {os.cpu_count()} cores")
        sess, K_all, t_all, c_all, e_all = timed_kernel(replace(cfg, out=str(Path(tmp) / "all")), True, args.kind)
        read, K_read, t_read, c_read, e_read = timed_kernel(replace(cfg, out=str(Path(tmp) / "read")), False,
                                                         args.kind)
        R, U = len(sess.rows), sess.n_cols
        print(f"# {R} rows x {U} columns: {len(sess.index[seeds[0]]['test'])} test rows, "
              f"{R - U - len(sess.index[seeds[0]]['test'])} dev rows beyond the training union")
        print(f"{'row':<16}{'entries':>10}{'calls':>7}{'seconds':>10}{'x baseline':>12}")
        print(f"{'every entry':<16}{e_all:>10}{c_all:>7}{t_all:>10.2f}{1.0:>12.2f}")
        print(f"{'read entries':<16}{e_read:>10}{c_read:>7}{t_read:>10.2f}{t_read / t_all:>12.2f}"
              f"   (entries x {e_read / e_all:.2f})")
        need = torch.from_numpy(read.needed())
        a, b = K_read.permute(0, 2, 1, 3)[need], K_all.permute(0, 2, 1, 3)[need]
        rel = float((a - b).abs().max() / b.abs().max())
        print(f"# read entries: largest difference {rel:.1e} of the largest entry; "
              f"{int((~need).sum())} unread entries NaN: {bool(K_read.permute(0, 2, 1, 3)[~need].isnan().all())}")
        load = os.getloadavg()
        print(f"# load average after: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
