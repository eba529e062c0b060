"""Language-model kernels against the floor, at a real architecture's shape (issue: LM kernels at the floor).

    python benchmarks/lm_kernels.py --quick                    # SmolLM2-135M's shape, 24 x 8, a few minutes
    python benchmarks/lm_kernels.py                            # 164 rows x 32 columns (one 16-shot SST-2 seed)
    python benchmarks/lm_kernels.py --arch roberta-base --device cuda --rows 872 --cols 32
    python benchmarks/lm_kernels.py --quick --model /tmp/smollm2-hf     # real weights and tokenizer

The model is a random initialization of the architecture's real configuration
(SmolLM2-135M's Llama config by default; RoBERTa-base and GPT-Neo-125M as
options): speed does not depend on the weights, so nothing is downloaded. The
inputs are real SST-2 sentences from ../shared/data through the real prompt
adapter ([KV] Table 3's template, label words "terrible" / "great"), tokenized
by a word-level tokenizer over the data's vocabulary (the config's vocabulary
size is kept, so the tied embedding / LM head has its real size; prompts are
shorter than under the model's BPE tokenizer, and the mean length is printed).
``--model DIR`` uses a local pretrained folder instead (its weights and its own
tokenizer; e.g. the float32 SmolLM2 folder that ``ntkcheck lm weights
--export-gguf`` writes): the timings are the same, but only real weights give
the sketch's error its real size, since a random model's per-example gradients
are nearly orthogonal and a relative error of near-zero entries is large.
Rows are test sentences, columns training sentences, each side padded to its
own longest prompt, as ``ntkcheck lm`` encodes them; the engine gets the
adapter's ``trim`` (examples taken by length, each chunk cut to its longest
prompt) as ``ntkcheck lm`` passes it, and the floor batches the same way.

Measured in this process, on the same inputs:
- floor: the R + U examples, batched (--batch), one forward and C backward
  passes each to every parameter (torch.autograd.grad): what any exact eNTK
  must at least spend to see every example's gradient once;
- each kind (sgd, signgd, asym_signgd) by the engine's AUTO method, exact;
- with --sketch-dim k (default 2^17): each kind by the engine's sketch, and the
  median relative error of its entries |K_hat - K| / |K| against the exact
  kernel, beside [KV] Lemma D.3's bound at probability 1/2 (which is relative
  to c >= ||u||^2, ||v||^2, so looser for entries much smaller than c);
- and the first kind's sketch with a feature store (feature_dir, in a temporary
  folder): once sketching and keeping every example's features, once reading
  them back from a second kernel function, with the disk they take and their
  largest difference from the sketch without a folder (--no-feature-store skips).
Per row: seconds, seconds per example (over R + U), x floor, the peak RSS
during the call above the RSS at its start, the heap's free blocks having gone
back to the OS first (CPU; the kernel's VmHWM, ntkcheck.models.kernels.memory),
or torch.cuda.max_memory_allocated (GPU), the memory budget the kernel function
took (by default 40% of the memory available when it was made, the heap's free
blocks included), and the machine's load average. The process runs with glibc's mmap threshold at
4 MiB (``memory.child_env``, as ``ntkcheck lm`` sets it), floor and kernels alike.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
# `python benchmarks/lm_kernels.py` puts benchmarks/ first on the path, where kernels.py (the engine's benchmark)
# would shadow the `kernels` package that transformers' hub integration probes for (ImportError on import)
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

#: the real configurations (transformers' config classes, values from the models' config.json files)
ARCHS = {
    "smollm2": ("LlamaConfig", "causal", dict(
        vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
        num_key_value_heads=3, hidden_act="silu", max_position_embeddings=8192, rms_norm_eps=1e-5,
        rope_theta=100000.0, tie_word_embeddings=True)),
    "roberta-base": ("RobertaConfig", "mlm", dict(
        vocab_size=50265, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
        max_position_embeddings=514, type_vocab_size=1, layer_norm_eps=1e-5)),
    "gpt-neo-125m": ("GPTNeoConfig", "causal", dict(
        vocab_size=50257, hidden_size=768, num_layers=12, num_heads=12, max_position_embeddings=2048,
        attention_types=[[["global", "local"], 6]], window_size=256)),
}
KINDS = ("sgd", "signgd", "asym_signgd")


def random_lm(arch: str, layers: int | None, dtype: torch.dtype, device: str, data: Path):
    """(adapter, train examples, test examples) for a random-init ``arch`` over the SST-2 prompt."""
    import transformers as tr

    from ntkcheck.realmodels.adapters import make_adapter
    from ntkcheck.realmodels.data import load_task
    from ntkcheck.realmodels.tasks import TASKS
    from ntkcheck.realmodels.tiny import base_vocabulary, build_tokenizer, corpus_vocabulary

    cls_name, mode, kw = ARCHS[arch]
    kw = dict(kw)
    if layers is not None:
        kw["num_layers" if arch == "gpt-neo-125m" else "num_hidden_layers"] = layers
        if arch == "gpt-neo-125m":
            kw["attention_types"] = [[["global", "local"], layers // 2]] + ([[["global"], 1]] if layers % 2 else [])
    tok = build_tokenizer(list(dict.fromkeys(base_vocabulary() + corpus_vocabulary(data, 20000))),
                          "roberta" if mode == "mlm" else "gpt-neo")
    cfg = getattr(tr, cls_name)(pad_token_id=tok.pad_token_id, **kw)
    cfg._attn_implementation = "eager"
    torch.manual_seed(0)
    model = getattr(tr, "RobertaForMaskedLM" if mode == "mlm" else
                    ("LlamaForCausalLM" if arch == "smollm2" else "GPTNeoForCausalLM"))(cfg)
    model = model.to(dtype=dtype, device=device).eval()
    task = TASKS["sst2"]
    train, test = load_task(task, data)
    return make_adapter(model, tok, mode, task=task), train, test


def load_local(model: str, dtype: torch.dtype, device: str, data: Path):
    """(adapter, train, test) for a local pretrained folder, its own tokenizer, the SST-2 prompt."""
    from ntkcheck.realmodels.adapters import load_pretrained, make_adapter
    from ntkcheck.realmodels.data import load_task
    from ntkcheck.realmodels.tasks import TASKS

    m, tok, mode = load_pretrained(model, device=device, dtype=dtype)
    task = TASKS["sst2"]
    train, test = load_task(task, data)
    return make_adapter(m, tok, mode, task=task), train, test


def floor_seconds(ad, xs: list[torch.Tensor], batch: int) -> float:
    """One forward and C backward passes per example to every selected tensor, in batches of examples of
    similar length (sorted), each batch cut to its longest prompt (``LMAdapter.trim``): what a careful
    hand-written loop spends to see every example's gradient once."""
    names = ad.select
    sync = torch.cuda.synchronize if ad.device.type == "cuda" else (lambda: None)
    sync()
    t0 = time.perf_counter()
    for x in xs:
        x = x[torch.argsort(-x[:, 1].sum(-1), stable=True)]
        for i in range(0, x.shape[0], batch):
            p = {k: v.detach().requires_grad_(k in names) for k, v in ad.params.items()}
            with torch.enable_grad():
                out = ad.f(p, ad.trim(x[i:i + batch]))
                for a in range(out.shape[1]):
                    torch.autograd.grad(out[:, a].sum(), [p[n] for n in names], retain_graph=a < out.shape[1] - 1)
    sync()
    return time.perf_counter() - t0


def timed(fn, device):
    """(result, seconds, peak bytes) of fn(): on CPU the peak RSS during the call (PeakRSS: the kernel's own
    VmHWM, no sampling thread to slow the call) minus the RSS at its start, after the heap's free blocks
    went back to the OS (``memory.release_free_heap``), so that what an earlier row left in glibc's heap
    neither counts in this row's peak nor hides in it."""
    import gc

    from ntkcheck.models.kernels.memory import PeakRSS, release_free_heap

    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        t0 = time.perf_counter()
        out = fn()
        torch.cuda.synchronize()
        return out, time.perf_counter() - t0, torch.cuda.max_memory_allocated() - base
    gc.collect()
    release_free_heap()
    with PeakRSS() as m:
        t0 = time.perf_counter()
        out = fn()
        sec = time.perf_counter() - t0
    return out, sec, m.peak - m.start


def sketch_error(K_hat: torch.Tensor, K: torch.Tensor) -> float:
    """median over the entries of |K_hat - K| / |K|."""
    err = (K_hat.double() - K.double()).abs() / K.double().abs().clamp_min(1e-300)
    return float(err.flatten().median())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="24 rows x 8 columns (still > one chunk of columns)")
    ap.add_argument("--arch", default="smollm2", choices=sorted(ARCHS))
    ap.add_argument("--layers", type=int, default=None, help="fewer layers than the real config (speed only)")
    ap.add_argument("--model", default=None, help="a local pretrained folder instead of a random --arch")
    ap.add_argument("--rows", type=int, default=None, help="R test rows (default 164; quick 24)")
    ap.add_argument("--cols", type=int, default=None, help="U train columns (default 32; quick 8)")
    ap.add_argument("--kinds", nargs="+", default=list(KINDS), choices=KINDS)
    ap.add_argument("--sketch-dim", type=int, default=2**17, help="k of the sketched rows; 0 skips them")
    ap.add_argument("--sketch", default="countsketch", help="sketch family of the sketched rows")
    ap.add_argument("--no-feature-store", dest="feature_store", action="store_false",
                    help="skip the rows that keep the sketch's features on disk and read them back")
    ap.add_argument("--batch", type=int, default=8, help="batch size of the floor's passes")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--model-dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--memory-gb", type=float, default=None, help="the engine's budget (default: its own)")
    ap.add_argument("--data", default=str(REPO.parent / "shared" / "data"))
    ap.add_argument("--json", default=None, help="also write the rows to this file")
    args = ap.parse_args(argv)
    if os.environ.get("MALLOC_MMAP_THRESHOLD_") is None and args.device == "cpu":
        from ntkcheck.models.kernels.memory import child_env

        os.execve(sys.executable, [sys.executable] + sys.argv, child_env())
    from ntkcheck.models.kernels import make_kernel_fn
    from ntkcheck.models.kernels.sketch import jl_epsilon

    R = args.rows or (24 if args.quick else 164)
    U = args.cols or (8 if args.quick else 32)
    device = torch.device(args.device)
    dtype = getattr(torch, args.model_dtype)
    if args.model:
        ad, train, test = load_local(args.model, dtype, args.device, Path(args.data))
    else:
        ad, train, test = random_lm(args.arch, args.layers, dtype, args.device, Path(args.data))
    x_rows, x_cols = ad.encode(test[:R]), ad.encode(train[:U])
    C = ad.num_outputs
    P = sum(ad.params[n].numel() for n in ad.select)
    tokens = float(torch.cat([x_rows[:, 1].sum(-1), x_cols[:, 1].sum(-1)]).double().mean())
    load = os.getloadavg()
    print(f"# {args.model or args.arch + ' (random init)'}: {P / 1e6:.1f}M parameters (all), {C} outputs, {R} rows x {U} columns, "
          f"mean prompt {tokens:.1f} tokens (padded {x_rows.shape[-1]} / {x_cols.shape[-1]}), {args.model_dtype}, "
          f"{args.device}, torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.machine()}")
    print(f"# load average before: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} on {os.cpu_count()} cores")
    floor_seconds(ad, [x_cols[:2]], args.batch)  # warm-up
    floor = floor_seconds(ad, [x_rows, x_cols], args.batch)
    n_ex = R + U
    rows = [dict(row="floor", seconds=floor, per_example=floor / n_ex, x_floor=1.0, peak_bytes=None)]
    print(f"{'row':<28}{'seconds':>9}{'s/example':>11}{'x floor':>9}{'peak MiB':>10}{'budget MiB':>12}"
          f"{'median rel err':>16}")

    def show(r):
        pk = "" if r["peak_bytes"] is None else f"{r['peak_bytes'] / 2**20:.0f}"
        e1 = "" if r.get("median_rel_err") is None else f"{100 * r['median_rel_err']:.2f}%"
        bu = "" if r.get("budget_bytes") is None else f"{r['budget_bytes'] / 2**20:.0f}"
        print(f"{r['row']:<28}{r['seconds']:>9.2f}{r['per_example']:>11.3f}{r['x_floor']:>9.2f}{pk:>10}{bu:>12}"
              f"{e1:>16}", flush=True)

    show(rows[0])
    budget = None if args.memory_gb is None else int(args.memory_gb * 2**30)
    exact = {}
    for kind in args.kinds:
        fn = make_kernel_fn(ad.f, ad.params, kind=kind, select=ad.select, memory_budget=budget, trim=ad.trim)
        K, sec, peak = timed(lambda: fn(x_rows, x_cols), device)
        exact[kind] = K
        rows.append(dict(row=f"exact {kind}", seconds=sec, per_example=sec / n_ex, x_floor=sec / floor, peak_bytes=peak,
                         budget_bytes=fn.budget, method=fn.plans[next(iter(fn.plans))].method.value))
        show(rows[-1])
    if args.sketch_dim:
        k = args.sketch_dim
        eps = jl_epsilon(k, 1, 0.5)
        for kind in args.kinds:
            fn = make_kernel_fn(ad.f, ad.params, kind=kind, select=ad.select, method="sketch", sketch_dim=k,
                                sketch=args.sketch, seed=0, memory_budget=budget, trim=ad.trim)
            Kh, sec, peak = timed(lambda: fn(x_rows, x_cols), device)
            r = dict(row=f"{args.sketch} k=2^{int(math.log2(k))} {kind}", seconds=sec, per_example=sec / n_ex,
                     x_floor=sec / floor, peak_bytes=peak, budget_bytes=fn.budget, lemma_d3_eps_at_half=eps)
            if kind in exact:
                r["median_rel_err"] = sketch_error(Kh, exact[kind])
            rows.append(r)
            show(r)
        if args.feature_store:
            # the feature store (feature_dir): the first function sketches and writes every example, a second one
            # on the same folder reads them back; both against the sketch without a folder
            import tempfile

            kind = args.kinds[0]
            plain = make_kernel_fn(ad.f, ad.params, kind=kind, select=ad.select, method="sketch", sketch_dim=k,
                                   sketch=args.sketch, seed=0, memory_budget=budget, trim=ad.trim)(x_rows, x_cols)
            with tempfile.TemporaryDirectory(prefix="ntkcheck-features-") as folder:
                for label in ("kept", "read back"):
                    fn = make_kernel_fn(ad.f, ad.params, kind=kind, select=ad.select, method="sketch", sketch_dim=k,
                                        sketch=args.sketch, seed=0, memory_budget=budget, trim=ad.trim,
                                        feature_dir=folder)
                    Kh, sec, peak = timed(lambda: fn(x_rows, x_cols), device)
                    rows.append(dict(row=f"{kind} features {label}", seconds=sec, per_example=sec / n_ex,
                                     x_floor=sec / floor, peak_bytes=peak, budget_bytes=fn.budget,
                                     max_abs_diff=float((Kh - plain).abs().max())))
                    show(rows[-1])
                size = sum(f.stat().st_size for f in Path(folder).rglob("*.pt"))
            print(f"# features kept: {size / 2**20:.0f} MiB for {n_ex} examples; largest |K - K without a folder|: "
                  + ", ".join(f"{r['max_abs_diff']:.1e}" for r in rows[-2:]) + f" (|K| max {float(plain.abs().max()):.1e})")
        print(f"# [KV] Lemma D.3 at k = 2^{int(math.log2(k))}: Pr[|u.v - h(u).h(v)| >= eps c] <= 4 exp(-(eps^2 - eps^3) k / 4)"
              f" = 1/2 at eps = {100 * eps:.2f}% (c >= ||u||^2, ||v||^2)")
    load = os.getloadavg()
    print(f"# load average after: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"arch": args.arch, "rows": R, "cols": U, "tokens": tokens,
                                               "params": P, "device": args.device, "table": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
