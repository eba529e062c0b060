"""STRUCTURED method: Gram blocks from layer inputs and output gradients (Novak et al. 2022; [KV] Lemma D.4).

For z = x W^T (torch.nn.functional.linear; ParamLinear applies its multiplier
after it, so grad_W f = sum over uses u and tokens t of g_{u,t} a_{u,t}^T with
g = df/dz and a = x exactly, whatever the multiplier):

    sgd:          K_W[i,a,j,b] = sum_{t,s} <g^a_{i,t}, g^b_{j,s}> <a_{i,t}, a_{j,s}>
    single token: K_W = <g^a_i, g^b_j> <a_i, a_j>                            (Lemma D.4)
                  signgd:      <sign g^a_i, sign g^b_j> <sign a_i, sign a_j>
                  asym_signgd: <g^a_i, sign g^b_j> <a_i, sign a_j>
    (exact because sign(g a^T) = sign(g) sign(a)^T). For several tokens with a
    sign kind, or eps-sign, the per-example gradient sum_t g_t a_t^T is formed
    from the captured factors, chunked under the budget, and contracted exactly.

Vector tensors are captured too and their per-example gradients formed
directly: a linear's bias (sum_t g_t), a LayerNorm's weight and bias
(sum_t g_t * xhat_t, sum_t g_t), an elementwise scale ``w * x`` (RMSNorm's
weight in Llama-style models: sum_t g_t * x_t), and a bias added as
``z + m * b`` with a scalar m (ParamLinear): m sum_t g_t. Uses that return no
floating tensor (metadata such as ``w.is_floating_point()``) carry no gradient
and are ignored. Embedding tables (F.embedding) are
captured as their nonzero gradient rows (one per distinct id, padding_idx
excluded): K_E = sum_{t,s} [id_t = id'_s] <phi1(R_t), phi2(R'_s)>, exact for every kind.

Capture: one forward pass of the batch under a TorchFunctionMode that adds a
zero tensor delta to the output of every captured op and records its input;
then C backward passes give g = d f_a / d delta for all layers at once.
A table used by both F.embedding and F.linear (tied LM head) is covered too:
for sgd from the factors, <E + L, E' + L'> with the cross terms
<E_i, L_j> = sum_{t,s} g_{j,s}[id_{i,t}] <R_{i,t}, a_{j,s}>; for sign kinds by
forming E + L per example. Tensors used any other way (matmuls on
parameters, inputs without a leading batch axis -- checked by probing two
batch sizes) fall back to JACOBIAN. Examples must be independent
(no batch statistics).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Mapping

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten

from ntkcheck.models.kernels.common import (Accumulator, KernelKind, MemoryBudgetError, Spec, chunks,
                                            saved_storages)
from ntkcheck.models.kernels.jacobian import jacobian_kernel
from ntkcheck.models.kernels.packed import (float_sign_matmul, pack_bits, pack_int8_signs, sign_matmul,
                                            unpack_float, unpack_int8)

_ADD = {torch.add, torch.Tensor.add, torch.Tensor.__add__, torch.Tensor.__radd__}
_MUL = {torch.mul, torch.Tensor.mul, torch.Tensor.__mul__, torch.Tensor.__rmul__}


@dataclass
class Captured:
    """Factors of one batch: weights[name] = [(a [B, T, n_in], g [B, C, T, n_out])] per use; vectors[name]:
    the per-example gradient [B, C, |M|]; other: tensors used in ways not covered."""

    weights: dict[str, list] = field(default_factory=dict)
    vectors: dict[str, torch.Tensor] = field(default_factory=dict)
    embeddings: dict[str, list] = field(default_factory=dict)
    other: set = field(default_factory=set)
    signature: dict[str, list] = field(default_factory=dict)  # per use: the op's input shape without the batch


class _Mode(TorchFunctionMode):
    def __init__(self, ids: dict[int, str], batch: int):
        super().__init__()
        self.ids, self.batch = ids, batch
        self.deltas: list[torch.Tensor] = []
        self.wrec: list[tuple[str, torch.Tensor, int]] = []      # (name, input, delta index)
        self.erec: list[tuple[str, torch.Tensor, int | None, int]] = []  # (name, ids, padding_idx, delta index)
        self.vrec: list[tuple[str, torch.Tensor | None, float, int]] = []  # (name, feature, factor, delta index)
        self.derived: dict[int, tuple[str, float, torch.Tensor]] = {}
        self.other: set[str] = set()
        self.sig: dict[str, list] = {}

    def _sign(self, name: str, t: torch.Tensor) -> None:
        self.sig.setdefault(name, []).append(tuple(t.shape[1:]))

    def _delta(self, z: torch.Tensor) -> torch.Tensor:
        d = torch.zeros_like(z, requires_grad=True)
        self.deltas.append(d)
        return z + d

    def _batched(self, t) -> bool:
        return isinstance(t, torch.Tensor) and t.dim() >= 2 and t.shape[0] == self.batch

    def _mark_other(self, args, kwargs):
        for t in tree_flatten((args, kwargs))[0]:
            if isinstance(t, torch.Tensor):
                n = self.ids.get(id(t))
                if n is not None:
                    self.other.add(n)
                elif id(t) in self.derived:
                    self.other.add(self.derived[id(t)][0])

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.linear:
            x = args[0] if args else kwargs.get("input")
            w = args[1] if len(args) > 1 else kwargs.get("weight")
            b = args[2] if len(args) > 2 else kwargs.get("bias")
            wn, bn = self.ids.get(id(w)), (self.ids.get(id(b)) if b is not None else None)
            if (wn or bn) and self._batched(x) and self.ids.get(id(x)) is None:
                z = self._delta(func(*args, **kwargs))
                k = len(self.deltas) - 1
                if wn:
                    self.wrec.append((wn, x.detach(), k))
                    self._sign(wn, x)
                if bn:
                    self.vrec.append((bn, None, 1.0, k))
                    self._sign(bn, x)
                return z
        elif func is F.embedding:
            ids = args[0] if args else kwargs.get("input")
            w = args[1] if len(args) > 1 else kwargs.get("weight")
            wn = self.ids.get(id(w))
            pad = args[2] if len(args) > 2 else kwargs.get("padding_idx")
            plain = (len(args) <= 3 and kwargs.get("max_norm") is None and not kwargs.get("scale_grad_by_freq", False)
                     and not kwargs.get("sparse", False))
            if wn and plain and isinstance(ids, torch.Tensor) and ids.dim() >= 1 and self.ids.get(id(ids)) is None:
                if ids.shape[0] == 1 and self.batch > 1:
                    ids = ids.expand(self.batch, *ids.shape[1:])  # shared ids (positions): one row per example
                if ids.shape[0] == self.batch:
                    z = self._delta(F.embedding(ids, w, pad))
                    if pad is not None and pad < 0:
                        pad = w.shape[0] + pad
                    self.erec.append((wn, ids.reshape(self.batch, -1), pad, len(self.deltas) - 1))
                    self._sign(wn, ids)
                    return z
        elif func is F.layer_norm:
            x, shape = args[0], args[1]
            w = args[2] if len(args) > 2 else kwargs.get("weight")
            b = args[3] if len(args) > 3 else kwargs.get("bias")
            eps = args[4] if len(args) > 4 else kwargs.get("eps", 1e-5)
            wn = self.ids.get(id(w)) if w is not None else None
            bn = self.ids.get(id(b)) if b is not None else None
            if (wn or bn) and self._batched(x) and len(tuple(shape)) == 1:
                xhat = F.layer_norm(x, shape, None, None, eps)
                y = xhat * w if w is not None else xhat
                y = self._delta(y + b if b is not None else y)
                k = len(self.deltas) - 1
                if wn:
                    self.vrec.append((wn, xhat.detach(), 1.0, k))
                    self._sign(wn, x)
                if bn:
                    self.vrec.append((bn, None, 1.0, k))
                    self._sign(bn, x)
                return y
        elif func in _MUL and len(args) == 2 and not kwargs:
            t, s = (args[0], args[1]) if isinstance(args[0], torch.Tensor) else (args[1], args[0])
            n = self.ids.get(id(t)) if isinstance(t, torch.Tensor) else None
            if n is None and isinstance(s, torch.Tensor) and self.ids.get(id(s)) is not None:
                t, s, n = s, t, self.ids[id(s)]
            if n is not None and isinstance(s, (int, float)):
                out = func(*args)
                self.derived[id(out)] = (n, float(s), out)
                return out
            if (n is not None and t.dim() == 1 and self._batched(s) and s.shape[-1] == t.shape[0]
                    and self.ids.get(id(s)) is None and id(s) not in self.derived):
                # an elementwise scale w * x (RMSNorm's weight, T5/Llama): grad_w f = sum_t g_t * x_t
                y = self._delta(func(*args))
                self.vrec.append((n, s.detach(), 1.0, len(self.deltas) - 1))
                self._sign(n, s)
                return y
        elif func in _ADD and len(args) == 2 and not kwargs:
            src = None
            for i in (0, 1):
                t, o = args[i], args[1 - i]
                if not isinstance(t, torch.Tensor) or not isinstance(o, torch.Tensor):
                    continue
                if id(t) in self.derived:
                    src = (self.derived[id(t)][0], self.derived[id(t)][1], t, o)
                elif self.ids.get(id(t)) is not None:
                    src = (self.ids[id(t)], 1.0, t, o)
                if src is not None:
                    break
            if src is not None:
                n, m, t, o = src
                if (self._batched(o) and self.ids.get(id(o)) is None and id(o) not in self.derived
                        and t.dim() == 1 and o.shape[-1] == t.shape[0]):
                    y = self._delta(func(*args))
                    self.vrec.append((n, None, m, len(self.deltas) - 1))
                    self._sign(n, o)
                    return y
        out = func(*args, **kwargs)
        if any(isinstance(t, torch.Tensor) and t.is_floating_point() for t in tree_flatten(out)[0]):
            # only a floating result can carry a gradient: metadata (is_floating_point, size, dtype) cannot
            self._mark_other(args, kwargs)
        return out


def capture(f: Callable, params: Mapping[str, torch.Tensor], names: list[str], x: torch.Tensor,
            c: int) -> Captured:
    """One forward and C backward passes of the batch x; the factors of every captured use of ``names``."""
    ids = {id(params[n]): n for n in names}
    mode = _Mode(ids, x.shape[0])
    with torch.enable_grad():
        with mode:
            out = f(params, x)
        out = out.reshape(out.shape[0], -1)
        # each output's gradients written into [B, C, ...] tensors as its backward pass returns them, so
        # that one output's gradients, not all C and then their stacked copy, are held beside the result
        grads = [d.new_zeros((d.shape[0], c) + tuple(d.shape[1:])) for d in mode.deltas]
        for a in range(c):
            if mode.deltas:
                gs = torch.autograd.grad(out[:, a].sum(), mode.deltas, retain_graph=a < c - 1, allow_unused=True)
                for k, g in enumerate(gs):
                    if g is not None:
                        grads[k][:, a] = g
                gs = g = None
        out = None
    mode.deltas.clear()
    cap = Captured(other=set(mode.other), signature=mode.sig)
    B = x.shape[0]
    for n, a, k in mode.wrec:
        g = grads[k]  # [B, C, ..., n_out]
        cap.weights.setdefault(n, []).append((a.reshape(B, -1, a.shape[-1]), g.reshape(B, c, -1, g.shape[-1])))
    for n, ids, pad, k in mode.erec:
        g = grads[k]
        cap.embeddings.setdefault(n, []).append((ids, pad, g.reshape(B, c, -1, g.shape[-1])))
    for n, feat, m, k in mode.vrec:
        g = grads[k]
        if feat is not None:
            g = g * feat.unsqueeze(1)
        v = m * g.reshape(B, c, -1, g.shape[-1]).sum(2)
        cap.vectors[n] = cap.vectors[n] + v if n in cap.vectors else v
    for n in list(cap.vectors):
        if n in cap.weights or cap.vectors[n].shape[-1] != params[n].numel():
            cap.other.add(n)
    for n in cap.embeddings:
        if n in cap.vectors:
            cap.other.add(n)
    return cap


#: the most bytes one capture pass takes (capture_example_bytes: what the pass holds at its high water), by
#: device type. On CPU the passes run fastest at about 500 tokens of SmolLM2-135M (5 GiB; 2 cores, 32
#: examples): 5.4 s in passes of 8 at 56 tokens against 17.8 s in one pass of 32; 1.6 s in passes of 32 at 15
#: tokens against 3.0 s in passes of 4. Elsewhere 40 GiB (not measured; a GPU wants large batches). Either
#: way at most ``budget // PASS_SHARE``.
CAPTURE_PASS_BYTES = {"cpu": 5 * 2**30}
_CAPTURE_PASS_BYTES_ELSEWHERE = 40 * 2**30
PASS_SHARE = 8


def capture_pass_bytes(device, budget: int, share: int = PASS_SHARE) -> int:
    """The bytes one capture pass may take on ``device`` under ``budget``: CAPTURE_PASS_BYTES, at most
    budget / share."""
    want = CAPTURE_PASS_BYTES.get(torch.device(device).type, _CAPTURE_PASS_BYTES_ELSEWHERE)
    return max(1, min(want, budget // share))


def capture_example_bytes(f: Callable, params: Mapping[str, torch.Tensor], names: list[str], x: torch.Tensor,
                          c: int) -> int:
    """Bytes one example of x's padded length takes in a capture pass at its high water (the end of a
    backward pass), counted on a forward pass of x[:1] under capture's mode:

        saved + inputs + (C + 3) D

    saved: what autograd keeps for the backward passes (the parameters not counted); inputs: the captured
    uses' inputs that autograd does not keep; D: the bytes of the zero tensors added to the captured
    outputs (the delta leaves the gradients are taken against), held through the pass; C D the
    per-output gradients written into the result; D one backward pass's gradients of every delta before
    they are copied; D the backward pass's own intermediates, measured (SmolLM2-135M, 42 tokens: 206 MiB
    an example at its high water against 205 from this count; the earlier count, the factors plus
    twice the plain forward pass's saved tensors, said 85)."""
    own = {t.untyped_storage().data_ptr() for t in params.values()}
    mode = _Mode({id(params[n]): n for n in names}, 1)

    def forward():
        with mode:
            f(params, x[:1])

    seen = saved_storages(forward, own)
    deltas = sum(d.numel() * d.element_size() for d in mode.deltas)
    inputs = {a.untyped_storage().data_ptr(): a.numel() * a.element_size() for _, a, _ in mode.wrec}  # q, k, v: one
    unsaved = sum(b for ptr, b in inputs.items() if ptr not in seen and ptr not in own)
    return max(1, sum(seen.values()) + unsaved + (c + 3) * deltas)


def trimmed_length(x: torch.Tensor, trim: Callable | None, i: int) -> int:
    """The sequence length that ``trim`` leaves example i of x (x's padded width without trim)."""
    return trim(x[i:i + 1]).shape[-1] if trim is not None else x.shape[-1]


def capture_passes(x: torch.Tensor, trim: Callable | None, pass_bytes: int, example_bytes: int) -> list[slice]:
    """Consecutive passes over x's examples, each as many as fit in ``pass_bytes`` at ``example_bytes`` an
    example of x's padded length (with ``trim``, in proportion to the pass's longest trimmed length)."""
    n, width = x.shape[0], x.shape[-1]
    if trim is None:
        return chunks(n, max(1, pass_bytes // max(1, example_bytes)))
    lengths = [trimmed_length(x, trim, i) for i in range(n)]
    out, start = [], 0
    while start < n:
        stop, longest = start + 1, lengths[start]
        while stop < n and (stop + 1 - start) * example_bytes * max(longest, lengths[stop]) // width <= pass_bytes:
            longest = max(longest, lengths[stop])
            stop += 1
        out.append(slice(start, stop))
        start = stop
    return out


def capture_batched(f: Callable, params: Mapping[str, torch.Tensor], names: list[str], x: torch.Tensor, c: int,
                    pass_bytes: int, example_bytes: int, trim: Callable | None = None) -> Captured:
    """capture() of x in passes of at most ``pass_bytes`` (``capture_passes``; each pass cut by ``trim``),
    merged into one Captured.

    A pass's factors are copied into tensors of all of x's examples, their token axes zero-padded to the
    longest pass's: a zero a_t with a zero g_t adds nothing to sum_t g_t a_t^T nor to the Grams, and a
    padded id carries a zero gradient row, so every block is exact. The passes' activations are those of one
    pass, however many examples x holds. The longest pass goes first (its shapes size the merged tensors;
    a signature is that pass's); uses that share an input (q, k and v) share its merged tensor."""
    n = x.shape[0]
    parts = capture_passes(x, trim, pass_bytes, example_bytes)
    if len(parts) == 1:
        return capture(f, params, names, x if trim is None else trim(x), c)
    inputs = [x[s] if trim is None else trim(x[s]) for s in parts]   # each pass cut once
    order = sorted(range(len(parts)), key=lambda i: -inputs[i].shape[-1])
    out: Captured | None = None
    for i in order:
        s = parts[i]
        k = capture(f, params, names, inputs[i], c)
        if out is None:
            shared: dict = {}

            def merged(t, fill=0):
                key = (t.data_ptr(), tuple(t.shape), tuple(t.stride()))
                if key not in shared:
                    shared[key] = _padded_like(t, n, fill)
                return shared[key]

            out = Captured(other=set(k.other), signature=k.signature)
            for m, uses in k.weights.items():
                out.weights[m] = [(merged(a), merged(g)) for a, g in uses]
            for m, uses in k.embeddings.items():
                out.embeddings[m] = [(merged(ids, 0 if pad is None else pad), pad, merged(g)) for ids, pad, g in uses]
            for m, v in k.vectors.items():
                out.vectors[m] = v.new_zeros((n,) + tuple(v.shape[1:]))
        out.other |= k.other
        done: set = set()

        def place(dst, src, axis):
            if id(dst) not in done:   # an input shared by several uses is copied once
                done.add(id(dst))
                _place(dst, src, s, axis)

        for m, uses in k.weights.items():
            for (a, g), (ma, mg) in zip(uses, out.weights.get(m, [])):
                place(ma, a, 1)
                place(mg, g, 2)
        for m, uses in k.embeddings.items():
            for (ids, _, g), (mi, _, mg) in zip(uses, out.embeddings.get(m, [])):
                place(mi, ids, 1)
                place(mg, g, 2)
        for m, v in k.vectors.items():
            if m in out.vectors and out.vectors[m].shape[1:] == v.shape[1:]:
                out.vectors[m][s] = v
            else:
                out.other.add(m)
        for m in set(k.weights) ^ set(out.weights) | set(k.embeddings) ^ set(out.embeddings) \
                | set(k.vectors) ^ set(out.vectors):
            out.other.add(m)    # captured in one pass but not another: not covered
    return out


def _padded_like(t: torch.Tensor, n: int, fill=0) -> torch.Tensor:
    """A tensor like t (its token axis as long as t's) with n examples on axis 0, filled with ``fill``."""
    return torch.full((n,) + tuple(t.shape[1:]), fill, dtype=t.dtype, device=t.device)


def _place(dst: torch.Tensor, src: torch.Tensor, s: slice, axis: int) -> None:
    """dst[s] = src on the first src.shape[axis] positions of the token axis ``axis`` (the rest stays padding)."""
    if src.dim() != dst.dim() or any(a != b for i, (a, b) in enumerate(zip(src.shape[1:], dst.shape[1:]), 1)
                                     if i != axis) or src.shape[axis] > dst.shape[axis]:
        raise ValueError(f"a capture pass of shape {tuple(src.shape)} does not fit the merged {tuple(dst.shape)}")
    dst[s].narrow(axis, 0, src.shape[axis]).copy_(src)


def covered(cap: Captured, params: Mapping[str, torch.Tensor], names: list[str]) -> list[str]:
    """Names whose gradient the capture reproduces exactly: captured, never used otherwise, shapes consistent."""
    out = []
    for n in names:
        if n in cap.other:
            continue
        if n in cap.embeddings:
            shp = params[n].shape
            # a table used by F.embedding, and possibly also as a tied linear weight (an LM head)
            if n not in cap.vectors and len(shp) == 2 and all(
                    a.shape[-1] == shp[1] and g.shape[-1] == shp[0] for a, g in cap.weights.get(n, [])):
                out.append(n)
        elif n in cap.vectors and n not in cap.weights:
            out.append(n)
        elif n in cap.weights and n not in cap.vectors:
            shp = params[n].shape
            if len(shp) == 2 and all(a.shape[-1] == shp[1] and g.shape[-1] == shp[0] for a, g in cap.weights[n]):
                out.append(n)
    return out


def linear_factors(f: Callable, params: Mapping[str, torch.Tensor], x: torch.Tensor,
                   select=None) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """The factors of every selected weight W that f uses only as z = F.linear(a, W):

        {name: (a [N, T, n_in], g [N, C, T, n_out])},  g[i, c, t] = d f_c(x_i) / d z_t,

    so grad_W f_c(x_i) = sum_t g[i, c, t] a[i, t]^T and the weight's eNTK block is
    sum_{t,s} <g_i,t, g_j,s> <a_i,t, a_j,s> ([KV] Lemma D.4's dH and X). One forward and C
    backward passes of the batch; a ParamLinear's multiplier comes after z, so it sits in g.
    """
    from ntkcheck.models.kernels.common import select_names

    names = select_names(params, select)
    with torch.no_grad():
        out = f(params, x[:1])
    c = 1 if out.dim() == 1 else out.shape[-1]
    cap = capture(f, params, names, x, c)
    return {n: _factors(cap, n) for n in covered(cap, params, names) if n in cap.weights and n not in cap.embeddings}


def _factors(cap: Captured, n: str):
    uses = cap.weights[n]
    a = torch.cat([u[0] for u in uses], dim=1) if len(uses) > 1 else uses[0][0]
    g = torch.cat([u[1] for u in uses], dim=2) if len(uses) > 1 else uses[0][1]
    return a, g  # [B, T, n_in], [B, C, T, n_out]


class Scratch:
    """Flat buffers reused for the large per-example gradients of one kernel call.

    A fresh multi-GB tensor costs the page faults of mapping and zeroing it, which on CPU take longer
    than the batched matmul that fills it (34 ms against 10 ms for 16 examples of a 1536 x 576 weight);
    torch's CPU allocator does not cache such blocks, so they are kept here. Hand-rolled for that reason.
    """

    def __init__(self):
        self.bufs: dict[str, torch.Tensor] = {}

    def take(self, slot: str, shape: tuple[int, ...], dtype: torch.dtype, device) -> torch.Tensor:
        n = 1
        for d in shape:
            n *= int(d)
        buf = self.bufs.get(slot)
        if buf is None or buf.numel() < n or buf.dtype != dtype or buf.device != torch.device(device):
            buf = torch.empty(n, dtype=dtype, device=device)
            self.bufs[slot] = buf
        return buf[:n].view(shape)


def weight_gradients(g: torch.Tensor, a: torch.Tensor, s: slice, out: torch.Tensor | None = None) -> torch.Tensor:
    """Per-example gradients of a linear weight from its factors: [b C, n_out n_in] rows
    grad_W f_c(x_i) = sum_t g[i, c, t] a[i, t]^T for the examples i in ``s``, as one batched matmul
    [b, C n_out, T] @ [b, T, n_in] (a shared by the C outputs). g: [B, C, T, n_out], a: [B, T, n_in];
    ``out`` a buffer of b C n_out n_in entries to write into."""
    b, c, n_out, n_in = s.stop - s.start, g.shape[1], g.shape[-1], a.shape[-1]
    gt = g[s].transpose(2, 3).reshape(b, c * n_out, -1)
    res = torch.bmm(gt, a[s], out=None if out is None else out.view(b, c * n_out, n_in))
    return res.view(b * c, n_out * n_in)


def phi_inplace(spec: Spec, side: int, n: str, G: torch.Tensor) -> torch.Tensor:
    """spec.phi1 (side 1) or spec.phi2 (side 2) of G, overwriting G when the map is an exact sign."""
    signed = spec.kind is KernelKind.SIGNGD or (side == 2 and spec.kind is not KernelKind.SGD)
    if not signed:
        return G
    if spec.eps[n] == 0:
        return torch.sign(G, out=G)
    return spec.phi1(n, G) if side == 1 else spec.phi2(n, G)


def tied_rows(e, w, s: slice) -> torch.Tensor:
    """The rows of a tied table's per-example gradient that can be nonzero for the examples in ``s``, sorted:
    the ids the examples embed, and the vocabulary entries whose head output gradient is nonzero (for a
    prompt readout only the label words' rows, so not all V rows)."""
    (u, _), (_, g) = e, w
    head = torch.nonzero((g[s] != 0).flatten(0, 2).any(0)).flatten()
    return torch.unique(torch.cat([u[s].reshape(-1), head]))


def tied_gradients(e, w, s: slice, rows: torch.Tensor) -> torch.Tensor:
    """Per-example gradients [b C, |rows| d] of a table used by F.embedding (rows e = (ids, R)) and by
    F.linear (factors w = (a, g), a tied LM head), restricted to ``rows`` (``tied_rows``; every other row is
    zero): D = E + L, L[v] = sum_t g_t[v] a_t, E's rows added at their ids."""
    (u, r), (a, g) = e, w
    D = torch.einsum("icto,itm->icom", g[s][..., rows], a[s])  # [b, C, |rows|, d]
    b, c = r[s].shape[:2]
    where = torch.searchsorted(rows, u[s])  # [b, T] positions of the embedded ids within rows
    emb = r[s].permute(0, 2, 1, 3)  # [b, T, C, d]
    for i in range(b):
        D[i].index_add_(1, where[i], emb[i].permute(1, 0, 2))
    return D.reshape(b * c, -1)


class ColumnFeatures:
    """phi2 of the column side's per-example gradients, kept across row chunks when they fit.

    The sign kinds' multi-token path forms phi2(sum_t g_t a_t^T) for every column example; without this
    it is formed again for every chunk of rows. Exact signs (eps = 0) are kept as bits (``pack_int8_signs``:
    1 bit per entry, plus a nonzero mask only when an entry is 0; 1/32 of float32's bytes) and unpacked
    into int8 or float by one table lookup per byte when a row chunk needs them; anything else is kept in its own
    dtype. What does not fit in ``limit`` bytes is recomputed when needed. Hand-rolled: no library caches
    per-example gradient features.
    """

    def __init__(self, limit: int):
        self.limit, self.used = int(limit), 0
        self.store: dict = {}

    def fits(self, nbytes: int) -> bool:
        return self.used + nbytes <= self.limit

    def put(self, key, value) -> bool:
        """Keeps ``value`` under ``key`` if it fits: a (mask, neg, p, dtype) bit form or a tensor; False if not."""
        size = (sum(t.numel() for t in value[:2] if t is not None) if isinstance(value, tuple)
                else value.numel() * value.element_size())
        if not self.fits(size):
            return False
        self.store[key] = value
        self.used += size
        return True

    def put_tensors(self, key, tensors: tuple) -> bool:
        """Keeps a tuple of tensors under ``key`` if their bytes fit; False if not."""
        size = sum(t.numel() * t.element_size() for t in tensors)
        if not self.fits(size):
            return False
        self.store[key] = tensors
        self.used += size
        return True

    def get(self, key, make, exact_sign: bool, buffer=None) -> torch.Tensor:
        """The float features under ``key`` (made by ``make()`` on a miss, and kept when they fit); a kept
        bit form is expanded into ``buffer(shape, dtype)`` when given, else into a new tensor."""
        got = self.store.get(key)
        if got is not None:
            if not isinstance(got, tuple):
                return got
            mask, neg, p, dtype = got
            return unpack_float(neg, p, mask, dtype, None if buffer is None else buffer((neg.numel() * 8,), dtype))
        value = make()
        self.put(key, pack_int8_signs(value.to(torch.int8)) + (value.shape[1], value.dtype) if exact_sign
                 else value.clone())
        return value

    def matmul(self, key, P1: torch.Tensor) -> torch.Tensor | None:
        """P1 @ F^T for the features F kept as bits under ``key`` (float_sign_matmul: unpacked a cache-sized
        block at a time, never whole); None when ``key`` holds no bits."""
        got = self.store.get(key)
        if not isinstance(got, tuple) or len(got) != 4:
            return None
        mask, neg, p, _ = got
        return float_sign_matmul(P1, neg, p, mask)

    def get_int8(self, key, make_int8, buffer) -> torch.Tensor:
        """Exact signs as int8 [rows, p] under ``key``: unpacked into ``buffer(shape)`` when kept, else
        ``make_int8()`` (int8 signs) and kept as bits when they fit."""
        got = self.store.get(key)
        if got is not None:
            mask, neg, p, _ = got
            out = buffer((neg.shape[0] * neg.shape[1] * 8,))
            return unpack_int8(neg, p, mask, out=out)
        value = make_int8()
        self.put(key, pack_int8_signs(value) + (value.shape[1], torch.int8))
        return value


def example_signs(g: torch.Tensor, a: torch.Tensor, s: slice, scratch: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """int8 signs of the per-example gradients sum_t g_t a_t^T of the examples in ``s`` -> ``out`` [b C, N].

    One example at a time: its [C n_out, n_in] gradient is formed in ``scratch`` (reused, so it stays in
    cache), signed in place and copied into ``out`` as int8 -- about twice the speed of forming the whole
    chunk in float32 and signing it afterwards, since the sign and the copy then read from memory."""
    c, n_out, n_in = g.shape[1], g.shape[-1], a.shape[-1]
    gt = g[s].transpose(2, 3).reshape(s.stop - s.start, c * n_out, -1)
    buf = scratch[: c * n_out * n_in].view(c * n_out, n_in)
    for i in range(s.stop - s.start):
        torch.mm(gt[i], a[s.start + i], out=buf)
        torch.sign(buf, out=buf)
        out[i * c:(i + 1) * c].view(c * n_out, n_in).copy_(buf)
    return out


def example_sign_bits(g: torch.Tensor, a: torch.Tensor, s: slice, scratch: torch.Tensor,
                      small: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor]:
    """The signs of the per-example gradients sum_t g_t a_t^T of the examples in ``s`` as bits, (nonzero mask
    or None when no entry is 0, negative bit), each [b C, ceil(N / 8)] uint8 as ``pack_int8_signs``.

    One example at a time, everything in cache: its gradient formed in ``scratch`` (float, C N entries) and
    signed there, converted into ``small`` (int8, C N entries) and packed from it; only the bits reach memory
    (against the int8 signs of ``example_signs`` written out and packed in passes over memory afterwards)."""
    c, n_out, n_in = g.shape[1], g.shape[-1], a.shape[-1]
    N, b = n_out * n_in, s.stop - s.start
    gt = g[s].transpose(2, 3).reshape(b, c * n_out, -1)
    buf = scratch[: c * N].view(c * n_out, n_in)
    i8 = small[: c * N].view(c, N)
    u = i8.view(torch.uint8)
    nb = -(-N // 8)
    neg = torch.empty(b * c, nb, dtype=torch.uint8, device=g.device)
    mask = torch.empty(b * c, nb, dtype=torch.uint8, device=g.device)
    zeros = False
    for i in range(b):
        torch.mm(gt[i], a[s.start + i], out=buf)
        torch.sign(buf, out=buf)
        i8.copy_(buf.view(c, N))
        neg[i * c:(i + 1) * c] = pack_bits(u >> 7)
        mask[i * c:(i + 1) * c] = pack_bits(u & 1)
        zeros = zeros or int(torch.count_nonzero(i8)) < c * N
    return (mask if zeros else None), neg


def _weight_block(spec: Spec, n: str, f1, f2, cols: ColumnFeatures | None = None, key=None) -> torch.Tensor:
    """K_W block [b1, C, b2, C] from the factors of both sides; ``cols`` keeps the column side's features
    (under ``key``, which names the column chunk) for the next chunk of rows."""
    (a1, g1), (a2, g2) = f1, f2
    b1, c, t1, n_out = g1.shape
    b2, _, t2, _ = g2.shape
    n_in = a1.shape[-1]
    kind, eps = spec.kind, spec.eps[n]
    isz = spec.itemsize
    if t1 == 1 and t2 == 1 and (kind is KernelKind.SGD or eps == 0):
        G1, A1, G2, A2 = g1[:, :, 0], a1[:, 0], g2[:, :, 0], a2[:, 0]
        if kind is KernelKind.SIGNGD:
            G1, A1 = torch.sign(G1), torch.sign(A1)
        if kind is not KernelKind.SGD:
            G2, A2 = torch.sign(G2), torch.sign(A2)
        GG = (G1.reshape(b1 * c, n_out) @ G2.reshape(b2 * c, n_out).T).reshape(b1, c, b2, c)
        return GG * (A1 @ A2.T)[:, None, :, None]
    mat_flops = (b1 + b2) * c * t1 * n_out * n_in + b1 * b2 * c * c * n_out * n_in
    out = torch.empty(b1, c, b2, c, dtype=spec.dtype, device=spec.device)
    if kind is KernelKind.SGD:
        live1 = live_tokens(g1)
        # the held column side's packed tokens are kept in ``cols`` across chunks of rows when they fit
        packed2 = cols.store.get(("packed", n, key)) if cols is not None else None
        if packed2 is None:
            packed2 = _pack(a2, g2, live_tokens(g2), spec.dtype)
            if cols is not None:
                cols.put_tensors(("packed", n, key), packed2)
        m1, m2 = int(live1.sum()), packed2[0].shape[0]
        gram_flops = m1 * m2 * (c * c * n_out + n_in + c * c + b1 * c * c)
        if gram_flops <= mat_flops:
            return _packed_gram(spec, (a1, g1, live1), packed2, out)
    # per-example gradients from the factors, sum_t g_t a_t^T, a few examples at a time, written into
    # reused buffers (Scratch) and signed in place
    per = _examples_per_chunk(spec, c, n_out, n_in)
    same = f1 is f2
    scratch = spec.extra.setdefault("scratch", Scratch())
    buf = lambda slot: lambda shape, dt=spec.dtype: scratch.take(slot, shape, dt or spec.dtype, spec.device)  # noqa: E731
    N = n_out * n_in
    if _int8_signs(spec, n):
        # both sides exact signs: int8 products summed exactly in int32 (sign_matmul)
        out = torch.empty(b1, c, b2, c, dtype=spec.out_dtype, device=spec.device)
        one = buf("g1")((c * N,))
        for s in chunks(b1, per):
            P1 = example_signs(g1, a1, s, one, scratch.take("p1i8", ((s.stop - s.start) * c, N), torch.int8,
                                                             spec.device))
            for r in chunks(b2, per):
                P2 = P1 if same and r == s else column_features(spec, n, f2, r, cols, key)
                out[s, :, r, :] = sign_matmul(P1, P2).reshape(s.stop - s.start, c, r.stop - r.start, c)
        return out
    for s in chunks(b1, per):
        raw1 = weight_gradients(g1, a1, s, out=buf("g1")(((s.stop - s.start) * c * n_out * n_in,)))
        if same and spec.kind is KernelKind.ASYM_SIGNGD:
            raw1 = raw1.clone()   # its sign is needed beside it below
        P1 = phi_inplace(spec, 1, n, raw1)
        for r in chunks(b2, per):
            prod = None if cols is None or (same and r == s) else cols.matmul((n, key, r.start), P1)
            if prod is None:
                if same and r == s:
                    P2 = P1 if spec.kind is KernelKind.SIGNGD else spec.phi2(n, raw1)
                else:
                    P2 = column_features(spec, n, f2, r, cols, key)
                prod = P1 @ (P2 if P2.dtype == P1.dtype else P2.to(P1.dtype)).T
            out[s, :, r, :] = prod.reshape(s.stop - s.start, c, r.stop - r.start, c)
    return out


def live_tokens(g: torch.Tensor) -> torch.Tensor:
    """[B, T] bool: the token positions where some output's gradient g [B, C, T, n_out] is nonzero. The others
    (padding, positions the output does not see) add nothing to sum_t g_t a_t^T or to any Gram."""
    return g.any(3).any(1)   # any() of a float tensor is its != 0, without the bool copy (twice as fast)


def _packed_gram(spec: Spec, side1, packed2, out: torch.Tensor) -> torch.Tensor:
    """The sgd block K_W[i,a,j,b] = sum_{t in i, s in j} <g^a_t, g^b_s> <a_t, a_s> over live tokens only.

    side1 = (a, g, live) of the rows, packed2 = ``_pack`` of the columns. Each side's live tokens are packed
    (a [M, n_in], g [M, C, n_out], the example of each token), so padding costs nothing: GG = G1 G2^T
    [M1 C, M2 C] and AA = A1 A2^T [M1, M2] are multiplied elementwise and summed over each example's tokens
    by one-hot matmuls, S1 (GG * AA) S2^T. Rows of side 1 come a few examples at a time so that GG takes at
    most an eighth of the budget. A side without live tokens (a gradient that is exactly 0) gives 0."""
    (a1, g1, live1), (A2, G2, S2) = side1, packed2
    b1, c, _, n_out = g1.shape
    m2 = A2.shape[0]
    if m2 == 0 or not bool(live1.any()):
        return out.zero_()
    G2 = G2.reshape(m2 * c, n_out)
    per_token = max(1, c * c * m2 * spec.itemsize)
    counts = live1.sum(1).tolist()
    start = 0
    while start < b1:
        stop, tokens = start + 1, counts[start]
        while stop < b1 and (tokens + counts[stop]) * per_token <= spec.budget // 8:
            tokens += counts[stop]
            stop += 1
        s = slice(start, stop)
        A1, G1, S1 = _pack(a1[s], g1[s], live1[s], spec.dtype)
        m1 = A1.shape[0]
        Z = (G1.reshape(m1 * c, n_out) @ G2.T).view(m1, c, m2, c)
        Z.mul_((A1 @ A2.T)[:, None, :, None])
        Y = (S1 @ Z.view(m1, c * m2 * c)).view(stop - start, c, m2, c)  # summed over each row's tokens
        out[s] = (Y.permute(0, 1, 3, 2) @ S2.T).permute(0, 1, 3, 2)     # and over each column's
        start = stop
    return out


def _pack(a: torch.Tensor, g: torch.Tensor, live: torch.Tensor, dtype) -> tuple:
    """(a [M, n_in], g [M, C, n_out], one-hot [B, M] of each live token's example) for the live tokens."""
    A = a[live]
    G = g.transpose(1, 2)[live]
    ex = live.nonzero()[:, 0]
    S = torch.zeros(live.shape[0], A.shape[0], dtype=dtype, device=a.device)
    S[ex, torch.arange(A.shape[0], device=a.device)] = 1
    return A, G, S


def _examples_per_chunk(spec: Spec, c: int, n_out: int, n_in: int) -> int:
    """Examples whose per-example gradients of an n_out x n_in weight take a sixteenth of the budget."""
    return max(1, (spec.budget // 16) // max(1, c * n_out * n_in * spec.itemsize))


def _int8_signs(spec: Spec, n: str) -> bool:
    """Both sides of tensor n are exact signs contracted as int8 (signgd, eps = 0, on CPU: sign_matmul)."""
    return spec.kind is KernelKind.SIGNGD and spec.eps[n] == 0 and spec.device.type == "cpu"


def _int8_columns(spec: Spec, n: str) -> bool:
    """asym_signgd with exact signs: the column side's signs are formed as int8 in cache (``example_signs``,
    2.4 G entries/s against 0.6 for float32 gradients signed and converted) and kept as bits, and the rows'
    float gradients are multiplied by them block by block (``ColumnFeatures.matmul``)."""
    return spec.kind is KernelKind.ASYM_SIGNGD and spec.eps[n] == 0


def column_features(spec: Spec, n: str, f2, r: slice, cols: ColumnFeatures | None, key) -> torch.Tensor:
    """phi2 of the per-example gradients of weight n for the column examples ``r`` of the column chunk
    ``key`` (factors f2 = (a, g)): int8 signs where _int8_signs or _int8_columns, else spec.dtype; from ``cols`` when
    kept there, else formed (and kept when they fit)."""
    a2, g2 = f2
    c, n_out, n_in = g2.shape[1], g2.shape[-1], a2.shape[-1]
    N = n_out * n_in
    scratch = spec.extra.setdefault("scratch", Scratch())
    rows = (r.stop - r.start) * c
    if _int8_signs(spec, n) or _int8_columns(spec, n):
        take = lambda shape: scratch.take("p2i8", shape, torch.int8, spec.device)  # noqa: E731
        make = lambda: example_signs(g2, a2, r, scratch.take("g1", (c * N,), spec.dtype, spec.device),  # noqa: E731
                                     take((rows, N)))
        return make() if cols is None else cols.get_int8((n, key, r.start), make, take)

    def make():
        G = weight_gradients(g2, a2, r, out=scratch.take("g2", (rows * N,), spec.dtype, spec.device))
        return phi_inplace(spec, 2, n, G)

    if cols is None:
        return make()
    exact = spec.kind is not KernelKind.SGD and spec.eps[n] == 0
    return cols.get((n, key, r.start), make, exact,
                    lambda shape, dt: scratch.take("p2", shape, dt or spec.dtype, spec.device))


def keep_column_features(spec: Spec, n: str, f2, cols: ColumnFeatures, key) -> bool:
    """Forms and keeps in ``cols`` every column feature of weight n that _weight_block reads for the column
    chunk ``key``; True when all of them are kept (the factors f2 are then no longer needed)."""
    a2, g2 = f2
    b2, c, _, n_out = g2.shape
    n_in = a2.shape[-1]
    per = _examples_per_chunk(spec, c, n_out, n_in)
    scratch = spec.extra.setdefault("scratch", Scratch())
    ok = True
    for r in chunks(b2, per):
        where = (n, key, r.start)
        if (_int8_signs(spec, n) or _int8_columns(spec, n)) and where not in cols.store:
            if cols.fits((r.stop - r.start) * c * (-(-n_out * n_in // 8))):   # the negative bits at least
                bits = example_sign_bits(g2, a2, r, scratch.take("g1", (c * n_out * n_in,), spec.dtype, spec.device),
                                         scratch.take("p1i8", (c * n_out * n_in,), torch.int8, spec.device))
                cols.put(where, bits + (n_out * n_in, torch.int8))
        else:
            column_features(spec, n, f2, r, cols, key)
        ok = ok and where in cols.store
    return ok


def _embedding_rows(cap: Captured, n: str):
    """(ids [B, T], R [B, C, T, d]): the nonzero rows of each example's gradient of an embedding table.

    grad_E f_a(x_i) has row v = sum_{t: id_t = v, v != padding} g^a_t; R holds that row at the first
    token t carrying v and 0 at the others, so every nonzero row appears exactly once.
    """
    uses = cap.embeddings[n]
    ids = torch.cat([u[0] for u in uses], dim=1)
    g = torch.cat([u[2] for u in uses], dim=2)
    pads = {u[1] for u in uses}
    if len(pads) > 1:
        raise ValueError(f"embedding {n!r} is used with different padding_idx {pads}")
    pad = pads.pop()
    same = ids[:, :, None] == ids[:, None, :]  # [B, T, T]
    earlier = torch.tril(same, diagonal=-1).any(-1)
    keep = ~earlier
    if pad is not None:
        keep = keep & (ids != pad)
        g = g * (ids != pad)[:, None, :, None].to(g.dtype)
    R = torch.einsum("bts,bcsd->bctd", same.to(g.dtype), g) * keep[:, None, :, None].to(g.dtype)
    return ids, R


def _embedding_block(spec: Spec, n: str, e1, e2) -> torch.Tensor:
    """K_E[i,a,j,b] = sum_{t,s} [id_{i,t} = id_{j,s}] <phi1(R^a_{i,t}), phi2(R^b_{j,s})>."""
    (u1, r1), (u2, r2) = e1, e2
    b1, c, t1, d = r1.shape
    b2, _, t2, _ = r2.shape
    P1 = spec.phi1(n, r1).reshape(-1, d)
    P2 = spec.phi2(n, r2).reshape(-1, d)
    out = torch.empty(b1, c, b2, c, dtype=spec.dtype, device=spec.device)
    rows = max(1, (spec.budget // 4) // max(1, c * t1 * b2 * c * t2 * spec.itemsize))
    for s in chunks(b1, rows):
        GG = (P1.reshape(b1, c, t1, d)[s].reshape(-1, d) @ P2.T).reshape(-1, c, t1, b2, c, t2)
        EQ = (u1[s][:, :, None, None] == u2[None, None, :, :]).to(GG.dtype)  # [b, t1, b2, t2]
        out[s] = torch.einsum("icsjdt,isjt->icjd", GG, EQ)
    return out


def _cross_embedding_linear(e, w) -> torch.Tensor:
    """<E_i^a, L_j^b> for E = embedding-gradient rows of side 1, L = sum_s g_s a_s^T of side 2: [b1, C, b2, C].

    Row v of L_j^b is sum_s g^b_{j,s}[v] a_{j,s}, so <E_i^a, L_j^b> = sum_{t,s} g^b_{j,s}[id_{i,t}] <R^a_{i,t}, a_{j,s}>.
    """
    (u1, r1), (a2, g2) = e, w
    b1, c, t1, d = r1.shape
    b2, _, t2, V = g2.shape
    RA = (r1.reshape(-1, d) @ a2.reshape(-1, d).T).reshape(b1, c, t1, b2, t2)
    Gsel = g2[..., u1.reshape(-1)].reshape(b2, c, t2, b1, t1)  # g^b_{j,s}[id_{i,t}]
    return torch.einsum("iatjs,jbsit->iajb", RA, Gsel)


def _tied_block(spec: Spec, n: str, shape, side1, side2, cols: ColumnFeatures | None = None,
                key=None) -> torch.Tensor:
    """A table used both by F.embedding and by F.linear (tied LM head): D = E + L per example.

    sgd: <D_i, D_j> = <E, E'> + <L, L'> + <E, L'> + <L, E'> from the factors. Sign kinds need
    phi(E + L), so the per-example [V, d] gradients are formed a few at a time and contracted.
    """
    (e1, w1), (e2, w2) = side1, side2
    if spec.kind is KernelKind.SGD:
        out = _embedding_block(spec, n, e1, e2) + _weight_block(spec, n, w1, w2)
        out += _cross_embedding_linear(e1, w2)
        out += _cross_embedding_linear(e2, w1).permute(2, 3, 0, 1)
        return out
    V, d = shape
    b1, c = e1[1].shape[:2]
    b2 = e2[1].shape[0]
    out = torch.empty(b1, c, b2, c, dtype=spec.dtype, device=spec.device)
    # only the rows a side can touch (its ids, the head's nonzero outputs) are formed: <D, D'> runs over
    # the rows both sides touch; the budget is counted as if every row were touched
    per = max(1, (spec.budget // 8) // max(1, c * V * d * spec.itemsize))
    exact = spec.eps[n] == 0
    whole = slice(0, b2)
    rows2 = tied_rows(e2, w2, whole)
    for s in chunks(b1, per):
        rows1 = tied_rows(e1, w1, s)
        both = rows1[torch.isin(rows1, rows2)]
        sel1 = (torch.searchsorted(rows1, both)[:, None] * d + torch.arange(d, device=both.device)).reshape(-1)
        sel2 = (torch.searchsorted(rows2, both)[:, None] * d + torch.arange(d, device=both.device)).reshape(-1)
        P1 = spec.phi1(n, tied_gradients(e1, w1, s, rows1))[:, sel1]
        for r in chunks(b2, per):
            make = lambda r=r: spec.phi2(n, tied_gradients(e2, w2, r, rows2))  # noqa: E731
            P2 = make() if cols is None else cols.get((n, key, r.start), make, exact)
            out[s, :, r, :] = (P1 @ P2[:, sel2].T).reshape(s.stop - s.start, c, r.stop - r.start, c)
    return out


def _vector_block(spec: Spec, n: str, v1: torch.Tensor, v2: torch.Tensor) -> torch.Tensor:
    b1, c, p = v1.shape
    A = spec.phi1(n, v1).reshape(b1 * c, p)
    B = spec.phi2(n, v2).reshape(-1, p)
    return (A @ B.T).reshape(b1, c, v2.shape[0], c)


def probe(f: Callable, params: Mapping[str, torch.Tensor], names: list[str], x: torch.Tensor,
          c: int) -> tuple[list[str], int, dict]:
    """(covered tensors, factor bytes per example, their use signatures) from captures of 2 and 3 examples.

    An op input counts as batch-leading only if its leading axis follows the batch size in both
    captures with the rest of its shape unchanged; a sequence-first layout [T, B, ...] whose T
    happens to equal one batch size is thereby excluded rather than misread.
    """
    caps = [capture(f, params, names, x[:b], c) for b in sorted({min(2, x.shape[0]), min(3, x.shape[0])})]
    cover = covered(caps[0], params, names)
    for k in caps[1:]:
        ok = set(covered(k, params, names))
        cover = [n for n in cover if n in ok and k.signature.get(n) == caps[0].signature.get(n)]
    b0 = min(2, x.shape[0])
    return cover, max(1, _capture_bytes(caps[0], cover) // b0), {n: caps[0].signature.get(n) for n in cover}


def _capture_bytes(cap: Captured, names: list[str]) -> int:
    """Bytes of the factors of ``names`` in cap, an input shared by several uses (q, k, v) counted once."""
    seen: set = set()

    def size(t: torch.Tensor, times: int = 1) -> int:
        key = (t.data_ptr(), tuple(t.shape))
        if key in seen:
            return 0
        seen.add(key)
        return times * t.numel() * t.element_size()

    tot = 0
    for n in names:
        if n in cap.weights:
            tot += sum(size(a) + size(g) for a, g in cap.weights[n])
        if n in cap.embeddings:
            tot += sum(size(i) + size(g, 2) for i, _, g in cap.embeddings[n])
        if n in cap.vectors:
            tot += size(cap.vectors[n])
    return tot


def views(cap: Captured, names: list[str]) -> dict[str, tuple[str, object]]:
    """Each covered tensor's per-example information in the form its Gram needs: ("w", (a, g)) linear
    factors, ("e", (ids, R)) embedding rows, ("t", (rows, factors)) a tied embedding / LM head,
    ("v", [B, C, |M|]) a vector's per-example gradient."""
    out = {}
    for n in names:
        if n in cap.embeddings and n in cap.weights:
            out[n] = ("t", (_embedding_rows(cap, n), _factors(cap, n)))
        elif n in cap.weights:
            out[n] = ("w", _factors(cap, n))
        elif n in cap.embeddings:
            out[n] = ("e", _embedding_rows(cap, n))
        else:
            out[n] = ("v", cap.vectors[n])
    return out


def structured_kernel(f: Callable, params: Mapping[str, torch.Tensor], x1: torch.Tensor, x2: torch.Tensor | None,
                      c: int, spec: Spec, acc: Accumulator, plan=None) -> list[str]:
    """Adds the kernel of the covered tensors into ``acc``, the rest by JACOBIAN; returns the covered names.

    ``plan.probed`` (from AUTO's planning) is the probe's result, reused instead of probing again."""
    names = spec.names
    probed = getattr(plan, "probed", None)
    cover, per_ex, sig = probe(f, params, names, x1, c) if probed is None else probed
    rest = [n for n in names if n not in set(cover)]
    if cover:
        _structured_part(f, params, x1, x2, c, spec, acc, cover, per_ex, sig)
    if rest:
        jacobian_kernel(f, params, x1, x2, c, spec, acc, names=rest)
    return cover


def _structured_part(f, params, x1, x2, c, spec, acc, cover, per_ex, sig):
    same = x2 is None
    xb = x1 if same else x2
    n1, n2 = x1.shape[0], xb.shape[0]
    # one example's factors must fit in a quarter of the budget (a chunk's share when nothing is held)
    if per_ex > spec.budget // 4:
        raise MemoryBudgetError(f"one example's captured factors take {per_ex:,} bytes, more than a quarter of "
                                f"the memory budget of {spec.budget:,} bytes: give a larger memory_budget "
                                f"(--memory-gb) or shorter inputs (--max-length)")
    # The budget's shares: per-example gradient buffers three sixteenths, Gram intermediates and kept
    # features the rest of five sixteenths; the column side and a chunk of rows' factors share eleven
    # sixteenths. The column side is held whole when it fits (captured once, not once per chunk of rows):
    # for the sign kinds as its weights' feature bits plus the capture's other tensors, in half; otherwise
    # as factors, in half (three eighths for the sign kinds, whose features then keep a quarter). A chunk of
    # rows takes what the held side leaves, at least an eighth; with nothing held each side's chunks take a
    # quarter.
    # Sizes count each chunk at its own length: per_ex is an example's factors at x1's padded width, and with
    # ``trim`` (examples sorted longest first) a chunk's factors are padded only to its first example's length.
    # A held column side comes in chunks of at most a sixteenth, each padded little beyond its own examples;
    # columns captured again per chunk of rows come in quarters (when x2 is x1, quarters that are also the
    # rows'). On SmolLM2 with 96 Subj columns padded to 89 tokens (mean 30) and a 12 GiB budget, the columns
    # take 13.2 GiB at the padded width and 5.1 GiB in sixteenths: held, where they were captured again for
    # each of 12 chunks of 256 rows.
    trim = spec.extra.get("trim")
    per_token = per_ex / x1.shape[-1]
    col_chunks = lambda share: _row_chunks(xb, trim, 1, spec.budget // share, int(per_token * xb.shape[-1]))  # noqa: E731
    signs = not same and spec.kind is not KernelKind.SGD
    sl2 = col_chunks(4 if same else 16)
    hold = not same and _chunks_bytes(xb, trim, sl2, per_token) <= spec.budget * (3 if signs else 4) // 8 \
        and _chunks_bytes(x1, trim, [slice(0, n1)], per_token) > spec.budget // 4
    if not same and not hold:
        sl2 = col_chunks(4)

    sigs = {tuple(x1.shape[1:]): sig}

    def expected(x):
        """The use signatures of inputs shaped like x: the other side may be padded to another length, so
        its signatures come from a probe of its own, and every covered tensor must be covered there too."""
        key = tuple(x.shape[1:])
        if key not in sigs:
            cov2, _, sig2 = probe(f, params, cover, x, c)
            lost = [n for n in cover if n not in set(cov2)]
            if lost:
                raise ValueError(f"tensors {lost[:4]} are captured for inputs of shape {tuple(x1.shape[1:])} but "
                                 f"not of shape {key}; use method='jacobian'")
            sigs[key] = sig2
        return sigs[key]

    # capture passes of at most CAPTURE_PASS_BYTES whatever a chunk holds: their activations, saved
    # tensors and gradients (capture_example_bytes) are those of one pass
    pass_cost = capture_example_bytes(f, params, cover, x1, c)
    pass_bytes = capture_pass_bytes(spec.device, spec.budget)

    def cap(x):
        want = expected(x)
        # each pass cut by trim (a shorter sequence axis: uses are compared by their feature width)
        k = capture_batched(f, params, cover, x, c, pass_bytes, pass_cost, trim)
        # trimmed: the same uses, each of the same rank and feature width (ids [T] only by rank)
        same_sig = (lambda u, v: u == v) if trim is None else (
            lambda u, v: u is not None and len(u) == len(v)
            and all(len(a) == len(b) and (len(a) < 2 or a[-1] == b[-1]) for a, b in zip(u, v)))
        lost = [n for n in cover if n not in covered(k, params, [n]) or not same_sig(k.signature.get(n), want[n])]
        if lost:
            raise ValueError(f"tensors {lost} were captured on a probe batch but not on a batch of {x.shape[0]}; "
                             "use method='jacobian'")
        return views(k, cover)

    # the sign kinds' column features, kept across row chunks: exact signs as bits, with what else the column
    # side's capture holds, in half of the budget (else in a quarter, beside the held factors)
    cols = ColumnFeatures(spec.budget // 2) if signs else None

    def block(n, u, v, bj):
        if u[0] == "w":
            return _weight_block(spec, n, u[1], v[1], cols, bj)
        if u[0] == "e":
            return _embedding_block(spec, n, u[1], v[1])
        if u[0] == "t":
            return _tied_block(spec, n, params[n].shape, u[1], v[1], cols, bj)
        return _vector_block(spec, n, u[1], v[1])

    hold2, avail = None, 0
    if signs:
        # the column side first, once: each chunk captured, its weights' sign features kept as bits and its
        # factors then dropped; held when the bits and what is left fit in half of the budget, the rows then
        # taking what the held side leaves (_row_chunks)
        hold2, held = [], 0
        for bj, sj in enumerate(sl2):
            view = cap(xb[sj])
            for n, (form, val) in list(view.items()):
                if form == "w" and val[1].shape[2] > 1 and keep_column_features(spec, n, val, cols, bj):
                    view[n] = (form, tuple(torch.empty_like(t, device="meta") for t in val))
            held += _view_bytes(view)
            hold2.append(view)
            if held + cols.used > spec.budget // 2:
                hold2 = None
                break
        if hold2 is not None:
            avail = spec.budget * 11 // 16 - held - cols.used
        else:   # the bits do not fit beside the rest: columns held or captured again, features kept in a quarter
            cols = ColumnFeatures(spec.budget // 4)
    if hold2 is None and hold:
        hold2 = [cap(xb[s]) for s in sl2]
        if not signs:   # sgd: the held columns' packed live tokens (_packed_gram), kept in an eighth
            cols = ColumnFeatures(spec.budget // 8)
        # the rows' chunks take what the held columns leave of eleven sixteenths (the rest: buffers, Gram
        # intermediates, kept features): fewer chunks, so the columns' per-example gradients that the
        # materialized path forms for every chunk of rows are formed fewer times
        held = sum(_view_bytes(v) for v in hold2) + (cols.limit if cols is not None else 0)
        avail = spec.budget * 11 // 16 - held
    # a chunk of rows: its factors (per_ex an example), beside one capture pass's activations
    avail -= min(pass_bytes, n1 * pass_cost)
    # (avail > 0 only beside a held column side, whose chunks of rows take at least an eighth)
    least = spec.budget // (8 if hold or hold2 is not None else 4)
    rows = sl2 if same else _row_chunks(x1, trim, 1, max(avail, least), per_ex)
    for bi, si in enumerate(rows):
        c1 = cap(x1[si])
        for bj, sj in enumerate(sl2):
            if same and spec.kind.symmetric and bj < bi:
                continue
            c2 = c1 if (same and bi == bj) else (hold2[bj] if hold2 is not None else cap(xb[sj]))
            for n in cover:
                blk = block(n, c1[n], c2[n], bj)
                acc.add(n, blk, si, sj)
                if same and spec.kind.symmetric and bj > bi:
                    acc.add(n, blk.permute(2, 3, 0, 1), sj, si)
            c2 = blk = None     # freed before the next capture: a chunk's factors are held once, not twice
        c1 = None


def _row_chunks(x: torch.Tensor, trim, least: int, avail: int, cost: int) -> list[slice]:
    """Chunks of the rows x that each take at most ``avail`` bytes (and at least ``least`` rows), an example
    costing ``cost`` at x's padded length and, with ``trim`` (rows longest first, each chunk cut to its
    first row's length), in proportion to the length its chunk is cut to: later chunks take more rows."""
    n, width, out, start = x.shape[0], x.shape[-1], [], 0
    while start < n:
        length = trimmed_length(x, trim, start)
        size = max(least, int(avail // max(1, cost * length // width)))
        out.append(slice(start, min(n, start + size)))
        start = out[-1].stop
    return out


def _chunks_bytes(x: torch.Tensor, trim, parts: list[slice], per_token: float) -> int:
    """The factor bytes of x's examples captured in ``parts``, each part padded to its first (with ``trim``
    and examples sorted longest first: its longest) example's trimmed length, at ``per_token`` an example
    and token."""
    return int(sum((s.stop - s.start) * per_token * trimmed_length(x, trim, s.start) for s in parts))


def _view_bytes(view: dict) -> int:
    """Bytes held by the tensors of one capture's views (meta tensors hold none)."""
    return sum(t.numel() * t.element_size() for t in tree_flatten(view)[0]
               if isinstance(t, torch.Tensor) and t.device.type != "meta")
