"""SKETCH method, the IntrinsicDimension kernel ([KV] Def. D.1) and the LoRA kernel ([KV] Lemma D.4).

Sketch: with a seeded random Pi in R^{P x k}, E[Pi Pi^T] = I,

    K_hat[i, a, j, b] = sum_M eta_M < Pi_M^T phi1(grad_M f_a(x1_i)), Pi_M^T phi2(grad_M f_b(x2_j)) >

over the large tensors; the smallest ones, at most k entries in all (norm weights, biases: a
projection to k dimensions saves nothing on them), enter exactly (``exact_tensors``,
``ExactFeatures``: their own columns after the k sketched ones), so the estimate's variance is
that of the large tensors' part alone.

Pi is never held: rows of Pi_M are generated in blocks from a generator seeded
by (seed, tensor index, block), identically for both sides. Entries are
N(0, 1/k) ("gaussian") or sqrt(s/k) * {+1, 0, -1} with probabilities
{1/2s, 1 - 1/s, 1/2s}, s = 3 ("sparse_sign", Achlioptas 2003). [KV] Lemma D.3:
for ||u||^2, ||v||^2 <= c, Pr[|u.v - h(u).h(v)| >= c eps] <= 4 exp(-(eps^2 - eps^3) k / 4).

"countsketch" (Charikar, Chen and Farach-Colton 2002): Pi_M has one nonzero per
row, coordinate p of tensor M goes to bucket h_M(p) with sign s_M(p), so
(Pi^T g)_j = sum_{p: h(p) = j} s(p) g_p and E[<Pi^T u, Pi^T v>] = <u, v>, with
Var = (||u||^2 ||v||^2 + <u, v>^2 - 2 sum_p u_p^2 v_p^2) / k. h and s are
multiply-add-shift hashes of the coordinate (``count_hash``), their constants
drawn per (seed, tensor): nothing of size P x k exists, and the cost is one
pass over each gradient. The gradients come from the structured capture (per-example
sum_t g_t a_t^T for linear weights, embedding rows as their nonzero rows),
so every tensor the capture covers is sketched without per-example Jacobians. With a feature store
(``feature_dir``, feature_store.py) each example's sketch is kept on disk and read back by later calls
and later kernel functions at the same parameters, so an example is sketched once.

IntrinsicDimension (Def. D.1): theta = theta0 + Pi theta_hat, trained in theta_hat, so
grad_{theta_hat} f = Pi^T grad_theta f and the kernel of optimizer A is
<phi1(Pi^T g_i), phi2(Pi^T g_j)> (the sign is taken after projecting).

LoRA (Lemma D.4): z = x W^T + scale * (x A^T) B^T with B = 0 and A in R^{r x n_in},
A_ij ~ N(0, 1/r); only B moves, grad_B f = scale * sum_t g_t (A a_t)^T, so
K_LoRA = scale^2 sum_W sum_{t,s} <g_t, g_s> <A a_t, A a_s> (= dH dH^T ⊙ X A^T A X^T for one token),
with phi applied to the factors g and A a for sign kinds (single token; the factor scale^2 becomes
|scale| for asym_signgd and 1 for signgd).
"""
from __future__ import annotations

import math
from typing import Callable, Mapping

import torch

from ntkcheck.log import progress_bar
from ntkcheck.models.kernels.common import (DEFAULT_MEMORY_BUDGET, Accumulator, KernelKind, MemoryBudgetError,
                                            Spec, activation_bytes, chunks, group_key, parse_kind,
                                            select_names)
from ntkcheck.models.kernels.jacobian import jacobian_rows, plan_groups
from ntkcheck.models.optim import eps_sign

SKETCHES = ("gaussian", "sparse_sign", "countsketch")
_SPARSITY = 3.0
#: a sketch's capture pass may take budget / SKETCH_PASS_SHARE: it holds one pass's factors at a time (each
#: example is sketched on its own), beside the hash tables (a quarter) and a chunk's gradients (an eighth)
SKETCH_PASS_SHARE = 4
#: examples sketched and kept together when a feature store is given (_stored_side)
STORE_CHUNK = 32


def jl_failure_probability(k: int, eps: float, n_pairs: int = 1) -> float:
    """Union bound of [KV] Lemma D.3: min(1, 4 n_pairs exp(-(eps^2 - eps^3) k / 4))."""
    return min(1.0, 4.0 * n_pairs * math.exp(-(eps * eps - eps ** 3) * k / 4.0))


def jl_epsilon(k: int, n_pairs: int, delta: float) -> float:
    """Smallest eps in (0, 2/3] with jl_failure_probability(k, eps, n_pairs) <= delta (inf if none)."""
    if not 0 < delta < 1:
        raise ValueError(f"delta must be in (0, 1), got {delta}")
    if jl_failure_probability(k, 2 / 3, n_pairs) > delta:
        return math.inf
    lo, hi = 0.0, 2 / 3  # (eps^2 - eps^3) increases on (0, 2/3)
    for _ in range(100):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if jl_failure_probability(k, mid, n_pairs) > delta else (lo, mid)
    return hi


def projection_block(k: int, rows: int, seed: int, tensor: int, block: int, sketch: str,
                     dtype: torch.dtype, device) -> torch.Tensor:
    """Rows [block * rows_per_block, ...) of Pi_M for tensor index ``tensor``: [rows, k], E[Pi Pi^T] = I."""
    gen = torch.Generator().manual_seed((seed * 1_000_003 + tensor * 10_007 + block) % (2**63))
    # entries are drawn in float32 (4x faster than float64 on CPU; any iid draw serves JL) and then cast
    if sketch == "gaussian":
        R = torch.randn(rows, k, generator=gen, dtype=torch.float32).to(dtype) / math.sqrt(k)
    else:
        u = torch.randint(0, int(2 * _SPARSITY), (rows, k), generator=gen, dtype=torch.int8)
        val = math.sqrt(_SPARSITY / k)
        R = ((u == 0).to(dtype) - (u == 1).to(dtype)) * val  # +-val with probability 1/(2s) each
    return R.to(device=device)


def count_hash(coords: torch.Tensor, k: int, seed: int, tensor: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(bucket h(p) in [0, k), sign s(p) in {-1, +1}) of coordinates p (int64, any shape) of tensor ``tensor``.

    Multiply-add-shift hashing (Dietzfelbinger 1996) in 64-bit arithmetic modulo 2^64 (int64 products
    wrap): with odd a and any b drawn from (seed, tensor), h(p) = floor(k * hi32(a p + b) / 2^32) from the
    high 32 bits, and s(p) = the top bit of c p + d from an independent (c, d), so pairs of coordinates
    collide with probability ~1/k and their signs are uncorrelated. (A small-multiplier hash mod a prime
    is not: for p below 2^61 / a no reduction happens and s(p) follows the parity of p.)"""
    g = torch.Generator().manual_seed((seed * 1_000_003 + tensor * 10_007 + 77) % (2**63))
    a, b, c, d = (int(v) for v in torch.randint(-(2**63), 2**63 - 1, (4,), generator=g, dtype=torch.int64))
    a, c = a | 1, c | 1
    p = coords.to(torch.int64)
    hi = torch.bitwise_and(torch.bitwise_right_shift(p * a + b, 32), 0xFFFFFFFF)
    bucket = torch.bitwise_right_shift(hi * k, 32)
    sign = torch.bitwise_and(torch.bitwise_right_shift(p * c + d, 63), 1) * 2 - 1
    return bucket, sign


class CountSketch:
    """Pi_M^T g for every tensor M of one call, hash tables of a tensor's coordinates cached while they fit."""

    def __init__(self, k: int, seed: int, index: Mapping[str, int], dtype, device, cache_bytes: int):
        self.k, self.seed, self.index, self.dtype, self.device = k, seed, index, dtype, device
        self.cache_bytes, self.used = cache_bytes, 0
        self.tables: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def table(self, name: str, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        got = self.tables.get(name)
        if got is not None:
            return got
        bucket, sign = count_hash(torch.arange(size, device=self.device), self.k, self.seed, self.index[name])
        got = (bucket, sign.to(self.dtype))
        nbytes = size * (bucket.element_size() + got[1].element_size())
        if self.used + nbytes <= self.cache_bytes:
            self.tables[name] = got
            self.used += nbytes
        return got

    def add_dense(self, out: torch.Tensor, name: str, G: torch.Tensor, overwrite: bool = False) -> None:
        """out [R, k] += G [R, |M|] Pi_M (``overwrite``: G may be used as scratch)."""
        bucket, sign = self.table(name, G.shape[1])
        out.index_add_(1, bucket, G.mul_(sign) if overwrite else G * sign)

    def add_sparse(self, out: torch.Tensor, name: str, coords: torch.Tensor, vals: torch.Tensor) -> None:
        """out [R, k] += the sketch of rows whose nonzeros sit at ``coords`` [R, m] with values ``vals`` [R, m]."""
        bucket, sign = count_hash(coords, self.k, self.seed, self.index[name])
        out.scatter_add_(1, bucket, vals * sign.to(vals.dtype))


def exact_tensors(sizes: Mapping[str, int], keys: Mapping[str, str], k: int) -> list[str]:
    """The tensors a sketch keeps exactly: per key, its smallest tensors (ties in the given order) for as
    long as their sizes sum to at most k, so a key's features are at most 2k wide."""
    by_key: dict[str, list[str]] = {}
    for m in sizes:
        by_key.setdefault(keys[m], []).append(m)
    chosen = set()
    for names in by_key.values():
        total = 0
        for m in sorted(names, key=lambda m: sizes[m]):   # stable: ties keep the given order
            if total + sizes[m] > k:
                break
            total += sizes[m]
            chosen.add(m)
    return [m for m in sizes if m in chosen]


class ExactFeatures:
    """The small tensors kept exactly (``exact_tensors``: a key's smallest, at most k entries in all: norm
    weights, biases): each gets its own columns after the k sketched ones, so its part of the kernel has
    no variance. Projecting them would add variance and save little: on SmolLM2-135M the 61 RMSNorm weights
    (35,136 entries, 0.03% of the parameters) carry 30% of the SGD gradient's squared norm, and keeping
    them exact lowers the predicted median relative std of the entries from 0.73% to 0.51% at k = 2^17.
    (Every tensor of at most k entries would be too many there: the 60 key and value projections have
    110,592 entries each: 6.6M exact columns, 10 GB of features for 164 + 32 examples, a 14.4 GB peak
    against a 9.1 GB budget, measured.)

    Same interface as CountSketch (add_dense, add_sparse), writing into a key's feature matrix after
    its k sketched columns; ``columns(key)`` is the matrix's width, ``offset[name]`` a tensor's first column."""

    def __init__(self, k: int, names, sizes: Mapping[str, int], keys: Mapping[str, str]):
        self.k = k
        self.offset: dict[str, int] = {}   # first column of a tensor, counted from column k
        self.width: dict[str, int] = {}
        for m in names:
            key = keys[m]
            self.offset[m] = k + self.width.get(key, 0)
            self.width[key] = self.offset[m] - k + sizes[m]

    def __contains__(self, name: str) -> bool:
        return name in self.offset

    def columns(self, key: str) -> int:
        """k sketched columns plus the exact ones of the key's small tensors."""
        return self.k + self.width.get(key, 0)

    def add_dense(self, out: torch.Tensor, name: str, G: torch.Tensor, overwrite: bool = False) -> None:
        """out's columns of ``name`` += G [R, |M|]."""
        o = self.offset[name]
        out[:, o: o + G.shape[1]] += G

    def add_sparse(self, out: torch.Tensor, name: str, coords: torch.Tensor, vals: torch.Tensor) -> None:
        """out's columns of ``name`` += rows whose nonzeros sit at ``coords`` [R, m] with values ``vals``."""
        o = self.offset[name]
        out.scatter_add_(1, coords + o, vals)


def project(G: torch.Tensor, k: int, seed: int, tensor: int, sketch: str, block_rows: int) -> torch.Tensor:
    """G @ Pi_M: [R, |M|] -> [R, k], generating Pi_M block by block (for countsketch, its hash)."""
    if sketch == "countsketch":
        out = torch.zeros(G.shape[0], k, dtype=G.dtype, device=G.device)
        bucket, sign = count_hash(torch.arange(G.shape[1], device=G.device), k, seed, tensor)
        return out.index_add_(1, bucket, G * sign.to(G.dtype))
    out = torch.zeros(G.shape[0], k, dtype=G.dtype, device=G.device)
    for bi, s in enumerate(chunks(G.shape[1], block_rows)):
        out += G[:, s] @ projection_block(k, s.stop - s.start, seed, tensor, bi, sketch, G.dtype, G.device)
    return out


def _check_sketch(k, sketch):
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"sketch_dim must be a positive integer, got {k!r}")
    if sketch not in SKETCHES:
        raise ValueError(f"sketch must be one of {SKETCHES}, got {sketch!r}")
    if sketch == "countsketch" and k >= 2**31:
        raise ValueError(f"sketch_dim {k} for countsketch must be below 2^31")


def _projected(f, params, x, c, names, index, spec: Spec, k, sketch, seed, phi, by_key=True,
               exact: ExactFeatures | None = None):
    """{key: [N C, k]} = sum_{M in key} scale_M Pi_M^T phi(grad_M f(x)) (phi(name, g) or None); with
    ``exact``, [N C, exact.columns(key)]: its tensors' phi(grad_M f(x)) unprojected in their own columns."""
    n = x.shape[0]
    act = activation_bytes(f, params, x[:1]) * (1 + c)
    block_rows = max(1, (spec.budget // 8) // (k * spec.itemsize))
    out: dict[str, torch.Tensor] = {}
    for group in plan_groups(params, names, c, spec):
        p = sum(params[m].numel() for m in group)
        b = max(1, spec.budget // (4 * (c * p * spec.itemsize + act)))
        for s in chunks(n, b):
            J = jacobian_rows(f, params, group, x[s])
            for m in group:
                g = J[m].reshape(-1, J[m].shape[-1])
                g = phi(m, g) if phi is not None else g
                key = group_key(m, spec.decompose) if by_key else "total"
                if key not in out:
                    width = k if exact is None else exact.columns(key)
                    out[key] = torch.zeros(n * c, width, dtype=spec.dtype, device=spec.device)
                if exact is not None and m in exact:
                    exact.add_dense(out[key][s.start * c: s.stop * c], m, g)
                else:
                    out[key][s.start * c: s.stop * c, :k] += project(g, k, seed, index[m], sketch, block_rows)
            del J
    return out


def _countsketch_structured(f, params, x, c, cover, probed, spec: Spec, cs: CountSketch, phi, keys,
                            side: int, weight: Mapping[str, float], exact: ExactFeatures) -> dict:
    """{key: [N C, exact.columns(key)]} = sum_{M in key} Pi_M^T phi(grad_M f(x)) for the tensors the
    structured capture covers (the small ones in ``exact`` unprojected in their own columns): per-example
    gradients formed from the captured factors a chunk of examples at a time (linear weights by one
    batched matmul, embedding tables as their nonzero rows), each sketched in one pass."""
    from ntkcheck.models.kernels.structured import (Scratch, capture, capture_example_bytes, capture_pass_bytes,
                                                    capture_passes, phi_inplace, tied_gradients, tied_rows, views,
                                                    weight_gradients)

    scratch = spec.extra.setdefault("scratch", Scratch())

    n = x.shape[0]
    per_ex = probed[1]
    # one capture pass at a time (capture_passes): each example is sketched on its own, so nothing gains
    # from holding more examples' factors than a pass's
    pass_cost = capture_example_bytes(f, params, cover, x, c)
    pass_bytes = max(pass_cost, capture_pass_bytes(spec.device, spec.budget, share=SKETCH_PASS_SHARE))
    if per_ex > spec.budget // 4:
        raise MemoryBudgetError(f"one example's captured factors take {per_ex:,} bytes, more than a quarter of the "
                                f"memory budget of {spec.budget:,} bytes: give a larger memory_budget (--memory-gb) "
                                f"or shorter inputs (--max-length)")
    out: dict[str, torch.Tensor] = {}
    trim = spec.extra.get("trim")
    for s in capture_passes(x, trim, pass_bytes, pass_cost):
        cap = capture(f, params, cover, x[s] if trim is None else trim(x[s]), c)
        lost = [m for m in cover if m not in cap.weights and m not in cap.vectors and m not in cap.embeddings]
        if lost:
            raise ValueError(f"tensors {lost[:4]} were not captured on a batch of {x[s].shape[0]}")
        rows = slice(s.start * c, s.stop * c)
        for m, (form, val) in views(cap, cover).items():
            key = keys[m]
            if key not in out:
                out[key] = torch.zeros(n * c, exact.columns(key), dtype=spec.dtype, device=spec.device)
            target = out[key][rows]
            sk = exact if m in exact else cs
            if form == "v":
                sk.add_dense(target, m, phi(m, val.reshape(-1, val.shape[-1])))
            elif form == "e":
                ids, R = val  # [b, T], [b, C, T, d]; rows not kept are zero
                bsz, _, T, d = R.shape
                coords = (ids[:, None, :, None] * d + torch.arange(d, device=ids.device)).expand(bsz, c, T, d)
                sk.add_sparse(target, m, coords.reshape(bsz * c, -1), phi(m, R).reshape(bsz * c, -1))
            elif form == "t":   # a tied embedding / LM head: only the rows the examples touch
                d = params[m].shape[1]
                step = max(1, (spec.budget // 8) // max(1, c * params[m].numel() * spec.itemsize))
                for t in chunks(val[1][0].shape[0], step):
                    rows_t = tied_rows(val[0], val[1], t)
                    G = phi(m, tied_gradients(val[0], val[1], t, rows_t))
                    coords = (rows_t[:, None] * d + torch.arange(d, device=rows_t.device)).reshape(1, -1)
                    sk.add_sparse(target[t.start * c: t.stop * c], m, coords.expand(G.shape[0], -1), G)
            else:
                a, g = val
                # a few examples at a time: their dense [C, |M|] gradients within an eighth of the budget,
                # formed in a reused buffer, signed, weighted and hashed in place
                size = params[m].numel()
                step = max(1, (spec.budget // 8) // max(1, c * size * spec.itemsize))
                for t in chunks(a.shape[0], step):
                    G = weight_gradients(g, a, t, out=scratch.take("g", ((t.stop - t.start) * c * size,),
                                                                      spec.dtype, spec.device))
                    G = phi_inplace(spec, side, m, G)
                    if weight[m] != 1.0:
                        G.mul_(weight[m])
                    sk.add_dense(target[t.start * c: t.stop * c], m, G, overwrite=True)
        cap = val = a = g = G = None    # this pass's factors freed before the next pass is captured
    return out


def side_key(x: torch.Tensor, spec: Spec) -> tuple:
    """What the x2 side's sketch features depend on within one kernel function and its own parameters: x2's
    bytes (after the length order) and the per-tensor eps of sign kinds (eps="auto" is resolved per call)."""
    import hashlib

    digest = hashlib.sha256(x.detach().contiguous().cpu().reshape(-1).view(torch.uint8).numpy().tobytes()).hexdigest()
    return (tuple(x.shape), str(x.dtype), digest, tuple(sorted(spec.eps.items())))


def _remembered_side(spec: Spec, x2: torch.Tensor, compute: Callable[[], dict]) -> dict:
    """The x2 side's features {key: [N2 C, k']}, reused from the previous call of the same kernel function
    when x2, eps and the parameters are the same (KernelFn passes ``spec.extra["side_memo"]`` = (memo dict,
    its parameters' identity and versions) only for calls at its own parameters). A language model's kernel
    is computed in blocks of rows against one set of columns, which would otherwise be captured again for
    every block. The features are held only while they fit in a quarter of the budget."""
    held = spec.extra.get("side_memo")
    if held is None:
        return compute()
    memo, params_key = held
    key = (params_key, side_key(x2, spec))
    if memo.get("key") == key:
        return memo["value"]
    memo.clear()
    value = compute()
    if sum(v.numel() * v.element_size() for v in value.values()) <= spec.budget // 4:
        memo.update(key=key, value=value)
    return value


def _rows_in(x1: torch.Tensor, x2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(i1, i2, rest): x1[i1] equals x2[i2] byte for byte (the first such row of x2), rest the rows of x1
    found in no row of x2. Rows are compared whole, padding included (one encoded batch sliced into rows and
    columns pads both alike); rows padded differently are simply not shared."""
    if tuple(x1.shape[1:]) != tuple(x2.shape[1:]) or x1.dtype != x2.dtype:
        return torch.empty(0, dtype=torch.long), torch.empty(0, dtype=torch.long), torch.arange(x1.shape[0])
    as_bytes = lambda x: [r.tobytes() for r in x.detach().contiguous().cpu().reshape(x.shape[0], -1)  # noqa: E731
                          .view(torch.uint8).numpy()]
    where: dict[bytes, int] = {}
    for j, b in enumerate(as_bytes(x2)):
        where.setdefault(b, j)
    i1, i2, rest = [], [], []
    for i, b in enumerate(as_bytes(x1)):
        if b in where:
            i1.append(i)
            i2.append(where[b])
        else:
            rest.append(i)
    t = lambda v: torch.tensor(v, dtype=torch.long)  # noqa: E731
    return t(i1), t(i2), t(rest)


def _gather_rows(S2: dict, shared, S_rest: dict | None, n1: int, c: int) -> dict:
    """x1's features [n1 C, k'] per key: the shared rows' from S2 (rows i2 C .. i2 C + C - 1), the others'
    from S_rest (x1[rest]'s, in that order)."""
    i1, i2, rest = shared
    per_class = lambda idx: (idx[:, None] * c + torch.arange(c)).reshape(-1)  # noqa: E731
    out = {}
    for key, A2 in S2.items():
        A1 = A2.new_empty((n1 * c, A2.shape[1]))
        A1[per_class(i1).to(A2.device)] = A2[per_class(i2).to(A2.device)]
        if rest.numel():
            A1[per_class(rest).to(A2.device)] = S_rest[key]
        out[key] = A1
    return out


def _feature_config(spec: Spec, k: int, sketch: str, seed: int, side, weight: Mapping[str, float],
                    sizes: Mapping[str, int]) -> str:
    """The digest of what one side's features S(x) depend on besides x and the parameters' values
    (feature_store): the projection (k, sketch, seed), phi (the kind, the side, eps, the weights) and the
    tensors with their sizes (which also fix the exact columns), and the dtype."""
    import hashlib

    desc = repr((k, sketch, seed, spec.kind.name, side, sorted(spec.eps.items()), sorted(weight.items()),
                 [(m, sizes[m]) for m in spec.names], str(spec.dtype)))
    return hashlib.sha256(desc.encode()).hexdigest()[:16]


def _stored_side(store, config: str, x: torch.Tensor, c: int, spec: Spec,
                 sketch_rows: Callable[[torch.Tensor], dict]) -> dict:
    """{key: [N C, k']} of x's examples: those the store holds read back (one at a time, into the output), the
    others sketched STORE_CHUNK at a time (sketch_rows(indices)) and kept after each chunk."""
    from ntkcheck.models.kernels.feature_store import example_digest

    n = x.shape[0]
    if n == 0:
        return sketch_rows(torch.zeros(0, dtype=torch.long, device=x.device))
    trim = spec.extra.get("trim")
    digests = [example_digest(x[i:i + 1], trim) for i in range(n)]
    out: dict[str, torch.Tensor] | None = None
    miss = []
    for i, d in enumerate(digests):
        held = store.load(config, d)
        if held is None:
            miss.append(i)
            continue
        if out is None:
            out = {key: torch.empty(n * c, v.shape[1], dtype=spec.dtype, device=spec.device) for key, v in held.items()}
        for key, v in held.items():
            out[key][i * c:(i + 1) * c] = v
    if not miss:
        return out
    # sketched and kept a few examples at a time: an interrupted side loses one chunk, not the side
    bar = progress_bar(total=len(miss), desc=f"sketching {len(miss)} examples", unit="example",
                       disable=len(miss) <= STORE_CHUNK)
    for part in chunks(len(miss), STORE_CHUNK):
        idx = miss[part]
        fresh = sketch_rows(torch.tensor(idx, dtype=torch.long, device=x.device))
        store.save(config, [digests[i] for i in idx],
                   [{key: v[j * c:(j + 1) * c] for key, v in fresh.items()} for j in range(len(idx))])
        if out is None:
            out = {key: torch.empty(n * c, v.shape[1], dtype=spec.dtype, device=spec.device)
                   for key, v in fresh.items()}
        at = (torch.tensor(idx)[:, None] * c + torch.arange(c)).reshape(-1).to(spec.device)
        for key, v in fresh.items():
            out[key][at] = v
        bar.update(len(idx))
    bar.close()
    return out


def sketch_kernel(f: Callable, params: Mapping[str, torch.Tensor], x1: torch.Tensor, x2: torch.Tensor | None,
                  c: int, spec: Spec, acc: Accumulator, plan=None) -> None:
    """Adds the sketched kernel (module docstring) into ``acc``: an unbiased estimate of the exact one.

    spec.extra holds sketch_dim (k), sketch ("gaussian" | "sparse_sign") and seed."""
    k, sketch, seed = spec.extra.get("sketch_dim"), spec.extra.get("sketch", "gaussian"), spec.extra.get("seed", 0)
    if k is None:
        raise ValueError("method 'sketch' needs sketch_dim (the projection dimension k), got None")
    _check_sketch(k, sketch)
    index = {m: i for i, m in enumerate(params)}
    eta = spec.weights
    nonneg = all(v >= 0 for v in eta.values())
    # sqrt(eta) on both sides keeps a symmetric kind's sketch symmetric PSD; otherwise eta on the x1 side
    w1 = {m: math.sqrt(v) if nonneg else v for m, v in eta.items()}
    w2 = {m: math.sqrt(v) if nonneg else 1.0 for m, v in eta.items()}
    phi1 = lambda m, g: w1[m] * spec.phi1(m, g)
    phi2 = lambda m, g: w2[m] * spec.phi2(m, g)
    first = {}
    for m in spec.names:
        first.setdefault(group_key(m, spec.decompose), m)
    keyed = {m: group_key(m, spec.decompose) for m in spec.names}
    cs = CountSketch(k, seed, index, spec.dtype, spec.device, spec.budget // 4)
    sizes = {m: params[m].numel() for m in spec.names}
    exact = ExactFeatures(k, exact_tensors(sizes, keyed, k), sizes, keyed)
    # the structured capture's probe (a few examples' passes), taken when an example is first sketched, not
    # when every one is read back from a feature store; one per padded input shape
    probes: dict[tuple, tuple | None] = {}

    def probed_for(x) -> tuple | None:
        from ntkcheck.models.kernels.structured import probe

        shape = tuple(x.shape[1:])
        if shape in probes:
            return probes[shape]
        if sketch != "countsketch":
            pr = None
        elif not probes:
            try:
                pr = probe(f, params, spec.names, x, c)
            except (RuntimeError, TypeError, IndexError, NotImplementedError):
                pr = None
            pr = pr if pr is not None and pr[0] else None
        else:   # another padded length: the tensors covered at the first must be covered here too
            first_pr = next(iter(probes.values()))
            if first_pr is None:
                pr = None
            else:
                pr = probe(f, params, first_pr[0], x, c)
                lost = [m for m in first_pr[0] if m not in set(pr[0])]
                if lost:
                    raise ValueError(f"tensors {lost[:4]} are captured for inputs of shape {next(iter(probes))} "
                                     f"but not of shape {shape}; use sketch='gaussian'")
        probes[shape] = pr
        return pr

    store = spec.extra.get("feature_store")
    same_phi = spec.kind.symmetric and nonneg    # then an example's x1 features are its x2 features

    def sketched(x, phi, whole=None):
        """The features of x; ``whole``: the side x is a chunk of, probed in its place (2 and 3 examples)."""
        out = {}
        pr = probed_for(x if whole is None else whole)
        cover = list(pr[0]) if pr is not None else []
        if cover:
            out = _countsketch_structured(f, params, x, c, cover, pr, spec, cs, phi, keyed,
                                          1 if phi is phi1 else 2, w1 if phi is phi1 else w2, exact)
        rest = [m for m in spec.names if m not in set(cover)]
        if rest:
            for key, v in _projected(f, params, x, c, rest, index, spec, k, sketch, seed, phi,
                                     exact=exact).items():
                out[key] = out[key] + v if key in out else v
        return out

    def side(x, phi):
        if store is None:
            return sketched(x, phi)
        config = _feature_config(spec, k, sketch, seed, "both" if same_phi else (1 if phi is phi1 else 2),
                                 w1 if phi is phi1 else w2, sizes)
        return _stored_side(store, config, x, c, spec, lambda idx: sketched(x[idx], phi, whole=x))

    shared = _rows_in(x1, x2) if same_phi and x2 is not None else None
    if shared is not None and shared[0].numel():
        # rows that are also columns (how `ntkcheck lm` orders its rows: the training examples first, so its
        # first block holds them all) take the columns' features: each example is sketched once
        S2 = _remembered_side(spec, x2, lambda: side(x2, phi2))
        S1 = _gather_rows(S2, shared, side(x1[shared[2]], phi1) if shared[2].numel() else None, x1.shape[0], c)
    else:
        S1 = side(x1, phi1)
        if x2 is None and same_phi:
            S2 = S1
        elif x2 is None:
            S2 = side(x1, phi2)
        else:
            S2 = _remembered_side(spec, x2, lambda: side(x2, phi2))
    n1 = x1.shape[0]
    n2 = n1 if x2 is None else x2.shape[0]
    for key, A in S1.items():
        acc.add_unweighted(first[key], (A @ S2[key].T).reshape(n1, c, n2, c))


def intrinsic_dimension_kernel(f: Callable, params: Mapping[str, torch.Tensor], x1: torch.Tensor,
                               x2: torch.Tensor | None = None, *, dim: int, kind: str = "sgd",
                               eps: float = 0.0, select=None, seed: int = 0, sketch: str = "gaussian",
                               memory_budget: int | None = None, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Kernel of A-IntrinsicDimension FT ([KV] Def. D.1): <phi1(Pi^T g(x1_i)), phi2(Pi^T g(x2_j))> -> [N1, C, N2, C].

    Pi in R^{P x dim} over the selected tensors (entries N(0, 1/dim) for "gaussian"),
    g = grad_theta f_a; phi from ``kind`` (sign / eps-sign applied to the dim-vector).
    """
    from ntkcheck.models.kernels.api import _as_2d, _output_dim, _prepare

    kind = parse_kind(kind)
    _check_sketch(dim, sketch)
    if eps < 0:
        raise ValueError(f"eps must be >= 0, got {eps}")
    params, x1, x2, dt, dev = _prepare(params, x1, x2, dtype, None)
    f = _as_2d(f)
    names = select_names(params, select)
    c = _output_dim(f, params, x1)
    spec = Spec(kind=KernelKind.SGD, names=names, weights={m: 1.0 for m in names}, eps={m: 0.0 for m in names},
                dtype=dt, device=dev, budget=int(memory_budget or DEFAULT_MEMORY_BUDGET))
    index = {m: i for i, m in enumerate(params)}
    S1 = _projected(f, params, x1, c, names, index, spec, dim, sketch, seed, None, by_key=False)["total"]
    S2 = S1 if x2 is None else _projected(f, params, x2, c, names, index, spec, dim, sketch, seed, None,
                                          by_key=False)["total"]
    sgn = lambda v: eps_sign(v, eps)  # noqa: E731
    A = sgn(S1) if kind is KernelKind.SIGNGD else S1
    B = S2 if kind is KernelKind.SGD else sgn(S2)
    n1 = x1.shape[0]
    return (A @ B.T).reshape(n1, c, B.shape[0] // c, c)


def lora_kernel(f: Callable, params: Mapping[str, torch.Tensor], x1: torch.Tensor, x2: torch.Tensor | None = None,
                *, rank: int = 8, scale: float = 1.0, kind: str = "sgd", select=None, seed: int = 0,
                memory_budget: int | None = None, dtype: torch.dtype | None = None,
                projections: Mapping[str, torch.Tensor] | None = None) -> torch.Tensor:
    """Kernel of LoRA FT at B = 0 ([KV] Lemma D.4), summed over the adapted linear weights -> [N1, C, N2, C]:

        K(x, x') = scale^2 sum_W sum_{t, t'} <g_t(x), g_t'(x')> <A_W a_t(x), A_W a_t'(x')>

    for W's layer inputs a_t and output gradients g_t (sgd; the sign kinds sign the B-gradients g a^T A^T).
    Adapted: every selected 2-D weight used by torch.nn.functional.linear (ParamLinear, nn.Linear);
    A_W ~ N(0, 1/rank) seeded per weight, or ``projections[W]`` [rank, fan_in] when given (e.g. a peft
    adapter's lora_A). Sign kinds need single-token inputs (ValueError otherwise).
    """
    from ntkcheck.models.kernels.api import _as_2d, _output_dim, _prepare
    from ntkcheck.models.kernels.structured import _factors, _weight_block, capture, covered

    kind = parse_kind(kind)
    if not isinstance(rank, int) or rank < 1:
        raise ValueError(f"rank must be a positive integer, got {rank!r}")
    params, x1, x2, dt, dev = _prepare(params, x1, x2, dtype, None)
    f = _as_2d(f)
    names = select_names(params, select)
    c = _output_dim(f, params, x1)
    cap1 = capture(f, params, names, x1, c)
    adapted = [m for m in covered(cap1, params, names) if m in cap1.weights]
    if not adapted:
        raise ValueError(f"no selected tensor of {names} is a weight used by a linear layer; nothing to adapt")
    cap2 = cap1 if x2 is None else capture(f, params, adapted, x2, c)
    spec = Spec(kind=kind, names=adapted, weights={m: 1.0 for m in adapted}, eps={m: 0.0 for m in adapted},
                dtype=dt, device=dev, budget=int(memory_budget or DEFAULT_MEMORY_BUDGET))
    index = {m: i for i, m in enumerate(params)}
    K = None
    for m in adapted:
        a1, g1 = _factors(cap1, m)
        a2, g2 = _factors(cap2, m)
        if kind is not KernelKind.SGD and (a1.shape[1] > 1 or a2.shape[1] > 1):
            raise ValueError(f"lora_kernel with kind {kind.value!r} needs single-token inputs; {m!r} sees "
                             f"{a1.shape[1]} tokens")
        if projections is not None and m in projections:
            A = projections[m].to(dtype=dt, device=dev)
            if A.shape != (rank, a1.shape[-1]):
                raise ValueError(f"projections[{m!r}] has shape {tuple(A.shape)}, expected {(rank, a1.shape[-1])}")
        else:
            A = projection_block(rank, a1.shape[-1], seed, index[m], 0, "gaussian", dt, dev).T  # [rank, n_in]
        blk = _weight_block(spec, m, (a1 @ A.T, g1), (a2 @ A.T, g2))
        K = blk if K is None else K + blk
    # grad_B f = scale * (...): the sign drops the scale on a signed side
    factor = {KernelKind.SGD: scale ** 2, KernelKind.ASYM_SIGNGD: abs(scale), KernelKind.SIGNGD: 1.0}[kind]
    return factor * K
