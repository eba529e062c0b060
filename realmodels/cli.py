"""`ntkcheck lm ...`: the LM measurements from the command line.

    ntkcheck lm make-tiny DIR --arch roberta|gpt-neo|bert|llama [--data DATA]
    ntkcheck lm tasks | weights
    ntkcheck lm kernel   --model PATH --task sst2 --data DATA --k 16 [--kinds sgd,signgd,asym_signgd]
    ntkcheck lm solve    --model PATH --task sst2 --data DATA --k 16 [--kinds ...]
    ntkcheck lm finetune --model PATH ... [--optimizers sgd,adam --lrs-sgd ... --batch-sizes ... --steps N]
    ntkcheck lm behavior --model PATH ... (fine-tunes, then Tables 5, 6, 8)
    ntkcheck lm spectrum --model PATH ... [--samples 100]
    ntkcheck lm taskvec  --model PATH --tasks sst2,subj ...
    ntkcheck lm reproduce --model PATH --tasks sst2,sst5,subj,trec [--lora 8] (all of the above, one result)

transformers is imported only when a command runs, so `ntkcheck --help` works without it.
"""
from __future__ import annotations

import argparse
import math

from ntkcheck import distributed
from ntkcheck.errors import UserError
from ntkcheck.realmodels.tiny import ARCHS


def _floats(flag: str):
    def parse(text: str) -> tuple[float, ...]:
        try:
            vals = tuple(float(t) for t in text.replace(",", " ").split())
        except ValueError:
            raise argparse.ArgumentTypeError(f"{flag} {text!r}: expected comma-separated numbers") from None
        if not vals or any(not (v >= 0) for v in vals):
            raise argparse.ArgumentTypeError(f"{flag} {text!r}: expected non-negative numbers")
        return vals
    return parse


def _ints(flag: str, positive: bool = True):
    def parse(text: str) -> tuple[int, ...]:
        try:
            vals = tuple(int(t) for t in text.replace(",", " ").split())
        except ValueError:
            raise argparse.ArgumentTypeError(f"{flag} {text!r}: expected comma-separated integers") from None
        if not vals or (positive and any(v <= 0 for v in vals)):
            raise argparse.ArgumentTypeError(f"{flag} {text!r}: expected positive integers")
        return vals
    return parse


def _int(flag: str, minimum: int = 1):
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{flag} {text!r}: expected an integer") from None
        if v < minimum:
            raise argparse.ArgumentTypeError(f"{flag} {text!r}: must be >= {minimum}")
        return v
    return parse


def _positive_float(flag: str):
    def parse(text: str) -> float:
        try:
            v = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{flag} {text!r}: expected a number") from None
        if not (v > 0 and math.isfinite(v)):
            raise argparse.ArgumentTypeError(f"{flag} {text!r}: must be a positive number")
        return v
    return parse


def _words(flag: str, allowed: tuple[str, ...] | None = None):
    def parse(text: str) -> tuple[str, ...]:
        vals = tuple(t.strip() for t in text.split(",") if t.strip())
        if not vals:
            raise argparse.ArgumentTypeError(f"{flag} {text!r}: expected a comma-separated list")
        bad = [v for v in vals if allowed is not None and v not in allowed]
        if bad:
            raise argparse.ArgumentTypeError(f"{flag} {bad[0]!r}: expected one of {', '.join(allowed)}")
        return vals
    return parse


def _kinds(none_ok: bool):
    """--kinds: kernel kinds, comma-separated; with ``none_ok`` the single word "none" means no kernel (an empty
    tuple: zero-shot, fine-tuning and what needs no kernel, at none of a kernel's cost)."""
    from ntkcheck.realmodels.experiment import KINDS

    words = _words("--kinds", KINDS + (("none",) if none_ok else ()))

    def parse(text: str) -> tuple[str, ...]:
        vals = words(text)
        if "none" not in vals:
            return vals
        if len(vals) > 1:
            raise argparse.ArgumentTypeError(f"--kinds {text!r}: 'none' means no kernel; name kinds or none")
        return ()
    return parse


def _common(p: argparse.ArgumentParser, kinds: bool = True, kinds_none: str | None = None) -> None:
    """The flags every `lm` command shares; --kinds where ``kinds``, accepting "none" where ``kinds_none`` says
    what a run without a kernel still gives."""
    from ntkcheck.realmodels.data import SEEDS

    p.add_argument("--model", required=True,
                   help="local transformers folder, a .gguf file, or a Hugging Face model id in the local cache")
    p.add_argument("--gguf-file", default=None, help="GGUF file name inside --model")
    p.add_argument("--task", default="sst2", help="registered task (ntkcheck lm tasks)")
    p.add_argument("--data", default="../shared/data", help="data folder")
    p.add_argument("--k", type=_int("--k"), default=16, help="examples per label for train and for dev")
    p.add_argument("--seeds", type=_ints("--seeds", positive=False), default=SEEDS,
                   help="k-shot split seeds (default 13,21,42,87,100)")
    p.add_argument("--test-max", type=_int("--test-max", 0), default=1000, help="test-set cap (0: no cap)")
    p.add_argument("--holdout", type=_int("--holdout"), default=2000, help="test size held out of a single-file set")
    p.add_argument("--mode", default="auto", choices=["auto", "mlm", "causal", "head"])
    p.add_argument("--template", default=None, help="override, e.g. '<S1> It was [MASK] .'")
    p.add_argument("--label-words", type=_words("--label-words"), default=None, help="override, in label order")
    p.add_argument("--multi-token", default="error", choices=["error", "first", "mean"],
                   help="how to score a label word of several tokens (default: error)")
    p.add_argument("--params", default=None, help="regular expression selecting the trainable tensors")
    p.add_argument("--max-length", type=_int("--max-length", 4), default=128)
    p.add_argument("--bos", action="store_true", help="prepend the BOS token (causal LMs)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:i")
    if kinds:
        p.add_argument("--kinds", type=_kinds(kinds_none is not None), default=("sgd",),
                       help="kernel kinds: sgd,signgd,asym_signgd" + (f" (none: {kinds_none})" if kinds_none else ""))
    p.add_argument("--kernel-dtype", default="float64", choices=["float64", "float32"],
                   help="dtype kernels are summed and stored in (default float64)")
    p.add_argument("--model-dtype", default="float32", choices=["float32", "bfloat16", "float16", "float64"],
                   help="dtype the model's weights are loaded and run in (default float32)")
    p.add_argument("--method", default="auto", choices=["auto", "jacobian", "structured", "ntk_vp", "sketch", "packed"],
                   help="kernel engine method (default auto)")
    p.add_argument("--sketch-dim", type=_int("--sketch-dim"), default=None, metavar="K",
                   help="countsketch every parameter's gradient to K buckets (e.g. 131072) instead of the exact "
                        "kernel: for shapes the exact one cannot reach; the small tensors stay exact")
    p.add_argument("--block", type=_int("--block"), default=256, help="kernel rows per cached block")
    p.add_argument("--memory-gb", type=_positive_float("--memory-gb"), default=None,
                   help="kernel engine memory budget in GiB (default: 40%% of the memory available on the device)")
    p.add_argument("--lora", type=_int("--lora"), default=None, metavar="RANK",
                   help="train and take kernels of peft LoRA adapters of this rank (A ~ N(0, 1/r), B = 0)")
    p.add_argument("--lora-alpha", type=_positive_float("--lora-alpha"), default=None,
                   help="LoRA alpha (scale alpha / rank; default 2 x rank, [KV] Table 4's (8, 16))")
    p.add_argument("--lora-targets", type=_words("--lora-targets"), default=None,
                   help="names of the linear layers to adapt, e.g. q_proj,v_proj (default: peft's for the model)")
    p.add_argument("--out", default="ntkcheck-runs", help="run-store folder")


def _ft_args(p: argparse.ArgumentParser) -> None:
    from ntkcheck.realmodels.finetune import DEFAULT_BATCH_SIZES, DEFAULT_LRS

    p.add_argument("--optimizers", type=_words("--optimizers", ("sgd", "adam")), default=("sgd", "adam"))
    p.add_argument("--lrs-sgd", type=_floats("--lrs-sgd"), default=DEFAULT_LRS["sgd"])
    p.add_argument("--lrs-adam", type=_floats("--lrs-adam"), default=DEFAULT_LRS["adam"])
    p.add_argument("--batch-sizes", type=_ints("--batch-sizes"), default=DEFAULT_BATCH_SIZES)
    p.add_argument("--steps", type=_int("--steps"), default=None, help="default 32 k C ([KV] App. A.3)")
    p.add_argument("--eval-every", type=_int("--eval-every"), default=None, help="default 4 k C")


def config_from_args(args):
    from ntkcheck.models.kernels.memory import mmap_large_blocks
    from ntkcheck.realmodels.experiment import LMConfig
    from ntkcheck.store import ensure_writable

    command = getattr(args, "lm_command", None)
    if distributed.world_size() > 1 and command not in (None, "kernel", "solve"):
        raise UserError(f"lm {command} runs in one process; under torchrun only lm kernel, lm solve and "
                        "ntkcheck run share their work over ranks")
    ensure_writable(args.out)
    # freed tensors go back to the OS, so resident memory follows the engine's budget (memory.py)
    mmap_large_blocks()
    return LMConfig(model=args.model, task=args.task, data=args.data, k=args.k, seeds=tuple(args.seeds),
                    test_max=args.test_max or None, mode=args.mode, template=args.template,
                    label_words=args.label_words, multi_token=args.multi_token, params=args.params,
                    max_length=args.max_length, device=distributed.rank_device(args.device), kinds=tuple(getattr(args, "kinds", ("sgd",))),
                    kernel_dtype=args.kernel_dtype, model_dtype=args.model_dtype, method=args.method,
                    sketch_dim=args.sketch_dim, block=args.block,
                    memory_budget_gb=args.memory_gb, holdout=args.holdout, bos=args.bos,
                    gguf_file=args.gguf_file, lora_rank=args.lora, lora_alpha=args.lora_alpha,
                    lora_targets=tuple(args.lora_targets) if args.lora_targets else None, out=args.out)


def _ft_config(args):
    from ntkcheck.realmodels.finetune import FTConfig

    return FTConfig(optimizers=tuple(args.optimizers), lrs_sgd=tuple(args.lrs_sgd), lrs_adam=tuple(args.lrs_adam),
                    batch_sizes=tuple(args.batch_sizes), steps=args.steps, eval_every=args.eval_every)


def _need_transformers() -> None:
    try:
        import transformers  # noqa: F401
    except ImportError:
        raise UserError("ntkcheck lm needs transformers: pip install 'ntkcheck[hf]'") from None


# ------------------------------------------------------------------ handlers
def _make_tiny(args) -> int:
    _need_transformers()
    from ntkcheck.realmodels.tiny import make_tiny

    out = make_tiny(args.dir, args.arch, data_dir=args.data, hidden=args.hidden, layers=args.layers,
                    heads=args.heads, seed=args.seed)
    print(f"tiny {args.arch} model written to {out}")
    return 0


def _tasks(args) -> int:
    from ntkcheck.realmodels.tasks import TASKS

    for t in TASKS.values():
        src = f"{t.train_file}" + (f" / {t.test_file}" if t.test_file else " (test held out)") if t.train_file \
            else f"DATA/{t.name}/{{train,test}}.jsonl|tsv|csv"
        print(f"{t.name:7s} {t.metric:3s} {t.template!r:40s} {', '.join(t.label_words):55s} {src}")
        if t.causal_template:
            print(f"{'':7s} {'':3s} {t.causal_template!r:40s} (causal LMs)")
    return 0


def _weights(args) -> int:
    from ntkcheck.realmodels.weights import REAL_MODELS, export_gguf, find_real_model

    if args.export_gguf:
        _need_transformers()
        gguf, out = args.export_gguf
        print(f"float32 copy of {gguf} written to {export_gguf(gguf, out)}")
        return 0
    for name, spec in REAL_MODELS.items():
        path = find_real_model(name)
        print(f"{name:10s} {spec['package']:22s} {spec['what']:50s} {path or 'not installed: pip install ' + spec['install']}")
    return 0


def _kernel(args) -> int:
    _need_transformers()
    from ntkcheck.realmodels.measure import kernel_cmd, kernel_share

    cfg = config_from_args(args)
    if not distributed.is_main():   # torchrun: this rank computes kernel blocks; rank 0 writes the result
        kernel_share(cfg)
        return 0
    res = kernel_cmd(cfg)
    for kind, items in res.items():
        for it in items:
            print(f"{kind:12s} K {tuple(it['shape'])}  ||K_train||_op {it['train_op_norm']:.4g}  "
                  f"asymmetry {it['train_asymmetry']:.3g}  {it['seconds']:.1f} s")
    return 0


def _solve(args) -> int:
    _need_transformers()
    from ntkcheck.realmodels.measure import kernel_share, solve_cmd
    from ntkcheck.realmodels.solve import grid_override

    cfg = config_from_args(args)
    if not distributed.is_main():   # torchrun: this rank computes kernel blocks; rank 0 solves
        kernel_share(cfg)
        return 0
    res = solve_cmd(cfg, grid_override=grid_override(args.regs), loss=args.loss, halfwidth=args.halfwidth)
    print(res["table"])
    print(f"-> {res['dir']}")
    return 0


def _finetune(args) -> int:
    _need_transformers()
    from ntkcheck.realmodels.measure import finetune_cmd

    res = finetune_cmd(config_from_args(args), _ft_config(args))
    print(res["table"])
    print(f"-> {res['dir']}")
    return 0


def _behavior(args) -> int:
    _need_transformers()
    from ntkcheck.realmodels.measure import behavior_cmd

    res = behavior_cmd(config_from_args(args), _ft_config(args), distance_samples=args.distance_samples,
                       halfwidth=args.halfwidth)
    print(res["table"])
    print(f"-> {res['dir']}")
    return 0


def _spectrum(args) -> int:
    _need_transformers()
    from ntkcheck.realmodels.measure import spectrum_cmd

    res = spectrum_cmd(config_from_args(args), samples=args.samples, reduce=args.reduce, kind=args.kind)
    s = res["summary"]
    for r in res["rows"]:
        print(f"seed {r['seed']:4d}  beta {r['beta']:.4f}  ({r['n_positive']} positive eigenvalues)")
    print(f"beta = {s['beta_mean']:.4f} +- {s['beta_std']:.4f}  -> {res['dir']}")
    return 0


def _taskvec(args) -> int:
    _need_transformers()
    from ntkcheck.realmodels.measure import taskvec_cmd

    res = taskvec_cmd(config_from_args(args), _ft_config(args), args.tasks, scale=args.scale)
    names = [r["task"] for r in res["rows"]]
    print("cosine(tau_s, tau_t):")
    for i, a in enumerate(names):
        print(f"  {a:7s} " + " ".join(f"{res['cosine'][i, j]:6.3f}" for j in range(len(names))))
    for r in res["rows"]:
        print(f"  {r['task']:7s} pretrained {r['pretrained']:.1f}  single {r['single']:.1f}  "
              f"multitask {r['multitask']:.1f} (normalized {r['normalized']:.2f})  negated {r['negated']:.1f}")
    print(f"-> {res['dir']}")
    return 0


def _reproduce(args) -> int:
    _need_transformers()
    from ntkcheck.realmodels.finetune import FTConfig
    from ntkcheck.realmodels.reproduce import ReproduceOptions, lora_grid, reproduce

    cfg = config_from_args(args)
    ft = None if args.no_finetune else _ft_config(args)
    lora_ft = None
    if ft is not None and cfg.lora_rank is not None:
        base = lora_grid(ft)
        lora_ft = FTConfig(optimizers=ft.optimizers, lrs_sgd=tuple(args.lora_lrs_sgd or base.lrs_sgd),
                           lrs_adam=tuple(args.lora_lrs_adam or base.lrs_adam),
                           batch_sizes=tuple(args.lora_batch_sizes or base.batch_sizes), steps=ft.steps,
                           eval_every=ft.eval_every)
    opts = ReproduceOptions(tasks=tuple(args.tasks), finetune=ft, lora_finetune=lora_ft,
                            spectrum_samples=args.spectrum_samples, distance_samples=args.distance_samples,
                            task_vectors=not args.no_task_vectors, loss=args.loss, regs=args.regs,
                            halfwidth=args.halfwidth)
    res = reproduce(cfg, opts)
    print(res["table"])
    r = res["result"]
    judged = [c for c in r.claims if c.judged]
    print(f"verdict {r.verdict}: {sum(c.holds for c in judged)} of {len(judged)} claims hold"
          + "".join(f"\n  {c.state:12s} {c.id}: {c.measured:.3g} (CI {c.ci[0]:.3g}..{c.ci[1]:.3g}) "
                    f"{c.relation} {c.predicted:g}" for c in judged if not c.holds))
    print(f"-> {res['dir']}  report: {res['report']}")
    return 0


def _distance_samples(text: str) -> int:
    """--distance-samples: 0 (no kernel distance) or at least 2 test inputs (a distance over one entry says
    nothing of the kernel's shape)."""
    v = _int("--distance-samples", 0)(text)
    if v == 1:
        raise argparse.ArgumentTypeError(f"--distance-samples {text!r}: expected 0 (skip) or at least 2")
    return v


def _halfwidth_arg(p) -> None:
    p.add_argument("--halfwidth", type=_positive_float("--halfwidth"), default=3.0, metavar="POINTS",
                   help="the table states how many seeds a 95%% interval of +-POINTS needs per method (default 3)")


def _loss_arg(p) -> None:
    p.add_argument("--loss", default="logistic", choices=["logistic", "ridge"],
                   help="solver for sgd/signgd kernels: kernel logistic regression ([KV] App. A.3, the default) "
                        "or least squares (asym_signgd always uses He et al.)")
    p.add_argument("--regs", type=_floats("--regs"), default=None, metavar="R1,R2,...",
                   help="the solvers' ridge grid, relative to ||K_train||_op (default [KV] Table 4's "
                        "0,0.001,0.01,0.1,1); under the logistic loss 0 has no minimizer on separable training "
                        "examples, where a small positive ridge (1e-6) is well-posed")


def add_lm_parser(subparsers) -> None:
    """Register `ntkcheck lm` and its subcommands on the top-level parser's subparsers."""
    lm = subparsers.add_parser("lm", help="measurements on pretrained language models (needs transformers)")
    sub = lm.add_subparsers(dest="lm_command", required=True, parser_class=type(lm))

    p = sub.add_parser("make-tiny", help="write a tiny random model folder (offline; for tests and CI)")
    p.add_argument("dir")
    p.add_argument("--arch", default="roberta", choices=list(ARCHS))
    p.add_argument("--data", default=None, help="add the most frequent words of this data folder to the vocabulary")
    p.add_argument("--hidden", type=_int("--hidden"), default=32)
    p.add_argument("--layers", type=_int("--layers"), default=2)
    p.add_argument("--heads", type=_int("--heads"), default=2)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(handler=_make_tiny)

    p = sub.add_parser("tasks", help="list the registered tasks ([KV] Table 3)")
    p.set_defaults(handler=_tasks)
    p = sub.add_parser("weights", help="where the offline real-weight packages are installed")
    p.add_argument("--export-gguf", nargs=2, metavar=("GGUF", "DIR"), default=None,
                   help="dequantize a GGUF causal LM once into a float32 transformers folder DIR")
    p.set_defaults(handler=_weights)

    p = sub.add_parser("kernel", help="train x train and test x train kernels (cached)")
    _common(p)
    p.set_defaults(handler=_kernel)
    p = sub.add_parser("solve", help="kernel regression vs zero-shot, [KV] Table 2 layout")
    _common(p, kinds_none="zero-shot only, no kernel")
    _loss_arg(p)
    _halfwidth_arg(p)
    p.set_defaults(handler=_solve)
    p = sub.add_parser("finetune", help="prompt-based SGD / Adam fine-tuning ([KV] App. A.3)")
    _common(p, kinds=False)
    _ft_args(p)
    p.set_defaults(handler=_finetune)
    p = sub.add_parser("behavior", help="linearization, kernel distance, chi ([KV] Tables 5, 6, 8)")
    _common(p, kinds=False)
    _ft_args(p)
    p.add_argument("--distance-samples", type=_distance_samples, default=64,
                   help="test inputs of the kernel distance before / after FT ([KV] Table 6; 0: skip)")
    _halfwidth_arg(p)
    p.set_defaults(handler=_behavior)
    p = sub.add_parser("spectrum", help="Gram eigenvalues and beta ([ES] Sec. 7.1)")
    _common(p, kinds=False)
    p.add_argument("--samples", type=_int("--samples", 3), default=100)
    p.add_argument("--reduce", default="flatten", choices=["flatten", "trace"])
    p.add_argument("--kind", default="sgd", choices=["sgd", "signgd"])
    p.set_defaults(handler=_spectrum)
    p = sub.add_parser("taskvec", help="task vectors: cosine heatmap, addition, negation ([ES] Sec. 7.2)")
    _common(p, kinds=False)
    _ft_args(p)
    p.add_argument("--tasks", type=_words("--tasks"), required=True, help="e.g. sst2,subj")
    p.add_argument("--scale", type=float, default=1.0, help="lambda in theta_PT + lambda sum_t tau_t")
    p.set_defaults(handler=_taskvec)
    p = sub.add_parser("reproduce", help="every [KV] / [ES] LM result per task, with claims and a report")
    _common(p, kinds_none="no kernel: zero-shot, fine-tuning, Lin. and the rest")
    p.set_defaults(kinds=("sgd", "asym_signgd"))
    _ft_args(p)
    p.add_argument("--tasks", type=_words("--tasks"), required=True, help="e.g. sst2,sst5,subj,trec")
    _loss_arg(p)
    _halfwidth_arg(p)
    p.add_argument("--spectrum-samples", type=_int("--spectrum-samples", 0), default=100,
                   help="training inputs of the Gram spectrum ([ES] Sec. 7.1; 0: skip)")
    p.add_argument("--distance-samples", type=_distance_samples, default=64,
                   help="test inputs of the kernel distance before / after FT ([KV] Table 6; 0: skip)")
    p.add_argument("--no-finetune", action="store_true", help="kernels and spectrum only")
    p.add_argument("--no-task-vectors", action="store_true", help="skip [ES] Sec. 7.2's task vectors")
    p.add_argument("--lora-lrs-sgd", type=_floats("--lora-lrs-sgd"), default=None,
                   help="SGD-LoRA learning rates (default [KV] Table 4: 1e-4,1e-3,1e-2)")
    p.add_argument("--lora-lrs-adam", type=_floats("--lora-lrs-adam"), default=None,
                   help="Adam-LoRA learning rates (default [KV] Table 4: 1e-5,4e-5,4e-4)")
    p.add_argument("--lora-batch-sizes", type=_ints("--lora-batch-sizes"), default=None,
                   help="LoRA batch sizes (default [KV] Table 4: 4,16)")
    p.set_defaults(handler=_reproduce)
