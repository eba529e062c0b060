"""PACKED method: sign kernels from signs stored in 1 bit (or int8), contracted exactly.

For u, v in {-1, 0, +1}^P stored as a nonzero mask m and a sign bit s (1 = negative):

    <u, v> = popcount(m_u & m_v) - 2 popcount(m_u & m_v & (s_u ^ s_v))

which is P - 2 Hamming(s_u, s_v) when no entry is zero. The same integer is an
integer matrix product; by default blocks of at most 2^23 entries are unpacked
to float32 and multiplied by BLAS (exact, partial sums < 2^24), accumulating in
int64 -- much faster on CPU than elementwise popcounts. int8 storage uses the
same block product. asym_signgd keeps the x1
gradients real-valued and only the x2 side is stored as signs:
<g, sign h> = g @ sign(h)^T. eps-sign has no exact low-bit form (ValueError).

Signs of a group of tensors for all examples are held (P / 8 bytes per row
for bits instead of 4 P or 8 P), Jacobians are computed a chunk at a time.
"""
from __future__ import annotations

from typing import Callable, Mapping

import torch

from ntkcheck.models.kernels.common import Accumulator, KernelKind, Spec, activation_bytes, chunks
from ntkcheck.models.kernels.jacobian import jacobian_rows, plan_groups

_BITS = torch.tensor([1, 2, 4, 8, 16, 32, 64, 128], dtype=torch.uint8)
_EXACT_F32 = 2**23
_LUT: dict = {}


def pack_signs(g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[R, P] real -> (nonzero mask, negative bit), each [R, ceil(P / 8)] uint8, little-endian within a byte."""
    return pack_bits(g != 0), pack_bits(g < 0)


#: (b_0 + 2^8 b_1 + ... + 2^56 b_7) * _GATHER has b_0 + 2 b_1 + ... + 128 b_7 in its top byte: byte k lands on
#: bit 56 + k, every cross term on a distinct bit below 56 (no carries) or above 63 (wrapped away)
_GATHER = 0x0102040810204080


def pack_bits(bits: torch.Tensor) -> torch.Tensor:
    """[R, P] bool or uint8 in {0, 1} -> [R, ceil(P / 8)] uint8, bit k of byte j = bits[:, 8 j + k]: 8 bytes
    read as one int64 and gathered by one multiply (a few passes over P / 8 words)."""
    r, p = bits.shape
    b = bits.view(torch.uint8) if bits.dtype == torch.bool else bits
    if p % 64 or not b.is_contiguous():
        b = torch.nn.functional.pad(b, (0, (-p) % 64))
    words = b.view(torch.int64)  # [R, ceil(P / 64) * 8]: one int64 per 8 entries
    packed = ((words * _GATHER) >> 56).to(torch.uint8)
    return packed[:, : -(-p // 8)]


def pack_int8_signs(s: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor]:
    """[R, P] int8 {-1, 0, 1} -> (nonzero mask or None when no entry is 0, negative bit), as pack_signs.

    Works on the bytes (the top bit is the negative bit, the low bit the nonzero bit of -1, 0, 1): shifts and
    ANDs of uint8 run at memory speed where comparisons producing bool run several times slower."""
    u = s.view(torch.uint8)
    neg = pack_bits(u >> 7)
    mask = None if int(torch.count_nonzero(s)) == s.numel() else pack_bits(u & 1)
    return mask, neg


def _lane_luts(device) -> tuple[torch.Tensor, torch.Tensor]:
    """int64[256] tables whose 8 bytes are the int8 lanes of a packed byte: (1 - 2 bit_k) for a negative-bit
    byte, 0xFF * bit_k for a mask byte (ANDed with the signs it zeroes the entries whose mask bit is 0)."""
    key = ("lanes", str(device))
    if key not in _LUT:
        bits = (torch.arange(256)[:, None] >> torch.arange(8)) & 1  # [256, 8] little-endian
        signs = (1 - 2 * bits).to(torch.int8).contiguous().view(torch.int64).reshape(256)
        masks = (-bits).to(torch.int8).contiguous().view(torch.int64).reshape(256)
        _LUT[key] = (signs.to(device), masks.to(device))
    return _LUT[key]


def unpack_int8(neg: torch.Tensor, p: int, mask: torch.Tensor | None = None,
                out: torch.Tensor | None = None) -> torch.Tensor:
    """Inverse of pack_signs as int8 {-1, 0, 1} [R, p]: one table lookup per packed byte (8 entries).

    ``mask`` None means no entry is zero; ``out`` an int8 buffer of R * 8 * ceil(p / 8) entries."""
    signs, masks = _lane_luts(neg.device)
    r, nb = neg.shape
    res = torch.index_select(signs, 0, neg.reshape(-1).to(torch.int32),
                             out=None if out is None else out[: r * nb * 8].view(torch.int64))
    if mask is not None:
        res &= masks[mask.reshape(-1).to(torch.int64)]
    return res.view(torch.int8).view(r, nb * 8)[:, :p]


def unpack_float(neg: torch.Tensor, p: int, mask: torch.Tensor | None, dtype: torch.dtype,
                 out: torch.Tensor | None = None) -> torch.Tensor:
    """Inverse of pack_signs in ``dtype`` [R, p]: one lookup of 8 entries per packed byte into a 256-row table
    (65536 rows, by mask and sign byte together, when there is a mask): about twice the speed of unpacking
    to int8 and converting. ``out`` a buffer of R * 8 * ceil(p / 8) entries of ``dtype``."""
    r, nb = neg.shape
    if mask is None:
        key = ("signs8", dtype, str(neg.device))
        if key not in _LUT:
            bits = (torch.arange(256)[:, None] >> torch.arange(8)) & 1
            _LUT[key] = (1 - 2 * bits).to(dtype=dtype, device=neg.device).contiguous()
        table, idx = _LUT[key], neg.reshape(-1).to(torch.int32)
    else:
        table = _signs_lut(dtype, neg.device)
        idx = (mask.reshape(-1).to(torch.int32) << 8) | neg.reshape(-1).to(torch.int32)
    res = torch.index_select(table, 0, idx, out=None if out is None else out[: r * nb * 8].view(r * nb, 8))
    return res.view(r, nb * 8)[:, :p]


def float_sign_matmul(a: torch.Tensor, neg: torch.Tensor, p: int, mask: torch.Tensor | None,
                      block_bytes: int = 2**24) -> torch.Tensor:
    """a @ S^T for float a [R1, p] and signs S [R2, p] packed as (neg, mask) [R2, ceil(p / 8)] (pack_signs):
    [R1, R2] in a's dtype. S is unpacked a block of columns at a time into a buffer of about ``block_bytes``
    (16 MiB: it stays in cache, where the table lookup runs at its own speed rather than at the speed of
    writing all of S to memory and reading it back) and each block's product added in."""
    r2, nb = neg.shape
    step = max(1, block_bytes // max(1, r2 * 8 * a.element_size()))   # packed bytes of a row per block
    out = torch.zeros(a.shape[0], r2, dtype=a.dtype, device=a.device)
    buf = torch.empty(r2 * 8 * min(step, nb), dtype=a.dtype, device=a.device)
    for j in range(0, nb, step):
        k = min(nb, j + step)
        width = min(p, 8 * k) - 8 * j
        S = unpack_float(neg[:, j:k].contiguous(), width, None if mask is None else mask[:, j:k].contiguous(),
                         a.dtype, out=buf)
        out.addmm_(a[:, 8 * j: 8 * j + width], S.T)
    return out


def sign_matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Exact a @ b^T of int8 {-1, 0, 1} matrices [R1, P], [R2, P] -> int32 (P < 2^31).

    On CPU torch._int_mm (int8 products, int32 sums: AMX / VNNI where the CPU has them, several times the
    float32 rate; torch 2.13's CPU kernel returns garbage for P = 1, so it is used from P = 8); elsewhere
    float32 blocks of at most 2^23 columns (exact, partial sums < 2^24)."""
    if a.device.type == "cpu" and 8 <= a.shape[1] < 2**31:
        return torch._int_mm(a, b.T)
    out = torch.zeros(a.shape[0], b.shape[0], dtype=torch.int32, device=a.device)
    for s in chunks(a.shape[1], _EXACT_F32):
        out += (a[:, s].float() @ b[:, s].float().T).round().to(torch.int32)
    return out


_M1, _M2, _M4, _H01 = 0x5555555555555555, 0x3333333333333333, 0x0F0F0F0F0F0F0F0F, 0x0101010101010101


def popcount64(x: torch.Tensor) -> torch.Tensor:
    """Number of set bits of each int64 (SWAR; the masks clear the sign extension of >>)."""
    x = x - ((x >> 1) & _M1)
    x = (x & _M2) + ((x >> 2) & _M2)
    x = (x + (x >> 4)) & _M4
    return (x * _H01) >> 56


def _words(b: torch.Tensor) -> torch.Tensor:
    """[R, nb] uint8 -> [R, ceil(nb / 8)] int64 (zero padded)."""
    pad = (-b.shape[1]) % 8
    return torch.nn.functional.pad(b, (0, pad)).contiguous().view(torch.int64)


def packed_dot(a: tuple[torch.Tensor, torch.Tensor], b: tuple[torch.Tensor, torch.Tensor],
               budget: int = 2**28, via: str = "matmul") -> torch.Tensor:
    """Exact <sign u_r, sign v_s> for packed rows (bytes or 64-bit words): [R1, R2] int64.

    via="matmul": blocks of at most 2^23 entries are unpacked to {-1, 0, 1} float32 and multiplied
    (exact: every partial sum is an integer below 2^24), accumulating in int64 -- BLAS speed.
    via="popcount": popcount(m_u & m_v) - 2 popcount(m_u & m_v & (s_u ^ s_v)) on 64-bit words
    (P - 2 Hamming when nothing is zero); no float copies, but elementwise-slow on CPU.
    Temporaries are kept under ``budget`` bytes.
    """
    w = lambda t: t if t.dtype == torch.int64 else _words(t)
    (ma, sa), (mb, sb) = (w(a[0]), w(a[1])), (w(b[0]), w(b[1]))
    r1, nw = ma.shape
    r2 = mb.shape[0]
    out = torch.zeros(r1, r2, dtype=torch.int64, device=ma.device)
    if via == "matmul":
        width = max(1, min(_EXACT_F32 // 64, budget // max(1, 2 * 4 * 64 * (r1 + r2))))
        for blk in chunks(nw, width):
            n_ent = (blk.stop - blk.start) * 64
            U = _unpack(ma[:, blk], sa[:, blk], n_ent, torch.float32)
            V = U if a is b else _unpack(mb[:, blk], sb[:, blk], n_ent, torch.float32)
            out += (U @ V.T).round().long()
        return out
    if via != "popcount":
        raise ValueError(f"via must be 'matmul' or 'popcount', got {via!r}")
    width = max(1, min(nw, budget // max(1, 40 * r2)))
    step = max(1, budget // max(1, 40 * r2 * width))
    for blk in chunks(nw, width):
        for s in chunks(r1, step):
            both = ma[s, None, blk] & mb[None, :, blk]
            differ = both & (sa[s, None, blk] ^ sb[None, :, blk])
            out[s] += popcount64(both).sum(-1) - 2 * popcount64(differ).sum(-1)
    return out


def int8_dot(a: torch.Tensor, b: torch.Tensor, budget: int = 2**28) -> torch.Tensor:
    """Exact integer product a @ b^T of int8 sign matrices [R1, P], [R2, P] -> int64 [R1, R2].

    On CPU sign_matmul (int8 products, int32 sums) over column blocks of at most 2^30 (|partial sums| <
    2^31); elsewhere float32 blocks of at most 2^23 (exact: |partial sums| < 2^24), also kept under
    ``budget`` bytes of float32 copies; accumulated in int64.
    """
    out = torch.zeros(a.shape[0], b.shape[0], dtype=torch.int64, device=a.device)
    if a.device.type == "cpu":
        for s in chunks(a.shape[1], 2**30):
            out += sign_matmul(a[:, s], b[:, s]).long()
        return out
    width = max(1, min(_EXACT_F32, budget // max(1, 4 * (a.shape[0] + b.shape[0]))))
    for s in chunks(a.shape[1], width):
        out += (a[:, s].float() @ b[:, s].float().T).round().long()
    return out


def packed_kernel(f: Callable, params: Mapping[str, torch.Tensor], x1: torch.Tensor, x2: torch.Tensor | None,
                  c: int, spec: Spec, acc: Accumulator, plan=None) -> None:
    """Adds sum_M eta_M <phi1 grad_M f(x1), sign grad_M f(x2)> with packed signs into ``acc``
    (spec.extra["sign_storage"]: "bits" or "int8")."""
    storage = spec.extra.get("sign_storage", "bits")
    if spec.kind is KernelKind.SGD:
        raise ValueError("method 'packed' computes sign kernels; kind 'sgd' has no signs (use 'jacobian')")
    if storage not in ("bits", "int8"):
        raise ValueError(f"sign_storage must be 'bits' or 'int8', got {storage!r}")
    bad = [n for n in spec.names if spec.eps[n] != 0]
    if bad:
        raise ValueError(f"method 'packed' stores exact signs; eps-sign (eps > 0) for {bad} has no packed form")
    same = x2 is None
    xb = x1 if same else x2
    n1, n2 = x1.shape[0], xb.shape[0]
    act = activation_bytes(f, params, x1[:1]) * (1 + c)
    asym = spec.kind is KernelKind.ASYM_SIGNGD
    # signs of all rows of a group (2 bits per entry and row) take at most half of the budget
    rows = (n1 + (0 if same else n2)) * c
    for group in plan_groups(params, spec.names, c, spec, cap=min(spec.budget // (4 * c * spec.itemsize),
                                                                   spec.budget * 4 // (2 * max(1, rows)))):
        p = sum(params[n].numel() for n in group)
        b = max(1, spec.budget // (4 * (c * p * spec.itemsize + act)))

        def store(x, n_rows):
            held = {n: [] for n in group}
            for s in chunks(n_rows, b):
                J = jacobian_rows(f, params, group, x[s])
                for n in group:
                    g = J[n].reshape(-1, J[n].shape[-1])
                    if storage == "bits":
                        held[n].append(tuple(_words(t) for t in pack_signs(g)))
                    else:
                        held[n].append(torch.sign(g).to(torch.int8))
                del J
            if storage == "bits":
                return {n: (torch.cat([h[0] for h in held[n]]), torch.cat([h[1] for h in held[n]])) for n in group}
            return {n: torch.cat(held[n]) for n in group}

        S2 = store(xb, n2)
        if not asym:
            S1 = S2 if same else store(x1, n1)
            for n in group:
                dot = (packed_dot(S1[n], S2[n], spec.budget // 4) if storage == "bits"
                       else int8_dot(S1[n], S2[n], spec.budget // 4))
                acc.add(n, dot.to(spec.out_dtype).reshape(n1, c, n2, c))
            continue
        for s in chunks(n1, b):
            J = jacobian_rows(f, params, group, x1[s])
            for n in group:
                g = J[n].reshape(-1, J[n].shape[-1])
                if storage == "bits":
                    m, neg = S2[n]
                    out = torch.zeros(g.shape[0], m.shape[0], dtype=g.dtype, device=g.device)
                    # unpack 64-entry words a block at a time: n2 C x width floats, not n2 C x |M|
                    width = max(1, (spec.budget // 8) // max(1, m.shape[0] * 64 * spec.itemsize))
                    for w in chunks(m.shape[1], width):
                        lo, hi = w.start * 64, min(g.shape[-1], w.stop * 64)
                        sg = _unpack(m[:, w], neg[:, w], hi - lo, g.dtype)
                        out += g[:, lo:hi] @ sg.T
                else:
                    out = g @ S2[n].to(g.dtype).T
                acc.add(n, out.reshape(s.stop - s.start, c, n2, c), s, slice(None))


def _signs_lut(dtype: torch.dtype, device) -> torch.Tensor:
    """[65536, 8]: row (m << 8 | s) holds the 8 entries m_k (1 - 2 s_k) of a (mask, sign) byte pair."""
    key = (dtype, str(device))
    if key not in _LUT:
        v = torch.arange(256)
        bits = ((v[:, None] >> torch.arange(8)) & 1).to(dtype)  # [256, 8], little-endian
        _LUT[key] = (bits[:, None, :] * (1 - 2 * bits[None, :, :])).reshape(65536, 8).to(device)
    return _LUT[key]


def _unpack(m: torch.Tensor, neg: torch.Tensor, p: int, dtype: torch.dtype) -> torch.Tensor:
    """Inverse of pack_signs (bytes or 64-bit words) -> [R, P] in {-1, 0, 1}: unpack_float on their bytes."""
    r = m.shape[0]
    m, neg = m.contiguous().view(torch.uint8).view(r, -1), neg.contiguous().view(torch.uint8).view(r, -1)
    return unpack_float(neg, p, m, dtype)
