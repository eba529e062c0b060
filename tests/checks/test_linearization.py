"""linearization: --quick verdicts (muP control included) and the measurements on models with known answers."""
import pytest
import torch

from ntkcheck.checks import linearization as L
from ntkcheck.checks._common import finetune_kernel_behavior, sphere_inputs
from ntkcheck.models import optim
from ntkcheck.seeding import generator


@pytest.fixture(scope="module")
def result(quick_result):
    return quick_result("linearization")


def test_quick_verdict_passes_with_controls(result):
    failed = [c.name for c in result.claims if not c.holds]
    assert result.verdict == "pass", failed
    controls = [c for c in result.claims if c.control]
    assert len(controls) == 2 and all(c.holds for c in controls)


def test_bound_and_sharp_claims_are_separate(result):
    for v in ("mlp_ntk", "mlp_sp_lr", "transformer_ntk", "transformer_sp_lr"):
        bound, sharp = result.claim(f"{v}.e_lin.bound"), result.claim(f"{v}.e_lin_rel.sharp")
        assert (bound.relation, bound.predicted) == ("<=", -0.5)
        assert (sharp.relation, sharp.predicted) == ("==", -1.0)


# ---------------------------------------------------------------- known answers

def _random_features(seed=0, d=4, m=12):
    """f(theta, x) = tanh(x A) theta["w"] + theta["b"]: nonlinear in x, linear in its parameters."""
    A = torch.randn(d, m, generator=generator(seed), dtype=torch.float64)

    def f(p, x):
        return torch.tanh(x @ A) @ p["w"] + p["b"]

    p0 = {"w": torch.randn(m, 1, generator=generator(seed + 1), dtype=torch.float64),
          "b": torch.zeros(1, dtype=torch.float64)}
    return f, p0


def test_linearization_of_a_model_linear_in_parameters_is_exact():
    f, p0 = _random_features()
    g = generator(7)
    x, xe = sphere_inputs(10, 4, g), sphere_inputs(8, 4, g)
    y, ye = torch.randn(10, 1, generator=g, dtype=torch.float64), torch.randn(8, 1, generator=g, dtype=torch.float64)
    m = finetune_kernel_behavior(f, p0, optim.sgd(0.3), x, y, xe, ye, xe[:6], steps=20, checkpoints=4)
    assert m["e_lin"] < 1e-12
    assert m["drift"] < 1e-12 and m["table6"] < 1e-12       # the kernel of a linear model never moves
    assert abs(m["lin_frac"] - 1.0) < 1e-10
    assert m["movement"] > 1e-3                             # it did train


def test_single_point_is_deterministic_and_kernel_like():
    cfg = L.Config.quick()
    a = L.compute_point(cfg, "mlp_ntk", 128, 0)
    b = L.compute_point(cfg, "mlp_ntk", 128, 0)
    assert a == b
    assert a["e_lin"] < 0.1 * a["ft_change"] and a["lin_frac"] > 0.9
