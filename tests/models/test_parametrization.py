"""Parametrizations as values: init statistics match their exponents; [KV] Lemma C.6 on real training."""
import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from ntkcheck.models import MUP, NTK, SP, SP_LR, build, functional, optim, train
from ntkcheck.theory import parametrization as P


def _mlp(param, width, seed=0, depth=2, activation="tanh", d_out=1):
    return build("mlp", width, param, seed=seed, dtype=torch.float64, d_in=6, d_out=d_out, depth=depth,
                 activation=activation)


@pytest.mark.parametrize("param", [SP, SP_LR, NTK, MUP], ids=lambda p: p.name)
def test_init_std_and_multiplier_follow_exponents(param):
    """std(w) = sigma n^-b, multiplier = alpha n^-a (input layer also / sqrt(d_in)), per role."""
    for n in (256, 1024):
        model = _mlp(param, n)
        for layer in model.layers:
            s = param.role(layer.role)
            expected_std = n ** (-float(s.b))
            assert layer.weight.std().item() == pytest.approx(expected_std, rel=0.05)
            const = 1 / math.sqrt(layer.fan_in) if layer.role == "input" else 1.0
            assert layer.mult == pytest.approx(n ** (-float(s.a)) * const, rel=1e-12)


def test_learning_rates_follow_exponents():
    n = 512
    model = _mlp(MUP, n)
    lrs = model.learning_rates("sgd", 0.1)
    assert lrs["layers.0.weight"] == pytest.approx(0.1 * n)      # Table 10: U lr Theta(n)
    assert lrs["layers.1.weight"] == pytest.approx(0.1)          # W lr Theta(1)
    assert lrs["layers.2.weight"] == pytest.approx(0.1 / n)      # V lr Theta(1/n)
    lrs = model.learning_rates("adam", 1.0)
    assert [lrs[f"layers.{i}.weight"] for i in range(3)] == pytest.approx([1.0, 1 / n, 1 / n])


def test_preset_lookup_errors_name_the_value():
    with pytest.raises(ValueError, match="'bogus'"):
        P.get("bogus")
    with pytest.raises(ValueError, match="alpha"):
        P.RoleScaling(alpha=0.0)


def _trajectory(model, optimizer, x, y, steps=4, base_lr=0.05, **opt_kw):
    opt = optim.make(optimizer, model.learning_rates("sgd" if optimizer == "sgd" else "adam", base_lr), **opt_kw)
    outs = []
    train(model.apply, model.params(), opt, (x, y), steps,
          callback=lambda step: outs.append(model.apply(step.params, x).detach()))
    return torch.stack(outs)


@given(role=st.sampled_from(["input", "hidden", "output"]), gamma=st.sampled_from([0.25, 0.5, 2.0, 3.0]),
       optimizer=st.sampled_from(["sgd", "signgd", "adam"]), preset=st.sampled_from(["NTK", "MUP", "SP_LR"]))
def test_lemma_c6_leaves_training_trajectory_unchanged(role, gamma, optimizer, preset):
    """[KV] Lemma C.6: A -> A g, B -> B / g, C -> C / g^2 (SGD) or C / g (SignGD, Adam) keeps f_t."""
    param = P.get(preset)
    opt_name = "sgd" if optimizer == "sgd" else "adam"
    rescaled = param.rescaled(role, gamma, opt_name)
    x = torch.randn(5, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    y = torch.randn(5, 1, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    kw = {"eps": 1e-30} if optimizer == "adam" else {}  # Adam's eps breaks the invariance by eps/gamma
    a = _trajectory(_mlp(param, 64), optimizer, x, y, **kw)
    b = _trajectory(_mlp(rescaled, 64), optimizer, x, y, **kw)
    torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_lemma_c6_control_rescaling_only_the_multiplier_changes_training():
    """Control: rescaling the multiplier alone (no init/lr compensation) does change f_t."""
    x = torch.randn(5, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    y = torch.randn(5, 1, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    broken = NTK.with_role("hidden", alpha=2.0)
    a = _trajectory(_mlp(NTK, 64), "sgd", x, y)
    b = _trajectory(_mlp(broken, 64), "sgd", x, y)
    assert (a - b).abs().max() > 1e-3


def test_functional_view_matches_module_and_is_detached():
    model = _mlp(NTK, 32, d_out=3)
    f, params = functional(model)
    x = torch.randn(4, 6, dtype=torch.float64)
    torch.testing.assert_close(f(params, x), model(x), rtol=0, atol=0)
    params["layers.0.weight"].add_(1.0)
    assert not torch.equal(params["layers.0.weight"], model.layers[0].weight)


def test_transformer_shapes_roles_and_logit_scale():
    t = build("transformer", 16, MUP, seed=0, dtype=torch.float64, d_in=5, d_out=2, depth=2, n_heads=3)
    x = torch.randn(4, 7, 5, dtype=torch.float64)
    assert t(x).shape == (4, 2)
    assert t.blocks[0].logit_scale == pytest.approx(1 / 16)  # muP: 1/d
    t2 = build("transformer", 16, MUP, seed=0, d_in=5, attn_logit=0.5)
    assert t2.blocks[0].logit_scale == pytest.approx(1 / 4)
    roles = t.roles()
    assert roles["embed.weight"] == "input" and roles["readout.weight"] == "output"
    assert roles["blocks.1.o.weight"] == "hidden"
    with pytest.raises(ValueError, match=r"\[B, T, d_in\]"):
        t(torch.randn(4, 5))


def test_sigma_gelu_tends_to_relu():
    from ntkcheck.models.activations import sigma_gelu

    x = torch.linspace(-3, 3, 101, dtype=torch.float64)
    assert (sigma_gelu(x, 1e-3) - torch.relu(x)).abs().max() < 1e-3
    assert (sigma_gelu(x, 0.5) - torch.relu(x)).abs().max() > 1e-2


def test_optimizers_update_rules():
    p = {"w": torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)}
    g = {"w": torch.tensor([0.5, -0.25, 0.0], dtype=torch.float64)}

    def step(opt, grads=g):
        updates, _ = opt.update(grads, opt.init(p), p)
        return optim.apply_updates(p, updates)["w"]

    torch.testing.assert_close(step(optim.make("sgd", {"w": 0.1})), torch.tensor([0.95, -1.975, 0.5], dtype=torch.float64))
    torch.testing.assert_close(step(optim.make("signgd", {"w": 0.1})), torch.tensor([0.9, -1.9, 0.5], dtype=torch.float64))
    torch.testing.assert_close(step(optim.make("signgd", {"w": 0.1}, eps=0.25)),
                               p["w"] - 0.1 * g["w"] / (g["w"].abs() + 0.25))
    out = step(optim.make("adam", {"w": 0.1}, eps=0.0), {"w": torch.tensor([0.5, -0.25, 1e-3], dtype=torch.float64)})
    torch.testing.assert_close(out, p["w"] - 0.1 * torch.tensor([1.0, -1.0, 1.0], dtype=torch.float64))
    with pytest.raises(KeyError, match="'v'"):
        optim.sgd({"w": 0.1}).update({"v": g["w"]}, {"step": 0}, {"v": p["w"]})
    with pytest.raises(ValueError, match="'rmsprop'"):
        optim.make("rmsprop", {})


def test_width_must_be_positive():
    with pytest.raises(ValueError, match="0"):
        build("mlp", 0, NTK, seed=0)
