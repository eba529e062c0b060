"""Kernel-engine properties: sign identities, symmetry / PSD, the JL bound of the sketch, LoRA and
IntrinsicDimension kernels against their definitions ([KV] Lemma D.3, D.4, Def. D.1), the memory budget."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from ntkcheck.models import NTK, build, functional
from ntkcheck.models.kernels import (empirical_kernel, flatten, intrinsic_dimension_kernel, jl_epsilon, lora_kernel,
                                     pack_signs, packed_dot)
from ntkcheck.models.kernels.packed import (float_sign_matmul, int8_dot, pack_int8_signs, popcount64, sign_matmul,
                                           unpack_float, unpack_int8)
from ntkcheck.models.kernels.sketch import exact_tensors, projection_block

DT = torch.float64


@pytest.fixture(scope="module")
def mlp():
    model = build("mlp", 16, NTK, seed=0, dtype=DT, d_in=6, d_out=2, depth=2, bias=True)
    f, params = functional(model.eval())
    x = torch.randn(6, 6, generator=torch.Generator().manual_seed(1), dtype=DT)
    return model, f, params, x


def ternary(seed, rows, p, zero_frac):
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(rows, p, generator=g, dtype=DT)
    v[torch.rand(rows, p, generator=g, dtype=DT) < zero_frac] = 0
    return v


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**20), p=st.integers(1, 300), zero=st.sampled_from([0.0, 0.3]))
def test_packed_sign_dot_is_exact(seed, p, zero):
    u, v = ternary(seed, 3, p, zero), ternary(seed + 1, 4, p, zero)
    exact = (torch.sign(u) @ torch.sign(v).T).long()
    assert torch.equal(packed_dot(pack_signs(u), pack_signs(v), budget=4096), exact)
    assert torch.equal(packed_dot(pack_signs(u), pack_signs(v), budget=4096, via="popcount"), exact)
    assert torch.equal(int8_dot(torch.sign(u).to(torch.int8), torch.sign(v).to(torch.int8)), exact)
    if zero == 0.0:
        # no zeros: <sign u, sign v> = P - 2 Hamming(sign bits)
        ham = ((u[:, None, :] < 0) != (v[None, :, :] < 0)).sum(-1)
        assert torch.equal(exact, p - 2 * ham)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**20), p=st.integers(1, 300), zero=st.sampled_from([0.0, 0.3]))
def test_int8_signs_round_trip_through_bits_and_multiply_exactly(seed, p, zero):
    """pack_int8_signs -> unpack_int8 is the identity on {-1, 0, 1} (a mask only when an entry is 0), its bytes
    are pack_signs' (bit k of byte j is entry 8 j + k), and sign_matmul is the exact integer product."""
    u, v = ternary(seed, 3, p, zero), ternary(seed + 1, 4, p, zero)
    su, sv = torch.sign(u).to(torch.int8), torch.sign(v).to(torch.int8)
    mask, neg = pack_int8_signs(su)
    ref_mask, ref_neg = pack_signs(u)
    assert torch.equal(neg, ref_neg)
    assert (mask is None) == bool((su != 0).all())
    if mask is not None:
        assert torch.equal(mask, ref_mask)
    assert torch.equal(unpack_int8(neg, p, mask), su)
    assert torch.equal(unpack_float(neg, p, mask, DT), torch.sign(u))
    assert torch.equal(unpack_float(neg, p, mask, torch.float32, out=torch.empty(3 * neg.shape[1] * 8)),
                       torch.sign(u).float())
    bits = ((neg[:, :, None].long() >> torch.arange(8)) & 1).reshape(3, -1)[:, :p]
    assert torch.equal(bits.bool(), u < 0)
    exact = su.long() @ sv.long().T
    assert torch.equal(sign_matmul(su, sv).long(), exact)
    assert torch.equal(int8_dot(su, sv), exact)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**20), b1=st.integers(1, 5), b2=st.integers(1, 4), dead=st.sampled_from([0, 1, 3]),
       budget=st.sampled_from([256, 2**30]))
def test_packed_gram_is_the_padded_gram(seed, b1, b2, dead, budget):
    """_packed_gram over live tokens equals sum_{t,s} <g_t, g_s> <a_t, a_s> over all positions, with padding
    (zero g), examples without a live token (``dead`` rows of g zeroed) and rows in chunks of one example
    (budget 256 bytes) alike."""
    from ntkcheck.models.kernels.common import KernelKind, Spec
    from ntkcheck.models.kernels.structured import _pack, _packed_gram, live_tokens

    gen = torch.Generator().manual_seed(seed)
    C, T, n_in, n_out = 2, 5, 3, 4
    a1, g1 = torch.randn(b1, T, n_in, generator=gen, dtype=DT), torch.randn(b1, C, T, n_out, generator=gen, dtype=DT)
    a2, g2 = torch.randn(b2, T, n_in, generator=gen, dtype=DT), torch.randn(b2, C, T, n_out, generator=gen, dtype=DT)
    g1[:, :, 3:] = 0                      # padding of the rows
    g2[:, :, 4:] = 0
    g1[:min(dead, b1)] = 0                # rows whose gradient is exactly 0
    ref = torch.einsum("ictd,jbsd,itn,jsn->icjb", g1, g2, a1, a2)
    spec = Spec(kind=KernelKind.SGD, names=["w"], weights={"w": 1.0}, eps={"w": 0.0}, dtype=DT,
                device=torch.device("cpu"), budget=budget)
    out = _packed_gram(spec, (a1, g1, live_tokens(g1)), _pack(a2, g2, live_tokens(g2), DT),
                       torch.empty(b1, C, b2, C, dtype=DT))
    assert torch.allclose(out, ref, rtol=1e-12, atol=1e-12)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**20), n_out=st.integers(1, 9), n_in=st.integers(1, 17), zero=st.booleans())
def test_example_sign_bits_are_the_packed_signs_of_the_gradients(seed, n_out, n_in, zero):
    """example_sign_bits (formed, signed and packed one example at a time in cache) gives pack_int8_signs of
    the int8 signs example_signs writes out, mask included exactly when some entry is 0 (a zero row of g)."""
    from ntkcheck.models.kernels.structured import example_sign_bits, example_signs

    gen = torch.Generator().manual_seed(seed)
    B, C, T = 3, 2, 4
    g, a = torch.randn(B, C, T, n_out, generator=gen), torch.randn(B, T, n_in, generator=gen)
    if zero:
        g[1, :, :, 0] = 0      # example 1: a zero output row, so zero gradient entries
    s, N = slice(1, 3), n_out * n_in
    ref = example_signs(g, a, s, torch.empty(C * N), torch.empty(2 * C, N, dtype=torch.int8))
    mask, neg = example_sign_bits(g, a, s, torch.empty(C * N), torch.empty(C * N, dtype=torch.int8))
    ref_mask, ref_neg = pack_int8_signs(ref)
    assert torch.equal(neg, ref_neg) and (mask is None) == (ref_mask is None) == (not zero)
    if zero:
        assert torch.equal(mask, ref_mask)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**20), p=st.integers(1, 300), zero=st.sampled_from([0.0, 0.3]),
       block=st.sampled_from([1, 40, 2**24]))
def test_float_times_packed_signs_in_blocks(seed, p, zero, block):
    """float_sign_matmul(a, bits of S) = a @ S^T for S in {-1, 0, 1} (with and without a mask), whether S is
    unpacked one packed byte at a time, in blocks of a few bytes, or whole: float64 products by +-1 are exact,
    so only the order of the sums differs."""
    a, v = ternary(seed, 3, p, 0.0), ternary(seed + 1, 4, p, zero)
    mask, neg = pack_int8_signs(torch.sign(v).to(torch.int8))
    out = float_sign_matmul(a, neg, p, mask, block_bytes=block)
    assert out.dtype == DT and torch.allclose(out, a @ torch.sign(v).T, rtol=1e-13, atol=1e-12)


@settings(max_examples=30, deadline=None)
@given(x=st.integers(-2**63, 2**63 - 1))
def test_popcount64(x):
    assert int(popcount64(torch.tensor([x]))[0]) == bin(x & (2**64 - 1)).count("1")


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**20), m=st.integers(1, 12), n=st.integers(1, 12))
def test_sign_of_outer_product_factorizes(seed, m, n):
    """sign(g a^T) = sign(g) sign(a)^T, hence <sign(g a^T), sign(h b^T)> = <sign g, sign h><sign a, sign b>."""
    g, h = ternary(seed, 1, m, 0.2)[0], ternary(seed + 1, 1, m, 0.2)[0]
    a, b = ternary(seed + 2, 1, n, 0.2)[0], ternary(seed + 3, 1, n, 0.2)[0]
    assert torch.equal(torch.sign(torch.outer(g, a)), torch.outer(torch.sign(g), torch.sign(a)))
    lhs = (torch.sign(torch.outer(g, a)) * torch.sign(torch.outer(h, b))).sum()
    assert lhs == torch.dot(torch.sign(g), torch.sign(h)) * torch.dot(torch.sign(a), torch.sign(b))


@pytest.mark.parametrize("kind", ["sgd", "signgd"])
@pytest.mark.parametrize("method", ["jacobian", "structured"])
def test_symmetric_kinds_are_symmetric_psd(kind, method, mlp):
    _, f, params, x = mlp
    K = flatten(empirical_kernel(f, params, x, kind=kind, method=method))
    assert torch.equal(K, K.T)
    ev = torch.linalg.eigvalsh(K)
    assert float(ev.min()) > -1e-10 * float(ev.max())


def test_asym_signgd_diagonal_is_l1_norm(mlp):
    """K_A(x, x)[a, a] = <g, sign g> = ||g||_1 >= 0, and signgd's diagonal counts nonzero coordinates."""
    _, f, params, x = mlp
    KA = empirical_kernel(f, params, x, kind="asym_signgd")
    KS = empirical_kernel(f, params, x, kind="signgd")
    J = torch.func.vmap(torch.func.jacrev(lambda p, xi: f(p, xi[None])[0]), in_dims=(None, 0))(params, x)
    G = torch.cat([J[n].reshape(x.shape[0], 2, -1) for n in params], dim=-1)
    for a in range(2):
        assert torch.allclose(torch.diagonal(KA[:, a, :, a]), G[:, a].abs().sum(-1), rtol=1e-12)
        assert torch.equal(torch.diagonal(KS[:, a, :, a]), (G[:, a] != 0).sum(-1).to(DT))


def test_eps_sign_limits(mlp):
    """eps-sign -> sign as eps -> 0 and eps * eps-sign -> identity as eps -> inf."""
    _, f, params, x = mlp
    S = empirical_kernel(f, params, x, kind="asym_signgd")
    S_eps = empirical_kernel(f, params, x, kind="asym_signgd", eps=1e-12)
    assert float((S - S_eps).abs().max() / S.abs().max()) < 1e-6
    K = empirical_kernel(f, params, x)
    big = 1e8
    K_eps = empirical_kernel(f, params, x, kind="signgd", eps=big) * big * big
    assert float((K - K_eps).abs().max() / K.abs().max()) < 1e-6
    auto = empirical_kernel(f, params, x, kind="signgd", eps="auto")
    assert torch.isfinite(auto).all()


@pytest.mark.parametrize("sketch", ["gaussian", "sparse_sign"])
@pytest.mark.parametrize("kind", ["sgd", "signgd", "asym_signgd"])
def test_sketch_within_jl_bound(kind, sketch, mlp):
    """[KV] Lemma D.3 with a union bound over the (N C)^2 entries, at failure probability 1%, seeded."""
    _, f, params, x = mlp
    k = 2048
    K = empirical_kernel(f, params, x, kind=kind, method="jacobian")
    Kh = empirical_kernel(f, params, x, kind=kind, method="sketch", sketch_dim=k, sketch=sketch, seed=3)
    J = torch.func.vmap(torch.func.jacrev(lambda p, xi: f(p, xi[None])[0]), in_dims=(None, 0))(params, x)
    G = torch.cat([J[n].reshape(-1, J[n][0, 0].numel()) for n in params], dim=-1)
    feats = [G] if kind == "sgd" else [torch.sign(G)] if kind == "signgd" else [G, torch.sign(G)]
    c = max(float((v * v).sum(-1).max()) for v in feats)
    eps = jl_epsilon(k, K.numel(), 0.01)
    assert float((Kh - K).abs().max()) <= c * eps
    again = empirical_kernel(f, params, x, kind=kind, method="sketch", sketch_dim=k, sketch=sketch, seed=3)
    assert torch.equal(Kh, again)


def test_intrinsic_dimension_kernel(mlp):
    """Def. D.1: grad_{theta_hat} f = Pi^T grad f over every tensor, small ones included (unlike the sketch
    kernel, which keeps those exact). sgd: equals the per-example gradients projected by hand with the
    seeded Gaussian blocks; signgd takes signs of the dim-vector, so entries are integers of magnitude <= dim."""
    from ntkcheck.models.kernels.sketch import project

    _, f, params, x = mlp
    KI = intrinsic_dimension_kernel(f, params, x, dim=64, seed=5)
    G, start, S = _flat_grads(f, params, x), 0, 0
    for i, (n, p) in enumerate(params.items()):
        S = S + project(G[:, start:start + p.numel()], 64, 5, i, "gaussian", 1 << 30)
        start += p.numel()
    torch.testing.assert_close(KI.reshape(S.shape[0], -1), S @ S.T, rtol=1e-12, atol=1e-12)
    KS = empirical_kernel(f, params, x, method="sketch", sketch_dim=64, seed=5)
    assert not torch.allclose(KI, KS, rtol=1e-6)   # the sketch kernel keeps the biases exact
    Ks = intrinsic_dimension_kernel(f, params, x, dim=64, kind="signgd", seed=5)
    assert torch.equal(Ks, Ks.round()) and float(Ks.abs().max()) <= 64


def test_lora_kernel_matches_explicit_lora_model():
    """Lemma D.4 by construction: a network with adapters z = x W^T + s (x A^T) B^T at B = 0; the naive
    kernel over the B's equals lora_kernel (single token and sequences)."""
    g = torch.Generator().manual_seed(7)
    p = {"w1": torch.randn(10, 4, generator=g, dtype=DT), "b1": torch.randn(10, generator=g, dtype=DT),
         "w2": torch.randn(3, 10, generator=g, dtype=DT)}
    scale, rank = 2.0, 5

    def f(q, x):
        h = torch.tanh(F.linear(x, q["w1"]) * 0.5 + q["b1"])
        return F.linear(h, q["w2"]).reshape(x.shape[0], -1, 3).mean(1)

    A = {n: projection_block(rank, p[n].shape[1], 11, i, 0, "gaussian", DT, "cpu").T
         for i, n in enumerate(p) if n != "b1"}

    def f_lora(B, x):
        z1 = F.linear(x, p["w1"]) + scale * F.linear(F.linear(x, A["w1"]), B["w1"])
        h = torch.tanh(z1 * 0.5 + p["b1"])
        z2 = F.linear(h, p["w2"]) + scale * F.linear(F.linear(h, A["w2"]), B["w2"])
        return z2.reshape(x.shape[0], -1, 3).mean(1)

    B0 = {"w1": torch.zeros(10, rank, dtype=DT), "w2": torch.zeros(3, rank, dtype=DT)}
    for shape in ((5, 4), (5, 3, 4)):
        x = torch.randn(*shape, generator=g, dtype=DT)
        ref = empirical_kernel(f_lora, B0, x, method="jacobian")
        K = lora_kernel(f, p, x, rank=rank, scale=scale, select=["w1", "w2"], seed=11)
        assert float((K - ref).abs().max() / ref.abs().max()) < 1e-10
    xs = torch.randn(5, 4, generator=g, dtype=DT)
    for kind in ("signgd", "asym_signgd"):
        ref = empirical_kernel(f_lora, B0, xs, kind=kind, method="jacobian")
        K = lora_kernel(f, p, xs, rank=rank, scale=scale, kind=kind, select=["w1", "w2"], seed=11)
        assert float((K - ref).abs().max() / ref.abs().max()) < 1e-10


_MEMORY_SCRIPT = textwrap.dedent("""
    import json, sys, torch
    torch.set_num_threads(1)
    from torch.func import jacrev, vmap
    from ntkcheck.models import NTK, build, functional
    from ntkcheck.models.kernels import empirical_kernel
    from ntkcheck.models.kernels.memory import PeakRSS
    budget = int(sys.argv[1])
    model = build("mlp", 384, NTK, seed=0, dtype=torch.float64, d_in=64, d_out=2, depth=2)
    f, p = functional(model.eval())
    x = torch.randn(8, 64, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    out = {}
    for method, kind in (("jacobian", "sgd"), ("structured", "signgd"), ("packed", "signgd"), ("ntk_vp", "sgd")):
        empirical_kernel(f, p, x[:2], kind=kind, method=method, memory_budget=budget)  # warm-up, lazy init
        with PeakRSS() as m:
            empirical_kernel(f, p, x, kind=kind, method=method, memory_budget=budget)
        out[method] = m.peak_delta
    with PeakRSS() as m:
        J = vmap(jacrev(lambda q, xi: f(q, xi[None])[0]), in_dims=(None, 0))(p, x)
    out["held_jacobians"] = m.peak_delta
    out["jacobian_bytes"] = sum(v.numel() * v.element_size() for v in J.values())
    print(json.dumps(out))
""")


def test_peak_rss_sees_a_block_freed_at_once(monkeypatch):
    """PeakRSS reads the kernel's own peak (VmHWM, reset on entry): a 400 MB tensor filled and freed inside
    the block shows in peak_delta, and not in a later block that allocates nothing (the reset works). The
    sampling fallback (reset refused) sees a block held for 50 ms as well."""
    import time

    import ntkcheck.models.kernels.memory as mem

    big = 100_000_000
    with mem.PeakRSS() as m:
        x = torch.ones(big)
        del x
    assert m.exact and m.peak_delta >= 0.9 * 4 * big, m.peak_delta
    with mem.PeakRSS() as m:
        pass
    assert m.peak_delta < 0.1 * 4 * big, m.peak_delta
    monkeypatch.setattr(mem, "_reset_peak", lambda: False)
    with mem.PeakRSS() as m:
        x = torch.ones(big)
        time.sleep(0.05)
        del x
    assert not m.exact and m.peak_delta >= 0.9 * 4 * big, m.peak_delta


def test_saved_bytes_counts_what_autograd_keeps_for_backward():
    """saved_bytes of f = tanh(x W^T) * 2 is the input x (kept for grad W) and tanh's output (kept for its own
    derivative), each once, and not W itself; the product by a constant keeps nothing."""
    from ntkcheck.models.kernels.common import saved_bytes

    params = {"W": torch.randn(7, 5, dtype=DT)}
    x = torch.randn(3, 5, dtype=DT)
    f = lambda p, x: torch.tanh(F.linear(x, p["W"])) * 2.0  # noqa: E731
    assert saved_bytes(f, params, x) == (3 * 5 + 3 * 7) * 8
    assert saved_bytes(lambda p, x: F.linear(x, p["W"]) * 2.0, params, x) == 3 * 5 * 8


def test_capture_example_bytes_counts_a_pass_at_its_high_water():
    """For f = sum_t tanh(x_t W^T) (C = 7 outputs, T = 4 tokens, W not requiring grad) one example of a capture
    pass holds tanh's saved output (T x 7), the linear's input that autograd does not keep (T x 5), the
    delta leaf (T x 7), and C + 2 more of the delta's size (the result's gradients, one backward pass's,
    the backward intermediates): 28 + 20 + (7 + 3) 28 float64 entries. The count before this one (factors
    plus twice the plain forward's saved tensors) said 2.4x too little on SmolLM2."""
    from ntkcheck.models.kernels.structured import capture_example_bytes

    params = {"W": torch.randn(7, 5, dtype=DT)}
    x = torch.randn(3, 4, 5, dtype=DT)
    f = lambda p, x: torch.tanh(F.linear(x, p["W"])).sum(1)  # noqa: E731
    assert capture_example_bytes(f, params, ["W"], x, 7) == (28 + 20 + 10 * 28) * 8
    # a second use of the same input (q and k of one hidden state) adds its delta, not its input again
    g = lambda p, x: (torch.tanh(F.linear(x, p["W"])) + F.linear(x, p["W"])).sum(1)  # noqa: E731
    assert capture_example_bytes(g, params, ["W"], x, 7) == (28 + 20 + 10 * 2 * 28) * 8


_SAVED_BYTES_SCRIPT = textwrap.dedent("""
    import gc, torch, torch.nn.functional as F
    from ntkcheck.models.kernels.common import saved_bytes
    from ntkcheck.models.kernels.memory import rss_bytes
    x = torch.randn(1, 2000, dtype=torch.float64)
    f = lambda p, x: torch.tanh(F.linear(x, p["W"]))
    saved_bytes(f, {"W": torch.randn(2000, 2000, dtype=torch.float64)}, x)
    gc.collect()
    r0 = rss_bytes()
    for _ in range(5):
        saved_bytes(f, {"W": torch.randn(2000, 2000, dtype=torch.float64)}, x)
    gc.collect()
    print((rss_bytes() - r0) / 2**20)
""")


def test_saved_bytes_keeps_no_tensor_alive():
    """saved_bytes of f = tanh(x W^T), whose saved output would sit in a reference cycle with its own graph if
    the pack hook kept it, frees everything: five calls with fresh 32 MB weights leave RSS within 40 MB (it
    grew by 32 MB a call before the fix). In a fresh process with glibc's mmap threshold fixed (child_env), so
    that a freed 32 MB block leaves RSS whatever earlier tests did to the heap."""
    from ntkcheck.models.kernels.memory import child_env

    res = subprocess.run([sys.executable, "-c", _SAVED_BYTES_SCRIPT], capture_output=True, text=True,
                         env=child_env(), timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    grown = float(res.stdout.strip().splitlines()[-1])
    assert grown < 40, grown


def test_memory_budget_respected():
    """Peak RSS (sampled, glibc set to mmap tensors) of each exact method stays under the budget, while
    holding all Jacobians (the control) needs over 2x the budget -- so the meter sees what is allocated."""
    from ntkcheck.models.kernels.memory import child_env

    budget = 8 * 2**20
    res = subprocess.run([sys.executable, "-c", _MEMORY_SCRIPT, str(budget)], capture_output=True, text=True,
                         env=child_env(threshold=65536), timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["held_jacobians"] >= 0.8 * out["jacobian_bytes"] > 2 * budget, out
    for method in ("jacobian", "structured", "packed", "ntk_vp"):
        assert out[method] <= budget, (method, out)


def test_mmap_large_blocks_returns_freed_tensors_to_the_os():
    """After mmap_large_blocks() (what ntkcheck lm calls), freeing every other one of 200 tensors of 5 MB
    (above its 4 MiB threshold) gives their memory back (RSS falls by about half); glibc's default keeps the
    holes in its heap (RSS unchanged: the control). Fresh processes, default environment."""
    script = textwrap.dedent("""
        import json, sys, torch
        from ntkcheck.models.kernels.memory import mmap_large_blocks, rss_bytes
        ok = mmap_large_blocks() if sys.argv[1] == "1" else None
        big = torch.ones(4_000_000); del big   # a large free, after which glibc raises its threshold
        r0 = rss_bytes(); x = [torch.ones(1_250_000) for _ in range(200)]; r1 = rss_bytes()
        for i in range(0, len(x), 2):
            x[i] = None
        print(json.dumps({"ok": ok, "held": r1 - r0, "left": rss_bytes() - r0}))
    """)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    out = {}
    for mode in ("1", "0"):
        res = subprocess.run([sys.executable, "-c", script, mode], capture_output=True, text=True, env=env,
                             timeout=120)
        assert res.returncode == 0, res.stderr[-2000:]
        out[mode] = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["1"]["ok"] and out["1"]["left"] < 0.6 * out["1"]["held"], out
    assert out["0"]["left"] > 0.9 * out["0"]["held"], out


def test_freed_heap_blocks_count_as_available():
    """Freeing 400 MB of 64 KiB tensors (below the 4 MiB mmap threshold, so glibc keeps them in its heap,
    behind a live sentinel that stops it trimming) raises heap_free_bytes by about 400 MB, and the CPU's
    available_bytes is MemAvailable plus that. Fresh process, the engine's environment (child_env)."""
    from ntkcheck.models.kernels.memory import child_env

    script = textwrap.dedent("""
        import json, torch
        from ntkcheck.models.kernels.memory import available_bytes, heap_free_bytes
        from ntkcheck.resources import available_memory
        f0 = heap_free_bytes()
        x = [torch.ones(16384) for _ in range(6400)]     # 6400 x 64 KiB = 400 MiB
        sentinel = torch.ones(16384)
        x = None
        f1 = heap_free_bytes()
        a, m, f2 = available_bytes("cpu"), available_memory(), heap_free_bytes()
        print(json.dumps({"freed": f1 - f0, "avail": a, "mem": m, "heap": f2}))
    """)
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=child_env(), timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert 0.9 * 400 * 2**20 <= out["freed"] <= 1.1 * 400 * 2**20, out
    # available_bytes read MemAvailable a moment before available_memory did: equal up to other processes
    assert abs(out["avail"] - (out["mem"] + out["heap"])) < 64 * 2**20, out


def _flat_grads(f, params, x):
    J = torch.func.vmap(torch.func.jacrev(lambda p, xi: f(p, xi[None])[0]), in_dims=(None, 0))(params, x)
    return torch.cat([J[n].reshape(J[n].shape[0] * J[n].shape[1], -1) for n in params], dim=-1)  # [N C, P]


@pytest.mark.parametrize("kind", ["sgd", "signgd", "asym_signgd"])
def test_countsketch_is_unbiased_with_its_variance(kind, mlp):
    """E[<Pi^T u, Pi^T v>] = <u, v> and Var = (|u|^2 |v|^2 + <u, v>^2 - 2 sum_p u_p^2 v_p^2) / k for
    CountSketch, u and v over the tensors not kept exact (exact_tensors): the mean over 400 seeds lies within 4.5
    standard errors of the exact kernel, entry by entry, and the empirical variance within a factor 1.5
    of the formula."""
    _, f, params, x = mlp
    k, S = 32, 400
    K = empirical_kernel(f, params, x, kind=kind, method="jacobian")
    G = _flat_grads(f, params, x)
    # the smallest tensors, at most k entries in all (two biases), enter exactly: the variance is the rest's
    exact = exact_tensors({n: p.numel() for n, p in params.items()}, {n: "total" for n in params}, k)
    assert 0 < sum(params[n].numel() for n in exact) <= k
    sketched = torch.cat([torch.full((p.numel(),), n not in exact) for n, p in params.items()])
    assert 0 < int(sketched.sum()) < G.shape[1]
    G = G[:, sketched]
    u = torch.sign(G) if kind == "signgd" else G
    v = G if kind == "sgd" else torch.sign(G)
    var = ((u * u).sum(1)[:, None] * (v * v).sum(1)[None] + (u @ v.T) ** 2 - 2 * (u * u) @ (v * v).T) / k
    draws = torch.stack([empirical_kernel(f, params, x, kind=kind, method="sketch", sketch="countsketch",
                                          sketch_dim=k, seed=s) for s in range(S)])
    n, c = K.shape[:2]
    mean = draws.mean(0).reshape(n * c, n * c)
    z = (mean - K.reshape(n * c, n * c)).abs() / (var / S).sqrt().clamp_min(1e-12)
    assert float(z.max()) < 4.5
    emp = draws.reshape(S, n * c, n * c).var(0)
    ratio = emp.sum() / var.sum()
    assert 0.67 < float(ratio) < 1.5


@pytest.mark.parametrize("sketch", ["countsketch", "gaussian"])
@pytest.mark.parametrize("kind", ["sgd", "signgd", "asym_signgd"])
def test_small_tensors_enter_the_sketch_exactly(kind, sketch, mlp):
    """With k at least the number of parameters nothing is projected (exact_tensors takes the smallest
    tensors while their sizes sum to at most k): the sketched kernel is the exact one to float64 rounding,
    by the structured capture (countsketch) and the Jacobian path (gaussian) alike. With k one below the
    largest tensor's size that tensor alone is projected, and (pigeonhole: at least two of its coordinates
    share a bucket) the kernel is not exact: the control. (At k = P - 1 its 256 coordinates fall into 417
    buckets without a collision: multiply-shift hashing spreads consecutive coordinates evenly.)"""
    _, f, params, x = mlp
    big = sum(p.numel() for p in params.values())
    K = empirical_kernel(f, params, x, kind=kind, method="jacobian")
    Kh = empirical_kernel(f, params, x, kind=kind, method="sketch", sketch=sketch, sketch_dim=big, seed=3)
    torch.testing.assert_close(Kh, K, rtol=1e-12, atol=1e-12 * float(K.abs().max()))
    largest = max(p.numel() for p in params.values())
    Kh = empirical_kernel(f, params, x, kind=kind, method="sketch", sketch=sketch, sketch_dim=largest - 1, seed=3)
    assert float((Kh - K).abs().max()) > 1e-6 * float(K.abs().max())


def test_countsketch_from_the_structured_capture_equals_the_jacobian_path(mlp):
    """The same hashes applied to per-example gradients formed from captured factors and to per-example
    Jacobians give the same sketch: the structured path is exact, only the projection is random."""
    from ntkcheck.models.kernels.sketch import count_hash, exact_tensors

    _, f, params, x = mlp
    k = 64
    for kind in ("sgd", "signgd", "asym_signgd"):
        Kh = empirical_kernel(f, params, x, x[:4], kind=kind, method="sketch", sketch="countsketch",
                              sketch_dim=k, seed=9)
        G = _flat_grads(f, params, x)
        idx = {n: i for i, n in enumerate(params)}
        # the sketch by hand: per tensor, bucket and sign of each coordinate; the small tensors
        # (exact_tensors) appended unprojected
        def sk(M):
            out, exact = torch.zeros(M.shape[0], k, dtype=M.dtype), []
            start = 0
            small = exact_tensors({n: p.numel() for n, p in params.items()}, {n: "total" for n in params}, k)
            for n, p in params.items():
                block = M[:, start:start + p.numel()]
                if n in small:
                    exact.append(block)
                else:
                    b, s = count_hash(torch.arange(p.numel()), k, 9, idx[n])
                    out.index_add_(1, b, block * s.to(M.dtype))
                start += p.numel()
            assert exact and len(exact) < len(params)
            return torch.cat([out] + exact, dim=1)
        phi1 = torch.sign if kind == "signgd" else (lambda t: t)
        phi2 = (lambda t: t) if kind == "sgd" else torch.sign
        S1, S2 = sk(phi1(G)), sk(phi2(G[:4 * 2]))
        ref = (S1 @ S2.T).reshape(6, 2, 4, 2)
        torch.testing.assert_close(Kh, ref, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("kind", ["sgd", "signgd", "asym_signgd"])
def test_sketch_rows_that_are_columns_take_the_columns_features(kind, mlp, sketch_captures):
    """Rows of x1 that are also rows of x2 (`ntkcheck lm` puts the training examples, its columns, first
    among its rows) are sketched once, as columns, when the kind's two sides map a gradient alike (sgd,
    signgd); the kernel equals the one computed with every example sketched on each side, rows in any order.
    asym_signgd (sign on one side only) sketches both sides in full."""
    from ntkcheck.models.kernels import make_kernel_fn
    from ntkcheck.models.kernels import sketch as sketch_mod

    _, f, params, x = mlp
    x = torch.randn(12, x.shape[1], generator=torch.Generator().manual_seed(3), dtype=DT)
    sides = sketch_captures
    kw = dict(kind=kind, method="sketch", sketch="countsketch", sketch_dim=64, seed=5)
    cols, new = x[:5], x[5:9]
    pick = [3, 0, 4]                                  # shared rows, out of the columns' order, among new ones
    rows = torch.cat([new[:1], cols[pick], new[1:]])
    K = make_kernel_fn(f, params, **kw)(rows, cols)
    assert sides == ([5, 4] if kind != "asym_signgd" else [7, 5])
    every = torch.cat([cols, new])                    # each example sketched on each side (x2 = None)
    K_all = make_kernel_fn(f, params, **kw)(every)
    order = torch.tensor([5] + pick + [6, 7, 8])
    torch.testing.assert_close(K, K_all[order][:, :, :5], rtol=1e-12, atol=1e-12)
    i1, i2, rest = sketch_mod._rows_in(rows, cols)
    assert i1.tolist() == [1, 2, 3] and i2.tolist() == pick and rest.tolist() == [0, 4, 5, 6]


@pytest.mark.parametrize("kind", ["sgd", "asym_signgd"])
def test_sketch_column_side_is_reused_across_blocks_of_rows(kind, mlp, sketch_captures):
    """A kernel computed in blocks of rows against one set of columns (how `ntkcheck lm` computes K) sketches
    the columns once: the second block's call takes the columns' features from the first call, and each
    block equals the one a fresh kernel function computes. An in-place change of a parameter, other columns
    or explicit params= make it sketch the columns again (the control: a stale reuse would give the old
    kernel)."""
    from ntkcheck.models.kernels import make_kernel_fn

    _, f, params, x = mlp
    params = {n: p.clone() for n, p in params.items()}
    x = torch.randn(12, x.shape[1], generator=torch.Generator().manual_seed(2), dtype=DT)
    sides = sketch_captures
    kw = dict(kind=kind, method="sketch", sketch="countsketch", sketch_dim=64, seed=5)
    kfn = make_kernel_fn(f, params, **kw)
    cols, rows = x[:5], x[5:]
    blocks = [kfn(rows[:4], cols), kfn(rows[4:], cols)]
    assert sides == [4, 5, len(rows) - 4]     # rows, columns, rows: the columns sketched once
    for b, r in zip(blocks, (rows[:4], rows[4:])):
        torch.testing.assert_close(b, make_kernel_fn(f, params, **kw)(r, cols), rtol=0, atol=0)
    sides.clear()
    kfn(rows[:4], x[:4])                         # other columns
    assert sides == [4, 4]
    with torch.no_grad():
        next(iter(params.values())).mul_(1.5)    # the function's own tensors changed in place
    sides.clear()
    K_new = kfn(rows[:4], x[:4])
    assert sides == [4, 4]
    torch.testing.assert_close(K_new, make_kernel_fn(f, params, **kw)(rows[:4], x[:4]), rtol=0, atol=0)
    sides.clear()
    kfn(rows[:4], x[:4], params={n: p * 2 for n, p in params.items()})
    kfn(rows[:4], x[:4], params={n: p * 2 for n, p in params.items()})
    assert sides == [4, 4, 4, 4]                 # explicit params are never remembered


@pytest.mark.parametrize("kind", ["sgd", "asym_signgd"])
def test_sketched_features_kept_on_disk_are_not_sketched_again(kind, mlp, sketch_captures, tmp_path, monkeypatch):
    """feature_dir: a second kernel function on the same folder sketches nothing and returns the first one's
    kernel bit for bit; more rows sketch only the new ones; both equal the kernel computed without a folder,
    which sketches each side in one call where the folder's function sketches (and keeps) STORE_CHUNK at a time.
    Controls: a changed parameter, another kind, a damaged file and a full disk are each sketched again, never
    read stale (a stale read would return the old numbers)."""
    from ntkcheck.models.kernels import make_kernel_fn
    from ntkcheck.models.kernels import sketch as sketch_mod
    from ntkcheck.models.kernels.feature_store import FeatureStore, example_digest

    monkeypatch.setattr(sketch_mod, "STORE_CHUNK", 3)

    _, f, params, x = mlp
    params = {n: p.clone() for n, p in params.items()}
    x = torch.randn(12, x.shape[1], generator=torch.Generator().manual_seed(4), dtype=DT)
    sides = sketch_captures
    kw = dict(kind=kind, method="sketch", sketch="countsketch", sketch_dim=64, seed=5)
    rows, cols = x[:7], x[7:]
    K = make_kernel_fn(f, params, feature_dir=tmp_path, **kw)(rows, cols)
    first = list(sides)
    sides.clear()
    plain = make_kernel_fn(f, params, **kw)(rows, cols)
    assert sides == [7, 5] and first == [3, 3, 1, 3, 2]     # the same examples, in chunks with a folder
    torch.testing.assert_close(K, plain, rtol=1e-12, atol=1e-12 * float(plain.abs().max()))
    sides.clear()
    from ntkcheck.models.kernels import structured

    probes = []
    real_probe = structured.probe
    monkeypatch.setattr(structured, "probe", lambda *a, **k_: probes.append(1) or real_probe(*a, **k_))
    again = make_kernel_fn(f, params, feature_dir=tmp_path, **kw)(rows, cols)
    assert sides == [] and probes == []                     # read back: not even the capture's probe runs
    torch.testing.assert_close(again, K, rtol=0, atol=0)
    more = torch.randn(3, x.shape[1], generator=torch.Generator().manual_seed(5), dtype=DT)
    grown = make_kernel_fn(f, params, feature_dir=tmp_path, **kw)(torch.cat([rows[:2], more, rows[2:]]), cols)
    assert sides == [3]                                     # only the new rows
    torch.testing.assert_close(grown, make_kernel_fn(f, params, **kw)(torch.cat([rows[:2], more, rows[2:]]), cols),
                               rtol=1e-12, atol=1e-12 * float(plain.abs().max()))
    (victim,) = tmp_path.rglob(f"{example_digest(rows[:1])}.pt")
    victim.write_bytes(victim.read_bytes()[:100])           # a damaged file: that example again
    sides.clear()
    torch.testing.assert_close(make_kernel_fn(f, params, feature_dir=tmp_path, **kw)(rows, cols), K, rtol=1e-12,
                               atol=1e-12 * float(plain.abs().max()))
    assert sides == [1]
    sides.clear()                                           # another kind: its own features
    make_kernel_fn(f, params, feature_dir=tmp_path, **dict(kw, kind="signgd"))(rows, cols)
    assert sum(sides) == len(rows) + len(cols)
    kfn = make_kernel_fn(f, params, feature_dir=tmp_path, **kw)
    with torch.no_grad():
        next(iter(params.values())).mul_(1.5)               # the function's tensors changed since it was made
    for fn in (kfn, make_kernel_fn(f, params, feature_dir=tmp_path, **kw)):   # and a function made after
        sides.clear()
        K_new = fn(rows, cols)
        assert sum(sides) == len(rows) + len(cols)
        torch.testing.assert_close(K_new, make_kernel_fn(f, params, **kw)(rows, cols), rtol=1e-12,
                                   atol=1e-12 * float(K_new.abs().max()))
        assert float((K_new - K).abs().max()) > 1e-3 * float(K.abs().max())
    full = FeatureStore(tmp_path / "full", reserve=2**62)     # a disk that cannot take them: nothing kept
    assert not full.save("c", ["d"], [{"total": torch.zeros(2, 3)}]) and not list((tmp_path / "full").rglob("*.pt"))
    with pytest.raises(ValueError, match="feature_dir"):
        make_kernel_fn(f, params, feature_dir=tmp_path, kind=kind, method="structured")
