"""The one model factory, the pure optimizers, the one training loop and the LoRA transform (float64)."""
import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch.func import functional_call

from ntkcheck.models import ARCHITECTURES, NTK, build, lora, optim, train
from ntkcheck.models.functional import linearize, output
from ntkcheck.models.kernels import empirical_kernel, linear_factors

DT = torch.float64


@pytest.mark.parametrize("arch, shape", [("mlp", (5, 6)), ("transformer", (5, 3, 6)), ("linear3", (5, 6))])
def test_apply_is_the_module_forward_bit_for_bit(arch, shape):
    """apply(params, x) (the fast pure path) == module(x) == functional_call, features included."""
    model = build(arch, 32, "MUP", seed=3, dtype=DT, d_in=6)
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(0), dtype=DT)
    p = model.params()
    assert torch.equal(model.apply(p, x), model(x))
    assert torch.equal(model.apply(p, x), functional_call(model, p, (x,)))
    for a, b in zip(model.apply(p, x, all_layers=True), functional_call(model, p, (x,), {"all_layers": True})):
        assert torch.equal(a, b)
    q = {k: v + 0.1 for k, v in p.items()}
    assert torch.equal(model.apply(q, x), functional_call(model, q, (x,)))  # apply reads params, not the module


def test_factory_names_bad_arguments():
    with pytest.raises(ValueError, match="'attn'"):
        build("attn", 16, NTK, seed=0)
    with pytest.raises(ValueError, match="'depth'"):
        build("linear3", 16, NTK, seed=0, depth=3)          # linear3 pins depth
    with pytest.raises(ValueError, match="'XYZ'"):
        build("mlp", 16, "XYZ", seed=0)
    assert set(ARCHITECTURES) == {"mlp", "transformer", "linear3"}
    assert build("mlp", 16, "ntk", seed=0).arch == "mlp"


def test_same_seed_same_network_other_seed_other_network():
    a, b, c = (build("mlp", 64, NTK, seed=s, dtype=DT) for s in (1, 1, 2))
    assert all(torch.equal(a.params()[k], b.params()[k]) for k in a.params())
    assert not torch.equal(a.params()["layers.1.weight"], c.params()["layers.1.weight"])


def test_linear3_is_the_three_layer_linear_net():
    """f(xi) = V^T W U xi with the effective weights m_l w_l."""
    model = build("linear3", 20, "MUP", seed=0, dtype=DT, d_in=4)
    p = model.params()
    U, W, V = (layer.mult * p[f"layers.{i}.weight"] for i, layer in enumerate(model.layers))
    xi = torch.randn(3, 4, dtype=DT)
    torch.testing.assert_close(model.apply(p, xi)[:, 0], xi @ U.T @ W.T @ V[0], rtol=1e-13, atol=1e-15)


def test_train_full_batch_gd_on_a_linear_model_matches_closed_form():
    """f(theta, x) = x theta: GD on 1/(2N)||X theta - y||^2 gives f_t = f_0 + (I - (I - eta K/N)^t)(y - f_0)."""
    g = torch.Generator().manual_seed(5)
    X, y = torch.randn(6, 4, generator=g, dtype=DT), torch.randn(6, 1, generator=g, dtype=DT)
    p0 = {"w": torch.randn(4, 1, generator=g, dtype=DT)}
    f = lambda p, x: x @ p["w"]  # noqa: E731
    eta, t = 0.3, 12
    pt = train(f, p0, optim.sgd(eta), (X, y), t)
    K = X @ X.T
    M = torch.linalg.matrix_power(torch.eye(6, dtype=DT) - eta * K / 6, t)
    torch.testing.assert_close(f(pt, X), f(p0, X) + (torch.eye(6, dtype=DT) - M) @ (y - f(p0, X)),
                               rtol=1e-11, atol=1e-13)
    assert torch.equal(p0["w"], p0["w"].clone())  # inputs untouched


def test_train_callback_sees_each_step_and_select_freezes_the_rest():
    model = build("mlp", 16, NTK, seed=0, dtype=DT, d_in=3)
    x, y = torch.randn(4, 3, dtype=DT), torch.randn(4, 1, dtype=DT)
    p0 = model.params()
    seen = []
    out = train(model.apply, p0, optim.sgd(0.1), (x, y), 3, select=["layers.2.weight"],
                callback=lambda s: seen.append((s.t, float(s.loss), sorted(s.grads))))
    assert [t for t, _, _ in seen] == [1, 2, 3]
    assert all(names == ["layers.2.weight"] for _, _, names in seen)
    assert seen[-1][1] < seen[0][1]
    assert torch.equal(out["layers.0.weight"], p0["layers.0.weight"])
    assert not torch.equal(out["layers.2.weight"], p0["layers.2.weight"])
    with pytest.raises(KeyError, match="nope"):
        train(model.apply, p0, optim.sgd(0.1), (x, y), 1, select=["nope"])


def test_schedule_and_stateful_adam_are_pure():
    p = {"w": torch.ones(3, dtype=DT)}
    g = {"w": torch.tensor([1.0, -2.0, 0.5], dtype=DT)}
    opt = optim.sgd(0.5, schedule=optim.linear_decay(4))
    s = opt.init(p)
    rates = []
    for _ in range(4):
        u, s = opt.update(g, s, p)
        rates.append(float(-u["w"][0]))
    assert rates == pytest.approx([0.5, 0.375, 0.25, 0.125])
    adam = optim.adam(0.1)
    s0 = adam.init(p)
    u1, s1 = adam.update(g, s0, p)
    u1b, _ = adam.update(g, s0, p)        # same state in, same update out: no hidden state
    assert torch.equal(u1["w"], u1b["w"]) and s0 == {"step": 0, "m": {}, "v": {}} and s1["step"] == 1


@given(seed=st.integers(0, 10_000), rank=st.integers(1, 6))
def test_lora_at_b_zero_is_the_base_model_and_its_kernel_is_lemma_d4(seed, rank):
    """[KV] Lemma D.4: at B = 0, K_LoRA = sum_l (dZ dZ^T) o (X A^T A X^T) (the engine's factors)."""
    model = build("mlp", 12, NTK, seed=seed, dtype=DT, d_in=3)
    p = model.params()
    x = torch.randn(5, 3, generator=torch.Generator().manual_seed(seed + 1), dtype=DT)
    f_lora, theta = lora(model.apply, p, rank, generator=torch.Generator().manual_seed(seed + 2))
    assert torch.equal(output(f_lora, theta, x), output(model.apply, p, x))
    K = empirical_kernel(f_lora, theta, x, method="jacobian")[:, 0, :, 0]
    fac = linear_factors(model.apply, p, x)
    want = sum((fac[n][1][:, 0, 0] @ fac[n][1][:, 0, 0].T)
               * ((fac[n][0][:, 0] @ theta[n + ".lora_A"].T) @ (fac[n][0][:, 0] @ theta[n + ".lora_A"].T).T)
               for n in p)
    torch.testing.assert_close(K, want, rtol=1e-11, atol=1e-13)


def test_lora_trains_only_its_factors_and_names_bad_targets():
    model = build("mlp", 8, NTK, seed=0, dtype=DT, d_in=3)
    p = model.params()
    f_lora, theta = lora(model.apply, p, 2, targets=["layers.1.weight"], generator=torch.Generator().manual_seed(0))
    assert sorted(theta) == ["layers.1.weight.lora_A", "layers.1.weight.lora_B"]
    assert theta["layers.1.weight.lora_A"].std() == pytest.approx(1 / math.sqrt(2), rel=0.5)
    x, y = torch.randn(4, 3, dtype=DT), torch.randn(4, 1, dtype=DT)
    t2 = train(f_lora, theta, optim.sgd(0.5), (x, y), 3)
    assert float(t2["layers.1.weight.lora_B"].abs().sum()) > 0
    with pytest.raises(ValueError, match="layers.0.bias|nope"):
        lora(model.apply, p, 2, targets=["nope"])
    with pytest.raises(ValueError, match="rank"):
        lora(model.apply, p, 0)


def test_linearize_of_a_quadratic_leaves_its_second_order_term():
    """f(theta) = x (a . theta)^2: f - f_lin = x (a . (theta - theta_0))^2 exactly."""
    a = torch.randn(5, generator=torch.Generator().manual_seed(1), dtype=DT)
    f = lambda p, x: x * (p["t"] @ a) ** 2  # noqa: E731
    p0 = {"t": torch.randn(5, generator=torch.Generator().manual_seed(2), dtype=DT)}
    p1 = {"t": p0["t"] + 0.1 * torch.randn(5, generator=torch.Generator().manual_seed(3), dtype=DT)}
    x = torch.tensor([[1.0], [2.0]], dtype=DT)
    torch.testing.assert_close(f(p1, x) - linearize(f, p0)(p1, x), x * float((p1["t"] - p0["t"]) @ a) ** 2,
                               rtol=1e-12, atol=1e-14)
