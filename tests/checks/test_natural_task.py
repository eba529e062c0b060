"""natural_task: --quick verdicts (head-style control included) and the [KV] App. C.5 closed forms."""
import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from ntkcheck.checks import natural_task as N
from ntkcheck.models.kernels import empirical_kernel
from ntkcheck.theory.natural_task import linear3_forward, linear3_kernel, linear3_step, linear3_step_terms


@pytest.fixture(scope="module")
def result(quick_result):
    return quick_result("natural_task")


def test_quick_verdict_passes_with_controls(result):
    failed = [c.name for c in result.claims if not c.holds]
    assert result.verdict == "pass", failed
    controls = [c for c in result.claims if c.control]
    assert len(controls) == 4 and all(c.holds for c in controls)


def test_prompt_improves_and_head_does_not(result):
    assert result.claim("prompt.e_lin_rel.decays").measured < -0.3
    assert result.claim("control.head.e_lin_rel.flat").measured > -0.15
    assert result.claim("c5.coefficient.flat").holds and result.claim("control.c5.ntk.coefficient").holds
    assert result.claim("c5.natural.ratio.slope").state == "measured"


# ---------------------------------------------------------------- C.5 closed forms

def _net(n, d, seed):
    rng = np.random.default_rng(seed)
    U = rng.standard_normal((n, d)) / math.sqrt(d)
    W = rng.standard_normal((n, n)) / math.sqrt(n)
    V = rng.standard_normal(n) / n
    xi1, xi = rng.standard_normal((2, d))
    return U, W, V, xi1, xi


@given(n=st.integers(2, 40), d=st.integers(1, 6), seed=st.integers(0, 10_000),
       chi=st.floats(-3, 3, allow_nan=False), eta=st.floats(0.01, 2.0))
def test_one_step_change_is_kernel_plus_second_order_term(n, d, seed, chi, eta):
    """[KV] eq. 10: f_1 - f_0 = -chi K + eta_U eta_W chi^2 ||V||^2 <xi_1, xi> f_0(xi_1), exactly."""
    U, W, V, xi1, xi = _net(n, d, seed)
    eta_U, eta_W = eta * n, eta
    kernel, second = linear3_step_terms(U, W, V, xi, xi1, chi, eta_U, eta_W)
    U1, W1 = linear3_step(U, W, V, xi1, chi, eta_U, eta_W)
    actual = linear3_forward(U1, W1, V, xi) - linear3_forward(U, W, V, xi)
    # actual is a difference of two outputs, so its round-off is relative to |f|, not to the change
    f0 = linear3_forward(U, W, V, xi)
    assert abs(actual - (kernel + second)) <= 1e-10 * (abs(kernel) + abs(second)) + 1e-13 * (abs(f0) + 1e-300)


def test_step_matches_autograd_sgd_and_kernel_matches_engine():
    n, d = 24, 5
    U, W, V, xi1, xi = _net(n, d, 11)
    eta_U, eta_W, chi = 0.7 * n, 0.7, 0.4
    Vt = torch.tensor(V)

    def f(p, x):
        return (x @ p["U"].T @ p["W"].T @ Vt).unsqueeze(-1)

    p = {"U": torch.tensor(U, requires_grad=True), "W": torch.tensor(W, requires_grad=True)}
    out = f(p, torch.tensor(xi1)[None])
    gU, gW = torch.autograd.grad(out.sum(), [p["U"], p["W"]])
    U1, W1 = linear3_step(U, W, V, xi1, chi, eta_U, eta_W)
    np.testing.assert_allclose(U1, U - eta_U * chi * gU.numpy(), rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(W1, W - eta_W * chi * gW.numpy(), rtol=1e-13, atol=1e-15)
    x = torch.tensor(np.stack([xi, xi1]))
    K = empirical_kernel(f, {"U": torch.tensor(U), "W": torch.tensor(W)}, x, kind="sgd",
                         weights={"U": eta_U, "W": eta_W})
    assert abs(float(K[0, 0, 1, 0]) - linear3_kernel(U, W, V, xi, xi1, eta_U, eta_W)) < 1e-12


def test_second_to_kernel_ratio_is_linear_in_chi():
    U, W, V, xi1, xi = _net(30, 4, 5)
    ratios = []
    for chi in (1e-3, 1e-2, 1e-1, 1.0):
        kernel, second = linear3_step_terms(U, W, V, xi, xi1, chi, 30.0, 1.0)
        ratios.append(second / kernel / chi)
    np.testing.assert_allclose(ratios, ratios[0], rtol=1e-12)


def test_linear3_point_ratio_shrinks_like_chi_with_width():
    cfg = N.Config.quick()
    small = N.linear3_point(cfg, 64, 0, 64 ** -0.5)
    large = N.linear3_point(cfg, 4096, 0, 4096 ** -0.5)
    # float64 round-off of sums over n^2 terms: 6e-15 at n = 64, up to 2.5e-12 at n = 4096 (seen on CI)
    assert small["c5_identity"] < 1e-10 and large["c5_identity"] < 1e-10
    assert small["c5_engine"] < 1e-10 and large["c5_engine"] < 1e-10   # closed-form K is the engine's eNTK
    slope = math.log(large["c5_ratio"] / small["c5_ratio"]) / math.log(64)
    assert -0.75 < slope < -0.25
    # the coefficient per unit chi is flat under muP and falls like 1/n under NTK
    mup = math.log(N.linear3_point(cfg, 4096, 0, 1.0)["c5_coef"] / N.linear3_point(cfg, 64, 0, 1.0)["c5_coef"])
    ntk = math.log(N.linear3_point(cfg, 4096, 0, 1.0, "NTK")["c5_coef"]
                   / N.linear3_point(cfg, 64, 0, 1.0, "NTK")["c5_coef"])
    assert abs(mup / math.log(64)) < 0.15 and -1.3 < ntk / math.log(64) < -0.7
