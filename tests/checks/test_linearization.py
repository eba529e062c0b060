"""linearization: --quick verdicts (muP control included) and the measurements on models with known answers."""
import pytest
import torch

from ntkcheck.checks import _training as T
from ntkcheck.checks import linearization as L


@pytest.fixture(scope="module")
def result(quick_result):
    return quick_result("linearization")


def test_quick_verdict_passes_with_controls(result):
    failed = [c.name for c in result.claims if not c.holds]
    assert result.verdict == "pass", failed
    controls = [c for c in result.claims if c.control]
    assert len(controls) == 2 and all(c.holds for c in controls)


def test_bound_and_sharp_claims_are_separate(result):
    names = [c.name for c in result.claims]
    for v in ("mlp_ntk", "mlp_sp_lr", "attn_ntk", "attn_sp_lr"):
        assert any(n.startswith(f"{v}: slope of e_lin (bound") and "<= -0.5" in n for n in names)
        assert any(n.startswith(f"{v}: slope of e_lin (sharp") and "== -1" in n for n in names)


# ---------------------------------------------------------------- known answers

def _random_features(seed=0, d=4, m=12):
    """f(theta, x) = tanh(x A) theta["w"] + theta["b"]: nonlinear in x, linear in its parameters."""
    A = torch.randn(d, m, generator=T.gen(seed), dtype=torch.float64)

    def f(p, x):
        return torch.tanh(x @ A) @ p["w"] + p["b"]

    p0 = {"w": torch.randn(m, 1, generator=T.gen(seed + 1), dtype=torch.float64),
          "b": torch.zeros(1, dtype=torch.float64)}
    return f, p0


def test_linearization_of_a_model_linear_in_parameters_is_exact():
    f, p0 = _random_features()
    g = T.gen(7)
    x, xe = T.sphere_inputs(10, 4, g), T.sphere_inputs(8, 4, g)
    y, ye = torch.randn(10, 1, generator=g, dtype=torch.float64), torch.randn(8, 1, generator=g, dtype=torch.float64)
    lrs = {"w": 0.3, "b": 0.3}
    m = L.finetune_metrics(f, p0, lrs, x, y, xe, ye, xe[:6], steps=20, checkpoints=4)
    assert m["e_lin"] < 1e-12
    assert m["drift"] < 1e-12 and m["table6"] < 1e-12       # the kernel of a linear model never moves
    assert abs(m["lin_frac"] - 1.0) < 1e-10
    assert m["movement"] > 1e-3                             # it did train


def test_linearized_remainder_of_a_quadratic_is_its_second_order_term():
    """f(theta) = (a . theta)^2: f - f_lin = (a . (theta - theta_0))^2 exactly."""
    a = torch.randn(5, generator=T.gen(1), dtype=torch.float64)

    def f(p, x):
        return x * (p["t"] @ a) ** 2

    p0 = {"t": torch.randn(5, generator=T.gen(2), dtype=torch.float64)}
    p1 = {"t": p0["t"] + 0.1 * torch.randn(5, generator=T.gen(3), dtype=torch.float64)}
    x = torch.tensor([[1.0], [2.0]], dtype=torch.float64)
    remainder = f(p1, x) - T.linearized(f, p0, p1, x)
    torch.testing.assert_close(remainder, x * float((p1["t"] - p0["t"]) @ a) ** 2, rtol=1e-12, atol=1e-14)


def test_gd_on_a_linear_model_reaches_the_kernel_regression_prediction():
    """Full-batch GD with rate eta on a linear model: f_t = f_0 + (I - (I - eta K/N)^t)(y - f_0) on the train set."""
    f, p0 = _random_features(seed=4)
    x = T.sphere_inputs(6, 4, T.gen(5))
    y = torch.randn(6, 1, generator=T.gen(6), dtype=torch.float64)
    eta, t = 0.5, 15
    J = torch.cat([torch.tanh(x @ torch.randn(4, 12, generator=T.gen(4), dtype=torch.float64)),
                   torch.ones(6, 1, dtype=torch.float64)], dim=1)
    K = J @ J.T
    f0 = f(p0, x)
    M = torch.linalg.matrix_power(torch.eye(6, dtype=torch.float64) - eta * K / 6, t)
    want = f0 + (torch.eye(6, dtype=torch.float64) - M) @ (y - f0)
    pt = T.train_gd(f, p0, {"w": eta, "b": eta}, x, y, t)
    torch.testing.assert_close(f(pt, x), want, rtol=1e-10, atol=1e-12)


def test_single_point_is_deterministic_and_kernel_like():
    cfg = L.Config.quick()
    a = L.compute_point(cfg, "mlp_ntk", 128, 0)
    b = L.compute_point(cfg, "mlp_ntk", 128, 0)
    assert a == b
    assert a["e_lin"] < 0.1 * a["ft_change"] and a["lin_frac"] > 0.9
