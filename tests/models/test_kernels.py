"""Kernel engine vs a naive per-example autograd loop, in float64 ([KV] Def. 3.4, 4.2, 4.4, C.2g)."""
from __future__ import annotations

import pytest
import torch

from ntkcheck.models import NTK, SP, build, functional
from ntkcheck.models.kernels import (empirical_kernel, eps_sign, flatten, kernel_distance, linearize, trace_outputs,
                                     unflatten)

DT = torch.float64


def naive_kernel(f, params, x1, x2=None, kind="sgd", names=None, weights=None, eps=None):
    """K[i,a,j,b] = sum_M eta_M <phi1(grad_M f_a(x1_i)), phi2(grad_M f_b(x2_j))> by one autograd call per (i, a)."""
    x2 = x1 if x2 is None else x2
    names = list(params) if names is None else names
    eps = eps or {}

    def grads(x):
        out = []
        for i in range(x.shape[0]):
            p = {k: v.detach().clone().requires_grad_(k in names) for k, v in params.items()}
            y = f(p, x[i:i + 1])
            y = y.reshape(1, -1)[0]
            rows = []
            for a in range(y.shape[0]):
                g = torch.autograd.grad(y[a], [p[n] for n in names], retain_graph=True, allow_unused=True)
                rows.append({n: (torch.zeros_like(p[n]) if gi is None else gi).reshape(-1)
                             for n, gi in zip(names, g)})
            out.append(rows)
        return out

    g1, g2 = grads(x1), grads(x2)
    n1, n2, c = len(g1), len(g2), len(g1[0])
    K = torch.zeros(n1, c, n2, c, dtype=DT)
    sgn = lambda n, g: eps_sign(g, eps.get(n, 0.0))
    for i in range(n1):
        for a in range(c):
            for j in range(n2):
                for b in range(c):
                    s = 0.0
                    for n in names:
                        u, v = g1[i][a][n], g2[j][b][n]
                        if kind == "signgd":
                            u, v = sgn(n, u), sgn(n, v)
                        elif kind == "asym_signgd":
                            v = sgn(n, v)
                        s = s + (1.0 if weights is None else weights[n]) * torch.dot(u, v)
                    K[i, a, j, b] = s
    return K


def rel_err(a, b):
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-300))


@pytest.fixture(scope="module")
def mlp():
    model = build("mlp", 12, NTK, seed=0, dtype=DT, d_in=5, d_out=3, depth=2, bias=True)
    f, params = functional(model.eval())
    xg = torch.Generator().manual_seed(1)
    x1 = torch.randn(5, 5, generator=xg, dtype=DT)
    x2 = torch.randn(4, 5, generator=xg, dtype=DT)
    return model, f, params, x1, x2


@pytest.fixture(scope="module")
def attn():
    model = build("transformer", 8, SP, seed=2, dtype=DT, d_in=4, d_out=2, depth=1, n_heads=2, mlp=True)
    f, params = functional(model.eval())
    xg = torch.Generator().manual_seed(3)
    x1 = torch.randn(4, 3, 4, generator=xg, dtype=DT)
    x2 = torch.randn(3, 3, 4, generator=xg, dtype=DT)
    return model, f, params, x1, x2


KINDS = ["sgd", "signgd", "asym_signgd"]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("which", ["mlp", "attn"])
def test_jacobian_matches_naive(kind, which, request):
    model, f, params, x1, x2 = request.getfixturevalue(which)
    K = empirical_kernel(f, params, x1, x2, kind=kind, method="jacobian")
    R = naive_kernel(f, params, x1, x2, kind=kind)
    assert K.shape == R.shape == (x1.shape[0], R.shape[1], x2.shape[0], R.shape[1])
    assert K.dtype == DT
    assert rel_err(K, R) < 1e-10


@pytest.mark.parametrize("kind", KINDS)
def test_jacobian_streaming_chunks_match(kind, mlp):
    """A tiny budget forces one-tensor groups and one-example chunks; the result is the same."""
    _, f, params, x1, x2 = mlp
    big = empirical_kernel(f, params, x1, kind=kind, method="jacobian")
    small = empirical_kernel(f, params, x1, kind=kind, method="jacobian", memory_budget=4 * 3 * 8 * 12 * 12 * 2)
    assert rel_err(small, big) < 1e-12
    R = naive_kernel(f, params, x1, kind=kind)
    assert rel_err(small, R) < 1e-10


def test_subset_weights_eps(mlp):
    model, f, params, x1, x2 = mlp
    lrs = model.learning_rates("sgd", base_lr=0.3)
    names = [n for n in params if n.endswith("bias")]
    K = empirical_kernel(f, params, x1, x2, select="biases", weights=lrs)
    R = naive_kernel(f, params, x1, x2, names=names, weights=lrs)
    assert rel_err(K, R) < 1e-10
    eps = {n: 0.01 * (k + 1) for k, n in enumerate(params)}
    for kind in ("signgd", "asym_signgd"):
        K = empirical_kernel(f, params, x1, x2, kind=kind, eps=eps, weights=lrs)
        R = naive_kernel(f, params, x1, x2, kind=kind, eps=eps, weights=lrs)
        assert rel_err(K, R) < 1e-10


def test_decompose_sums_to_total(attn):
    _, f, params, x1, x2 = attn
    K = empirical_kernel(f, params, x1, x2, kind="asym_signgd")
    for how in ("tensor", "module"):
        parts = empirical_kernel(f, params, x1, x2, kind="asym_signgd", decompose=how)
        assert rel_err(sum(parts.values()), K) < 1e-12
    parts = empirical_kernel(f, params, x1, x2, decompose="tensor")
    assert set(parts) == set(params)


def test_flatten_trace(mlp):
    _, f, params, x1, _ = mlp
    K = empirical_kernel(f, params, x1)
    F = flatten(K)
    assert F.shape == (x1.shape[0] * 3, x1.shape[0] * 3)
    assert F[1 * 3 + 2, 4 * 3 + 0] == K[1, 2, 4, 0]
    assert torch.equal(unflatten(F, 3), K)
    T = trace_outputs(K)
    assert torch.allclose(T, sum(K[:, a, :, a] for a in range(3)))


def test_bad_arguments(mlp):
    _, f, params, x1, _ = mlp
    with pytest.raises(ValueError, match="bogus"):
        empirical_kernel(f, params, x1, kind="bogus")
    with pytest.raises(ValueError, match="nope"):
        empirical_kernel(f, params, x1, method="nope")
    with pytest.raises(ValueError, match="weights"):
        empirical_kernel(f, params, x1, weights={"layers.0.weight": 1.0})
    with pytest.raises(ValueError, match="xyz"):
        empirical_kernel(f, params, x1, select="xyz")
    with pytest.raises(ValueError, match="memory_budget"):
        empirical_kernel(f, params, x1, method="jacobian", memory_budget=16)
    with pytest.raises(ValueError, match="-1"):
        empirical_kernel(f, params, x1, kind="signgd", eps=-1.0)


def test_dtype_cast(mlp):
    _, f, params, x1, _ = mlp
    K32 = empirical_kernel(f, params, x1, dtype=torch.float32)
    K64 = empirical_kernel(f, params, x1)
    assert K32.dtype == torch.float32
    assert rel_err(K32.double(), K64) < 1e-5


def test_linearize(mlp):
    _, f, params, x1, _ = mlp
    f_lin = linearize(f, params)
    assert torch.allclose(f_lin(params, x1), f(params, x1))
    g = torch.Generator().manual_seed(5)
    d = {k: 1e-4 * torch.randn(v.shape, generator=g, dtype=DT) for k, v in params.items()}
    p1 = {k: v + d[k] for k, v in params.items()}
    # f_lin is exactly affine in params; f agrees to second order
    p2 = {k: v + 2 * d[k] for k, v in params.items()}
    lin_step = f_lin(p1, x1) - f_lin(params, x1)
    assert torch.allclose(f_lin(p2, x1) - f_lin(params, x1), 2 * lin_step, rtol=1e-10, atol=1e-14)
    assert float((f(p1, x1) - f_lin(p1, x1)).abs().max()) < 1e-3 * float(lin_step.abs().max())


def test_linearize_kernel_equals_ntk(mlp):
    """The NTK of f_lin is the NTK of f at params0 at every params."""
    _, f, params, x1, _ = mlp
    f_lin = linearize(f, params)
    p1 = {k: v + 0.1 for k, v in params.items()}
    K_lin = empirical_kernel(lambda p, x: f_lin({**p}, x), p1, x1)
    K0 = empirical_kernel(f, params, x1)
    assert rel_err(K_lin, K0) < 1e-10


def test_kernel_distance():
    K0 = torch.tensor([[1.0, -2.0], [4.0, 0.5]], dtype=DT)
    K1 = torch.tensor([[1.5, -2.0], [3.0, 1.0]], dtype=DT)
    assert kernel_distance(K0, K1) == pytest.approx((0.5 + 0 + 0.25 + 1.0) / 4)
    assert kernel_distance(K0, K0) == 0.0
    fro = float(torch.linalg.norm(K1 - K0) / torch.linalg.norm(K0))
    assert kernel_distance(K0, K1, reduction="frobenius") == pytest.approx(fro)
    with pytest.raises(ValueError, match="zero"):
        kernel_distance(torch.zeros(2, 2), K1)
    with pytest.raises(ValueError, match="shapes"):
        kernel_distance(K0, K1[:1])


# ------------------------------------------------------------------ every method and kind vs the naive loop
def _roberta():
    from transformers import RobertaConfig, RobertaForMaskedLM

    torch.manual_seed(0)
    cfg = RobertaConfig(vocab_size=40, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=16, max_position_embeddings=16, type_vocab_size=1,
                        attn_implementation="eager")
    return RobertaForMaskedLM(cfg).double().eval()


def _gptneo():
    from transformers import GPTNeoConfig, GPTNeoForCausalLM

    torch.manual_seed(1)
    cfg = GPTNeoConfig(vocab_size=40, hidden_size=8, num_layers=2, num_heads=2, intermediate_size=16,
                       attention_types=[[["global", "local"], 1]], window_size=3, max_position_embeddings=16,
                       bos_token_id=0, eos_token_id=0, attn_implementation="eager")
    return GPTNeoForCausalLM(cfg).double().eval()


def hf_functional(model, position: int, label_ids: list[int]):
    """f(params, ids [B, T]) = logits[:, position, label_ids]: a prompt-based FT output with C = len(label_ids)."""
    from torch.func import functional_call

    params = {k: v.detach().clone() for k, v in model.named_parameters()}

    def f(p, x):
        return functional_call(model, p, (x,)).logits[:, position, label_ids]

    return f, params


@pytest.fixture(scope="module")
def roberta():
    model = _roberta()
    f, params = hf_functional(model, 2, [5, 9])
    g = torch.Generator().manual_seed(4)
    x1 = torch.randint(3, 40, (3, 4), generator=g)
    x1[:, 2] = 4  # the "mask" position
    x2 = torch.randint(3, 40, (2, 4), generator=g)
    x2[:, 2] = 4
    return model, f, params, x1, x2


@pytest.fixture(scope="module")
def gptneo():
    model = _gptneo()
    f, params = hf_functional(model, -1, [5, 9])
    g = torch.Generator().manual_seed(5)
    return model, f, params, torch.randint(1, 40, (3, 4), generator=g), torch.randint(1, 40, (2, 4), generator=g)


def sign_safe(name: str) -> bool:
    """Key-projection biases have an analytically zero gradient (softmax is shift invariant), so their
    computed gradient is round-off whose sign is arbitrary; sign kernels exclude them in comparisons."""
    return "key.bias" not in name and "k_proj.bias" not in name


_REF: dict = {}


def reference(which, kind, request):
    key = (which, kind)
    if key not in _REF:
        _, f, params, x1, x2 = request.getfixturevalue(which)
        names = [n for n in params if kind == "sgd" or sign_safe(n)]
        _REF[key] = naive_kernel(f, params, x1, x2, kind=kind, names=names)
    return _REF[key]


METHOD_KINDS = [("structured", k) for k in KINDS] + [("auto", k) for k in KINDS] + [
    ("ntk_vp", "sgd"), ("ntk_vp", "asym_signgd"), ("packed", "signgd"), ("packed", "asym_signgd")]
def _hf(which, method):
    # HF models: the structured path (captures, embedding rows) runs by default; the rest is slow-marked
    marks = [pytest.mark.hf] + ([] if method == "structured" else [pytest.mark.slow])
    return pytest.param(which, marks=marks)


@pytest.mark.parametrize("method,which,kind", [(m, w, k) for m, k in METHOD_KINDS for w in ("mlp", "attn")]
                         + [pytest.param(m, *_hf(w, m).values, k, marks=_hf(w, m).marks)
                            for m, k in METHOD_KINDS for w in ("roberta", "gptneo")])
def test_method_matches_naive(method, kind, which, request):
    _, f, params, x1, x2 = request.getfixturevalue(which)
    select = None if kind == "sgd" else sign_safe
    K = empirical_kernel(f, params, x1, x2, kind=kind, method=method, select=select)
    assert rel_err(K, reference(which, kind, request)) < 1e-10


@pytest.mark.hf
@pytest.mark.slow
@pytest.mark.parametrize("which", ["roberta", "gptneo"])
@pytest.mark.parametrize("kind", KINDS)
def test_hf_jacobian_matches_naive(kind, which, request):
    _, f, params, x1, x2 = request.getfixturevalue(which)
    K = empirical_kernel(f, params, x1, x2, kind=kind, method="jacobian", select=None if kind == "sgd" else sign_safe)
    assert rel_err(K, reference(which, kind, request)) < 1e-10


def test_structured_covers_dense_layers(mlp, attn):
    from ntkcheck.models.kernels.structured import probe

    for _, f, params, x1, _ in (mlp, attn):
        cover = probe(f, params, list(params), x1, 2)[0]
        assert cover == list(params)


@pytest.mark.hf
def test_structured_covers_all_of_hf_models(roberta, gptneo):
    """Linear, LayerNorm, embedding and the tied embedding / LM-head table are all captured."""
    from ntkcheck.models.kernels.structured import probe

    for _, f, params, x1, _ in (roberta, gptneo):
        assert probe(f, params, list(params), x1, 2)[0] == list(params)


@pytest.mark.hf
@pytest.mark.parametrize("kind", KINDS)
def test_tied_table_repeated_ids(kind, gptneo):
    """Tied wte (embedding rows + LM-head outer products) with a token repeated in a sequence, x2 = x1."""
    _, f, params, x1, _ = gptneo
    x = x1.clone()
    x[0, 1] = x[0, 3]
    names = ["transformer.wte.weight"]
    K = empirical_kernel(f, params, x, kind=kind, method="structured", select=names)
    assert rel_err(K, naive_kernel(f, params, x, kind=kind, names=names)) < 1e-10


def test_packed_int8_and_sequences(attn):
    _, f, params, x1, x2 = attn
    for kind in ("signgd", "asym_signgd"):
        a = empirical_kernel(f, params, x1, x2, kind=kind, method="packed", sign_storage="int8")
        b = empirical_kernel(f, params, x1, x2, kind=kind, method="jacobian")
        assert rel_err(a, b) < 1e-12


@pytest.mark.parametrize("method", ["structured", "ntk_vp", "packed", "sketch"])
def test_methods_same_x(method, mlp):
    """x2 = None (the symmetric, triangle-only paths) and per-tensor weights, eps-sign where allowed."""
    model, f, params, x1, _ = mlp
    lrs = model.learning_rates("sgd", base_lr=0.5)
    kinds = {"structured": KINDS, "ntk_vp": ["sgd", "asym_signgd"], "packed": ["signgd", "asym_signgd"],
             "sketch": KINDS}[method]
    for kind in kinds:
        kw = dict(sketch_dim=64) if method == "sketch" else {}
        K = empirical_kernel(f, params, x1, kind=kind, method=method, weights=lrs, memory_budget=20_000, **kw)
        R = naive_kernel(f, params, x1, kind=kind, weights=lrs)
        if method == "sketch":
            assert K.shape == R.shape
        else:
            assert rel_err(K, R) < 1e-10
    if method == "structured":
        eps = {n: 0.02 for n in params}
        for kind in ("signgd", "asym_signgd"):
            K = empirical_kernel(f, params, x1, kind=kind, method=method, eps=eps)
            assert rel_err(K, naive_kernel(f, params, x1, kind=kind, eps=eps)) < 1e-10


def test_method_kind_mismatch(mlp):
    _, f, params, x1, _ = mlp
    with pytest.raises(ValueError, match="signgd"):
        empirical_kernel(f, params, x1, kind="signgd", method="ntk_vp")
    with pytest.raises(ValueError, match="sgd"):
        empirical_kernel(f, params, x1, kind="sgd", method="packed")
    with pytest.raises(ValueError, match="eps"):
        empirical_kernel(f, params, x1, kind="signgd", method="packed", eps=0.1)
    with pytest.raises(ValueError, match="sketch_dim"):
        empirical_kernel(f, params, x1, method="sketch")
    with pytest.raises(ValueError, match="bogus"):
        empirical_kernel(f, params, x1, method="sketch", sketch_dim=8, sketch="bogus")


def test_auto_cost_model(mlp):
    """Dense nets go structured; an f the capture cannot see into (matmul on a transposed weight) is
    costed between jacobian and ntk_vp, and either way the kernel is exact."""
    from ntkcheck.models.kernels.api import choose_method
    from ntkcheck.models.kernels.common import KernelKind, KernelMethod, Spec

    _, f, params, x1, x2 = mlp
    spec = Spec(kind=KernelKind.SGD, names=list(params), weights={n: 1.0 for n in params},
                eps={n: 0.0 for n in params}, dtype=DT, device=torch.device("cpu"), budget=2**30)
    assert choose_method(f, params, x1, x2, 3, spec)[0] is KernelMethod.STRUCTURED

    def g(p, x):
        return torch.tanh(x @ p["w"].T) @ p["v"].T

    gp = {"w": torch.randn(7, 5, dtype=DT, generator=torch.Generator().manual_seed(3)),
          "v": torch.randn(2, 7, dtype=DT, generator=torch.Generator().manual_seed(4))}
    spec.names, spec.weights, spec.eps = list(gp), {n: 1.0 for n in gp}, {n: 0.0 for n in gp}
    method, _, est = choose_method(g, gp, x1, x2, 2, spec)
    assert est["structured_coverage"] == 0.0
    assert method in (KernelMethod.JACOBIAN, KernelMethod.NTK_VP)
    spec.budget = 4096  # forces streaming recomputation: the cost model must notice
    _, _, est_small = choose_method(g, gp, x1, x2, 2, spec)
    assert est_small["jacobian_passes"] > est["jacobian_passes"]
    K = empirical_kernel(g, gp, x1, x2)
    assert rel_err(K, naive_kernel(g, gp, x1, x2)) < 1e-10


def test_structured_refuses_sequence_first_layout():
    """A linear applied to [T, B, d] (sequence first) must not be read as batch-leading, even when T equals
    the chunk size; such weights fall back to jacobian and the kernel stays exact."""
    g = torch.Generator().manual_seed(9)
    p = {"w": torch.randn(6, 5, generator=g, dtype=DT), "v": torch.randn(2, 6, generator=g, dtype=DT)}

    def f(q, x):  # x [B, T=3, 5]
        h = torch.tanh(torch.nn.functional.linear(x.transpose(0, 1), q["w"]))  # [T, B, 6]
        return torch.nn.functional.linear(h.mean(0), q["v"])

    from ntkcheck.models.kernels.structured import probe

    x = torch.randn(3, 3, 5, generator=g, dtype=DT)
    assert probe(f, p, list(p), x, 2)[0] == ["v"]
    K = empirical_kernel(f, p, x, method="structured")
    assert rel_err(K, naive_kernel(f, p, x)) < 1e-10


def test_kernel_fn_plans_once_and_matches_the_one_shot_form(mlp, monkeypatch):
    """make_kernel_fn: AUTO's probe runs once per input signature; other params reuse the plan exactly."""
    from ntkcheck.models.kernels import api, make_kernel_fn
    from ntkcheck.models.kernels import structured

    model, f, params, x1, x2 = mlp
    calls = []
    real = structured.probe
    monkeypatch.setattr(structured, "probe", lambda *a, **k: calls.append(1) or real(*a, **k))
    kernel_fn = make_kernel_fn(f, params, kind="sgd")
    K = kernel_fn(x1, x2)
    theta = {k: v + 0.05 * torch.randn_like(v) for k, v in params.items()}
    K_theta = kernel_fn(x1, x2, params=theta)
    kernel_fn(x1[:2], x2[:3])
    assert len(calls) == 1                                           # one signature, one probe
    kernel_fn(x1)
    assert len(calls) == 2 and len(kernel_fn.plans) == 2             # (x1, x2) and (x1, None) signatures
    assert all(p.method.value == "structured" for p in kernel_fn.plans.values())
    torch.testing.assert_close(K, empirical_kernel(f, params, x1, x2, method="jacobian"), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(K_theta, empirical_kernel(f, theta, x1, x2, method="jacobian"), rtol=1e-10, atol=1e-12)
    assert set(api.METHODS) >= {m for m in api.KernelMethod if m is not api.KernelMethod.AUTO}


def test_select_by_regular_expression(mlp):
    model, f, params, x1, x2 = mlp
    K_re = empirical_kernel(f, params, x1, select="re:^layers\\.[12]\\.")
    K_names = empirical_kernel(f, params, x1, select=[n for n in params if n.startswith(("layers.1.", "layers.2."))])
    torch.testing.assert_close(K_re, K_names, rtol=0, atol=0)
    with pytest.raises(ValueError, match="regular expression"):
        empirical_kernel(f, params, x1, select="re:(")
    with pytest.raises(ValueError, match="selects no tensor"):
        empirical_kernel(f, params, x1, select="re:nothing_matches")


@pytest.mark.parametrize("method", ["structured", "jacobian"])
def test_float32_model_accumulates_in_float64_without_a_float64_copy(method):
    """accumulate=float64: K is summed and returned in float64 while the model runs in its own float32 (no
    float64 copy); it agrees with the all-float64 kernel to float32 round-off."""
    model = build("mlp", 64, NTK, seed=0, d_in=5, depth=2, d_out=2)
    p32 = {k: v.float() for k, v in model.params().items()}
    x1 = torch.randn(6, 5, generator=torch.Generator().manual_seed(1))
    x2 = torch.randn(4, 5, generator=torch.Generator().manual_seed(2))
    seen = []

    def f(p, x):
        seen.append(next(iter(p.values())).dtype)
        return model.apply(p, x)

    K = empirical_kernel(f, p32, x1, x2, method=method, accumulate=torch.float64)
    assert K.dtype == torch.float64 and set(seen) == {torch.float32}
    ref = empirical_kernel(model.apply, {k: v.double() for k, v in p32.items()}, x1.double(), x2.double(),
                           method=method)
    torch.testing.assert_close(K, ref, rtol=1e-5, atol=1e-5 * float(ref.abs().max()))
    with pytest.raises(ValueError, match="accumulate"):
        empirical_kernel(model.apply, p32, x1, accumulate=torch.int64)


def test_default_budget_is_a_share_of_available_memory():
    from ntkcheck.models.kernels import make_kernel_fn
    from ntkcheck.models.kernels.memory import BUDGET_SHARE, MIN_BUDGET, available_bytes, default_budget

    avail = available_bytes("cpu")
    assert avail > 0
    assert MIN_BUDGET <= default_budget("cpu") <= max(MIN_BUDGET, BUDGET_SHARE * avail * 1.5)
    model = build("mlp", 16, NTK, seed=0, d_in=3, depth=1)
    fn = make_kernel_fn(model.apply, model.params())
    assert MIN_BUDGET <= fn.budget <= max(MIN_BUDGET, avail)


def test_a_budget_too_small_for_one_example_is_refused_naming_the_bytes():
    from ntkcheck.models.kernels.common import MemoryBudgetError

    model = build("mlp", 256, NTK, seed=0, d_in=64, depth=2)
    x = torch.randn(4, 64)
    with pytest.raises(MemoryBudgetError, match=r"take [\d,]+ bytes, more than a quarter of the memory budget of 1,000"):
        empirical_kernel(model.apply, model.params(), x, method="structured", memory_budget=1000)
