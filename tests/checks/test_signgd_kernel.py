"""signgd_kernel: --quick verdicts (controls included) and the one-step predictions against closed forms."""
import math

import pytest
import torch

from ntkcheck.checks import signgd_kernel as S
from ntkcheck.checks._common import sphere_inputs
from ntkcheck.models import build, optim, train
from ntkcheck.models.functional import output
from ntkcheck.models.kernels import empirical_kernel
from ntkcheck.seeding import generator


@pytest.fixture(scope="module")
def result(quick_result):
    return quick_result("signgd_kernel")


def test_quick_verdict_passes_with_controls(result):
    failed = [c.name for c in result.claims if not c.holds]
    assert result.verdict == "pass", failed
    controls = [c for c in result.claims if c.control]
    assert len(controls) == 6 and all(c.holds for c in controls)


def test_kernel_errors_decay_and_controls_stay_flat(result):
    assert result.claim("signgd_b1.step_err.decays").measured < -0.5
    assert result.claim("sgd_b1.step_err.decays").measured < -0.5
    assert abs(result.claim("control.sgd_kernel_for_signgd.step_err.flat").measured) < 0.2


# ---------------------------------------------------------------- closed forms

def _one_hidden_layer(width=32, seed=3):
    """NTK-parametrized f(x) = n^-1/2 v . tanh(W x / sqrt(d)) and its pieces for the closed forms."""
    model = build("mlp", width, "NTK", seed=seed, dtype=torch.float64, d_in=5, depth=1)
    f, p = model.apply, model.params()
    x = sphere_inputs(6, 5, generator(seed + 1))
    W, v = p["layers.0.weight"], p["layers.1.weight"][0]
    return model, f, p, x, W, v


def _closed_form_ntk(W, v, x1, x2, lr_in, lr_out):
    """K_SGD_eta(x1, x2) = lr_out/n sum_i tanh(h1_i) tanh(h2_i) + lr_in/n sum_i v_i^2 sech^2 h1_i sech^2 h2_i <x1,x2>/d."""
    n, d = W.shape
    h1, h2 = x1 @ W.T / math.sqrt(d), x2 @ W.T / math.sqrt(d)
    s1, s2 = 1 - torch.tanh(h1) ** 2, 1 - torch.tanh(h2) ** 2
    out = torch.tanh(h1) @ torch.tanh(h2).T / n
    inp = ((s1 * v ** 2) @ s2.T) * (x1 @ x2.T) / d / n
    return lr_out * out + lr_in * inp


def _closed_form_asym(W, v, x1, x2, lr_in, lr_out):
    """K_A-SignGD_eta(x1, x2) = sum_M lr_M <grad_M f(x1), sign grad_M f(x2)> for the one-hidden-layer net."""
    n, d = W.shape
    h1, h2 = x1 @ W.T / math.sqrt(d), x2 @ W.T / math.sqrt(d)
    s1 = 1 - torch.tanh(h1) ** 2
    out = torch.tanh(h1) @ torch.sign(torch.tanh(h2)).T / math.sqrt(n)
    # grad_W f(x) = n^-1/2 v_i sech^2(h_i) x_j / sqrt(d); its sign is sign(v_i) sign(x_j)
    inp = ((s1 * v * torch.sign(v)).sum(1, keepdim=True) / math.sqrt(n)) * (x1 @ torch.sign(x2).T) / math.sqrt(d)
    return lr_out * out + lr_in * inp


def test_one_step_sgd_prediction_matches_closed_form():
    model, f, p, x, W, v = _one_hidden_layer()
    lrs = {"layers.0.weight": 0.7, "layers.1.weight": 0.3}
    xt, chi = x[:1], torch.tensor([[0.8]], dtype=torch.float64)
    want = -chi[0, 0] * _closed_form_ntk(W, v, x, xt, 0.7, 0.3)
    got_free = S.predicted_step(f, p, lrs, "sgd", xt, chi, x)
    K = empirical_kernel(f, p, x, x[:3], kind="sgd", weights=lrs)
    got_kernel = S.kernel_predictor(K, "sgd", 1)(torch.tensor([0]), chi)
    torch.testing.assert_close(got_free, want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(got_kernel, want, rtol=1e-12, atol=1e-12)


def test_one_step_signgd_prediction_matches_asymmetric_kernel_closed_form():
    model, f, p, x, W, v = _one_hidden_layer()
    lrs = {"layers.0.weight": 0.2, "layers.1.weight": 0.5}
    xt, chi = x[2:3], torch.tensor([[-1.3]], dtype=torch.float64)
    want = -torch.sign(chi[0, 0]) * _closed_form_asym(W, v, x, xt, 0.2, 0.5)
    got_free = S.predicted_step(f, p, lrs, "sign", xt, chi, x)
    K = empirical_kernel(f, p, x, x, kind="asym_signgd", weights=lrs)
    got_kernel = S.kernel_predictor(K, "sign", 1)(torch.tensor([2]), chi)
    torch.testing.assert_close(got_free, want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(got_kernel, want, rtol=1e-12, atol=1e-12)


def test_prediction_is_exact_first_order_of_a_real_step():
    """At theta_0 a real step's df minus the prediction is second order in the step size."""
    model, f, p, x, W, v = _one_hidden_layer(width=64)
    y = torch.zeros(1, 1, dtype=torch.float64)
    errs = []
    for lr in (1e-3, 1e-4):
        lrs = {k: lr for k in p}
        chi = output(f, p, x[:1]) - y
        actual = output(f, train(f, p, optim.sgd(lrs), (x[:1], y), 1), x) - output(f, p, x)
        errs.append(float((actual - S.predicted_step(f, p, lrs, "sgd", x[:1], chi, x)).norm()))
    assert errs[1] < errs[0] / 50   # O(lr^2): a 10x smaller lr gives ~100x smaller error


def test_adam_first_step_is_a_signgd_step():
    model, f, p, x, W, v = _one_hidden_layer()
    lrs = model.learning_rates("signgd", 0.1)
    data = (x, torch.ones(6, 1, dtype=torch.float64))
    a, s = train(f, p, optim.adam(lrs, eps=0.0), data, 1), train(f, p, optim.signgd(lrs), data, 1)
    for k in p:
        torch.testing.assert_close(a[k], s[k], rtol=0, atol=1e-15)


def test_batch_prediction_reduces_to_kernel_sum_for_sgd():
    """For SGD the batch analog is the mean of kernel columns: -(1/B) sum_b chi_b K(x, x_b)."""
    model, f, p, x, W, v = _one_hidden_layer()
    lrs = {k: 0.4 for k in p}
    idx, chi = torch.tensor([1, 4, 5]), torch.tensor([[0.3], [-0.9], [0.5]], dtype=torch.float64)
    K = empirical_kernel(f, p, x, x, kind="sgd", weights=lrs)
    torch.testing.assert_close(S.kernel_predictor(K, "sgd", 3)(idx, chi),
                               S.predicted_step(f, p, lrs, "sgd", x[idx], chi, x), rtol=1e-12, atol=1e-12)


def test_best_scalar_error_is_zero_for_a_rescaled_prediction():
    acts = [torch.randn(4, 1, generator=generator(i), dtype=torch.float64) for i in range(3)]
    assert S.best_scalar_err(acts, [2.5 * a for a in acts]) < 1e-14
