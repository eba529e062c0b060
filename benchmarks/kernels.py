"""Benchmark of the empirical-kernel engine against what users write, and against the floor.

    python benchmarks/kernels.py --quick          # a few minutes on 2 cores
    python benchmarks/kernels.py [--json PATH]    # widths 512..4096, N = 128

Every method runs in this process, after a warm-up call, on the same inputs,
timed as the best of up to 7 round-robin repeats (a row stops repeating after
2 s in total), so that load on a shared machine hits every row alike:
- baseline: torch.func vmap(jacrev) over examples, all Jacobians held, then an
  einsum contraction (design.md, "what users write");
- floor: a hand-written MLP pass: one forward, C backward passes to the
  pre-activations, then per-layer (N C) x (N C) Grams (design.md's floor);
- the engine's methods and kinds (empirical_kernel, float32, full [N, C, N, C]).
Peak memory is the peak RSS increase during the call (ntkcheck.models.kernels.memory:
a sampling thread, with glibc set to mmap tensor buffers so freed memory is
returned; the script re-executes itself with that setting).
Reported ratios: speedup = baseline time / method time; x floor = method time /
floor time; sign / sgd = a sign kind's time / the sgd kind's time, same method.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time

import torch
from torch.func import jacrev, vmap

from ntkcheck.models import SP, WidthModel, build, functional
from ntkcheck.models.kernels import empirical_kernel
from ntkcheck.models.kernels.memory import PeakRSS, child_env

BUDGET = 2 * 2**30


def baseline_kernel(f, params, x):
    """vmap(jacrev) per-example Jacobians, all held, contracted by einsum: K [N, C, N, C]."""
    jac = vmap(jacrev(lambda p, xi: f(p, xi[None])[0]), in_dims=(None, 0))(params, x)
    K = 0
    for J in jac.values():
        J = J.reshape(J.shape[0], J.shape[1], -1)
        K = K + torch.einsum("iap,jbp->iajb", J, J)
    return K


def floor_kernel(model: WidthModel, x):
    """The floor for a bias-free MLP: forward, C backward passes to z_l = a_l W_l^T, then
    K = sum_l (G_l G_l^T) ⊙ (A_l A_l^T) (grad_{W_l} f_a(x_i) = g_{l,a,i} a_{l,i}^T)."""
    acts, zs = [], []
    with torch.enable_grad():
        h = x
        for i, layer in enumerate(model.layers):
            a = h if i == 0 else model.phi(h)
            w = layer.weight.detach().requires_grad_()
            z = a @ w.T
            acts.append(a.detach())
            zs.append(z)
            h = z * layer.mult
        n, c = h.shape
        grads = [torch.autograd.grad(h[:, k].sum(), zs, retain_graph=k < c - 1) for k in range(c)]
    K = 0
    for l, a in enumerate(acts):
        G = torch.stack([g[l] for g in grads], dim=1).reshape(n * c, -1)
        K = K + (G @ G.T).reshape(n, c, n, c) * (a @ a.T)[:, None, :, None]
    return K


def mlp_case(width: int, n: int, d_in: int, depth: int, quick: bool):
    model = build("mlp", width, SP, seed=0, d_in=d_in, d_out=2, depth=depth)
    f, params = functional(model.eval())
    x = torch.randn(n, d_in, generator=torch.Generator().manual_seed(1))
    P = sum(v.numel() for v in params.values())
    return model, f, params, x, P


def run_case(name, model, f, params, x, P, methods, baseline_ok, floor_ok, rows, ref_holder):
    n, c = x.shape[0], 2
    jac_bytes = n * c * P * 4
    entries = []
    if baseline_ok:
        entries.append(("baseline vmap(jacrev)+einsum", "sgd", {"run": lambda: baseline_kernel(f, params, x),
                                                                  "warmup": lambda: baseline_kernel(f, params, x[:2])}))
    if floor_ok:
        entries.append(("floor (hand-written)", "sgd", {"run": lambda: floor_kernel(model, x),
                                                         "warmup": lambda: floor_kernel(model, x[:2])}))
    for method, kind, kw in methods:
        def run(method=method, kind=kind, kw=kw, xx=x):
            return empirical_kernel(f, params, xx, kind=kind, method=method, memory_budget=BUDGET, **kw)
        entries.append((method, kind, {"run": run, "warmup": lambda run=run: run(xx=x[:2])}))
    # round-robin repeats (best time per row), so load on the shared machine hits all rows alike
    for _, _, fn in entries:
        fn["warmup"]()
    best = [math.inf] * len(entries)
    peak = [0] * len(entries)
    spent = [0.0] * len(entries)
    results = [None] * len(entries)
    for rep in range(7):
        for e, (_, _, fn) in enumerate(entries):
            if rep > 0 and spent[e] >= 2.0:
                continue
            with PeakRSS() as m:
                t = time.perf_counter()
                K = fn["run"]()
                dt = time.perf_counter() - t
            best[e], peak[e], spent[e] = min(best[e], dt), max(peak[e], m.peak_delta), spent[e] + dt
            if rep == 0:
                results[e] = K
            del K
    ref = {}
    for e, (label, kind, fn) in enumerate(entries):
        t, K = best[e], results[e]
        err = None
        if kind in ref and label != "sketch":
            err = float((K - ref[kind]).abs().max() / ref[kind].abs().max())
        elif label.startswith(("baseline", "structured", "floor")) and kind not in ref:
            ref[kind] = K
        row = {"case": name, "P": P, "N": n, "method": label, "kind": kind, "seconds": t, "peak_bytes": peak[e],
               "budget_bytes": BUDGET if not label.startswith(("baseline", "floor")) else None,
               "held_jacobian_bytes": jac_bytes, "rel_err_vs_reference": err}
        rows.append(row)
        print(f"  {label:30s} {kind:12s} {t:9.3f} s  peak {peak[e] / 2**20:9.1f} MiB"
              + ("" if err is None else f"  rel.err {err:.1e}"), flush=True)
    del results
    ref_holder.update(ref)


def summarize(rows):
    """Ratios per case: speedup vs baseline, x floor, sign / sgd (same method)."""
    out = []
    by_case: dict[str, list] = {}
    for r in rows:
        by_case.setdefault(r["case"], []).append(r)
    for case, rs in by_case.items():
        base = next((r["seconds"] for r in rs if r["method"].startswith("baseline")), None)
        floor = next((r["seconds"] for r in rs if r["method"].startswith("floor")), None)
        sgd = {r["method"]: r["seconds"] for r in rs if r["kind"] == "sgd"}
        for r in rs:
            r["speedup_vs_baseline"] = None if base is None else base / r["seconds"]
            r["x_floor"] = None if floor is None else r["seconds"] / floor
            r["sign_over_sgd"] = (r["seconds"] / sgd[r["method"]]
                                  if r["kind"] != "sgd" and r["method"] in sgd else None)
            r["within_budget"] = None if r["budget_bytes"] is None else r["peak_bytes"] <= r["budget_bytes"]
            out.append(r)
    return out


def fmt(v, spec):
    return "-" if v is None else format(v, spec)


def print_table(rows):
    head = (f"| {'case':24s} | {'method':28s} | {'kind':11s} | {'time s':>8s} | {'peak MiB':>8s} | "
            f"{'speedup':>8s} | {'x floor':>8s} | {'sign/sgd':>8s} | {'in budget':>9s} |")
    print(head)
    print("|" + "|".join("-" * (len(c)) for c in head.split("|")[1:-1]) + "|")
    for r in rows:
        wb = "-" if r["within_budget"] is None else ("yes" if r["within_budget"] else "NO")
        print(f"| {r['case']:24s} | {r['method']:28s} | {r['kind']:11s} | {r['seconds']:8.3f} | "
              f"{r['peak_bytes'] / 2**20:8.1f} | {fmt(r['speedup_vs_baseline'], '8.1f')} | "
              f"{fmt(r['x_floor'], '8.2f')} | {fmt(r['sign_over_sgd'], '8.2f')} | {wb:>9s} |")


def goals(rows):
    """The issue's goals, evaluated on the measured rows."""
    res = {}
    mlp2048 = [r for r in rows if r["case"].startswith("mlp w=2048")]
    st = next((r for r in mlp2048 if r["method"] == "structured" and r["kind"] == "sgd"), None)
    if st and st["speedup_vs_baseline"] is not None:
        res["structured >= 20x baseline (MLP w=2048, sgd)"] = {"measured": st["speedup_vs_baseline"],
                                                               "holds": st["speedup_vs_baseline"] >= 20}
    signs = [r for r in rows if r["method"] == "structured" and r["sign_over_sgd"] is not None]
    if signs:
        worst = max(r["sign_over_sgd"] for r in signs)
        res["sign kinds within 2x of sgd (structured, all cases)"] = {"measured": worst, "holds": worst <= 2}
    budget = [r for r in rows if r["within_budget"] is not None]
    if budget:
        res["peak memory within budget (all engine rows)"] = {
            "measured": max(r["peak_bytes"] for r in budget) / BUDGET, "holds": all(r["within_budget"] for r in budget)}
    fl = [r for r in rows if r["method"] == "structured" and r["kind"] == "sgd" and r["x_floor"] is not None]
    if fl:
        res["distance from floor (structured sgd, worst MLP case)"] = {"measured": max(r["x_floor"] for r in fl),
                                                                       "holds": None}
    return res


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="widths 512 and 2048, N = 64, fewer methods")
    ap.add_argument("--json", default="kernels_benchmark.json", help="where to write the rows (JSON)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = ap.parse_args(argv)
    if os.environ.get("MALLOC_MMAP_THRESHOLD_") is None:
        os.execve(sys.executable, [sys.executable] + sys.argv, child_env())
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rows: list[dict] = []
    n = 64 if args.quick else 128
    widths = [512, 2048] if args.quick else [512, 1024, 2048, 4096]
    avail = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    for w in widths:
        model, f, params, x, P = mlp_case(w, n, 64, 3, args.quick)
        held = n * 2 * P * 4
        # the baseline holds every Jacobian (and einsum reads them): skip it where that would not fit
        baseline_ok = 2.5 * held < 0.8 * avail
        methods = [("structured", "sgd", {}), ("structured", "signgd", {}), ("structured", "asym_signgd", {})]
        if w <= 512 or (not args.quick and w <= 1024):
            # beyond this the Jacobian methods stream under the 2 GiB budget and take minutes each
            methods += [("jacobian", "sgd", {}), ("packed", "signgd", {}), ("sketch", "sgd", {"sketch_dim": 256})]
            if w <= 512:
                methods += [("ntk_vp", "sgd", {})]
        name = f"mlp w={w} P={P / 1e6:.1f}M"
        print(f"{name}, N={n}, C=2, float32" + ("" if baseline_ok else
              f" (baseline skipped: would hold {held / 2**30:.1f} GiB of Jacobians)"), flush=True)
        run_case(name, model, f, params, x, P, methods, baseline_ok, True, rows, {})
        del model, f, params, x
    # a small transformer: sequences, so sign kinds use per-example gradients formed from the factors
    width = 64 if args.quick else 128
    tr = build("transformer", width, SP, seed=2, d_in=16, d_out=2, depth=2, n_heads=2, mlp=True)
    f, params = functional(tr.eval())
    nt = 32 if args.quick else 64
    x = torch.randn(nt, 8, 16, generator=torch.Generator().manual_seed(3))
    P = sum(v.numel() for v in params.values())
    methods = [("structured", "sgd", {}), ("structured", "signgd", {}), ("structured", "asym_signgd", {}),
               ("jacobian", "sgd", {}), ("jacobian", "signgd", {})]
    name = f"transformer w={width} T=8"
    print(f"{name} P={P}, N={nt}, C=2, float32", flush=True)
    run_case(name, None, f, params, x, P, methods, True, False, rows, {})
    rows = summarize(rows)
    print()
    print_table(rows)
    g = goals(rows)
    print()
    for k, v in g.items():
        verdict = "" if v["holds"] is None else (" -> holds" if v["holds"] else " -> MISSED")
        print(f"goal: {k}: {v['measured']:.2f}{verdict}")
    info = {"torch": torch.__version__, "threads": torch.get_num_threads(), "machine": platform.machine(),
            "python": platform.python_version(), "quick": args.quick, "budget_bytes": BUDGET}
    with open(args.json, "w") as fh:
        json.dump({"info": info, "rows": rows, "goals": g}, fh, indent=1)
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
