"""early_stopping --quick: verdict pass, every claim (controls included) holds; the faults' patches do what they say."""
import dataclasses
import importlib
import math

import numpy as np
import pytest

from ntkcheck.checks import early_stopping as check
from ntkcheck.checks import registry
from ntkcheck.checks.faults import inject
from ntkcheck.theory import early_stopping as es

IDS = [f"beta{b}.{c}" for b in (1, 2) for c in (
    "err_rule.rate", "err_oracle.rate", "rho2.rate", "rho2.constant", "eta_rule.rate", "eta_rule.constant",
    "eta_rule.vs_oracle", "err_rule.vs_oracle", "rwy_bound", "beta_hat", "ridge.rate", "ridge_vs_gd")]
CONTROLS = ("control.beta1.fixed_time", "control.beta2.fixed_time", "control.beta1.interpolation")


@pytest.fixture(scope="module")
def result(quick_result):
    return quick_result("early_stopping")


def test_every_claim_holds(result):
    for cid in (*IDS, *CONTROLS, "mlp.holdout.rate"):
        c = result.claim(cid)
        assert c.holds, (cid, c.measured, c.ci)
    assert result.verdict == "pass"
    assert all(result.claim(cid).control for cid in CONTROLS)


def test_the_rule_is_tested_directly(result):
    """The rule's time grows like 1/rho_N^2 ~ N^(2beta/(2beta+1)) and sits at the closed form's 1/rho_N^2;
    the fixed-time control misses the rate the rule reaches."""
    for beta in (1, 2):
        eta = result.claim(f"beta{beta}.eta_rule.rate")
        assert eta.predicted == pytest.approx(2 * beta / (2 * beta + 1)) and eta.relation == "=="
        assert result.claim(f"beta{beta}.eta_rule.constant").measured < math.log(2.0)
        rule, fixed = result.claim(f"beta{beta}.err_rule.rate"), result.claim(f"control.beta{beta}.fixed_time")
        assert fixed.measured > rule.measured + 0.3
        ratio = result.claim(f"beta{beta}.err_rule.vs_oracle")
        assert 1.0 <= ratio.measured <= ratio.predicted == pytest.approx(es.stopping_cost(0.2, beta, 0.5))


def test_config_is_frozen_and_quick_is_smaller():
    cls = registry.get("early_stopping").config_cls
    q, full = cls.quick(), cls()
    assert max(q.sample_sizes) <= max(full.sample_sizes) and q.seeds <= full.seeds
    assert q.mlp_seeds <= full.mlp_seeds and q.mlp_width <= full.mlp_width
    with pytest.raises(Exception):
        q.seeds = 1  # frozen


@pytest.mark.parametrize("bad", [dict(oracle_time_ratio=0.0), dict(oracle_time_ratio=1.5), dict(tol_constant=0.0),
                                 dict(fixed_time_n=1), dict(control_betas=(3,)), dict(seeds=1)])
def test_config_refuses(bad):
    with pytest.raises(ValueError):
        check.Config(**bad)


def test_faults_listed_and_targets_resolve():
    spec = registry.get("early_stopping")
    names = {f.name for f in spec.faults}
    assert len([f for f in spec.faults if f.caught]) >= 4
    assert {"rule_fixed_time", "rule_constant_e_sigma", "radius_constant_e_sigma", "ridge_lambda_eta_t",
            "beta_hat_slope_minus_beta", "gd_filter_sign"} <= names
    for f in spec.faults:
        module, attr = f.target.split(":")
        assert callable(getattr(importlib.import_module(module), attr)), f.target
        assert f.caught or f.reason


def _fault(name):
    return next(f for f in check.FAULTS if f.name == name)


def _spectrum(n, beta=1):
    k = np.arange(1, n // 2 + 1, dtype=float)
    return np.concatenate([[1.0], np.repeat(k ** (-2 * beta), 2)])[:n]


def test_rule_faults_move_the_time():
    """Injected through the module the check calls: a fixed time ignores N; 1/(e sigma) stops 2.5x later;
    a wrong radius constant leaves the literal rule's time alone but moves rho_N^2 by the same factor."""
    step, lam1, lam2 = 0.1, _spectrum(128), _spectrum(1024)
    t1, t2 = es.stopping_time(lam1, 0.5, step), es.stopping_time(lam2, 0.5, step)
    rho = es.critical_radius(lam2, 0.5)
    with inject(_fault("rule_fixed_time")):
        assert es.stopping_time(lam1, 0.5, step) == es.stopping_time(lam2, 0.5, step)
    with inject(_fault("rule_constant_e_sigma")):
        assert es.stopping_time(lam2, 0.5, step) > 2 * t2
    with inject(_fault("radius_constant_e_sigma")):
        assert es.stopping_time(lam1, 0.5, step) == t1
        assert es.critical_radius(lam2, 0.5) ** 2 < 0.5 * rho**2
    assert es.stopping_time(lam2, 0.5, step) == t2  # restored


def test_estimator_faults_change_what_they_say():
    lam = _spectrum(64)
    with inject(_fault("ridge_lambda_eta_t")):
        assert es.ridge_lambda_for_time(0.1, 50) == pytest.approx(5.0)
    with inject(_fault("beta_hat_slope_minus_beta")):
        assert es.fit_beta(np.arange(1, 50.0) ** -2.0).beta == pytest.approx(2.0)
    with inject(_fault("gd_filter_sign")):
        assert (es.gd_weights(lam, 0.1, 10) <= 0).all()
    with inject(_fault("rate_beta_over_beta_plus_one")):
        assert es.rate_exponent(1.0) == -0.5 and es.rule_time_exponent(2.0) == pytest.approx(2 / 3)
    assert dataclasses.is_dataclass(es.fit_beta(np.arange(1, 50.0) ** -2.0))
