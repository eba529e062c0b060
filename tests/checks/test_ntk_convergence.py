"""ntk_convergence: the --quick verdict (control included), slopes near -1/2 and +1, and one sweep point."""
import math

import numpy as np
import pytest

from ntkcheck.checks import all_checks
from ntkcheck.checks import ntk_convergence as C


@pytest.fixture(scope="module")
def result(quick_result):
    return quick_result("ntk_convergence")


def test_quick_verdict_passes_with_control(result):
    failed = [c.id for c in result.claims if not c.holds]
    assert result.verdict == "pass", failed
    controls = [c for c in result.claims if c.control]
    assert [c.id for c in controls] == ["control.sp.ntk_norm.slope"] and controls[0].holds


def test_slopes_near_their_predictions(result):
    """Tighter than the claims' 0.15: over nine seed offsets the quick slopes stayed within 0.07 of -1/2
    and the control within 0.02 of +1; the mean gaps below 2.2."""
    for v in C.Config.quick().variants:
        for key in ("ntk", "nngp"):
            c = result.claim(f"{v}.{key}.slope")
            assert abs(c.measured + 0.5) < 0.1, (c.id, c.measured)
            assert c.ci[0] < c.measured < c.ci[1]
            assert result.claim(f"{v}.{key}.mean_gap").measured < 2.5
    assert abs(result.claim("control.sp.ntk_norm.slope").measured - 1.0) < 0.05


def test_one_sweep_point():
    """One (variant, width, seed) point: errors of the CLT size, the stored deviation vector carries the
    Frobenius norm, the point is a pure function of its coordinates, and the SP control is ~n times larger."""
    cfg = C.Config.quick()
    row = C.compute_point(cfg, "erf_d3_bias", 256, 0)
    assert set(row) == {"ntk_norm", "ntk_err", "nngp_err", "ntk_dev", "nngp_dev"}
    for key in ("ntk", "nngp"):
        # e(n) ~ C / sqrt(n) with C ~ 1-4 measured for this variant
        assert 0.2 / math.sqrt(256) < row[f"{key}_err"] < 12 / math.sqrt(256)
        assert math.isclose(np.linalg.norm(row[f"{key}_dev"]), row[f"{key}_err"], rel_tol=1e-12)
        assert len(row[f"{key}_dev"]) == cfg.n_inputs * (cfg.n_inputs + 1) // 2
    assert C.compute_point(cfg, "erf_d3_bias", 256, 0) == row
    assert C.compute_point(cfg, "erf_d3_bias", 256, 1) != row
    ntk_norm = C.compute_point(cfg, "relu_d3", 256, 0)["ntk_norm"]
    sp = C.compute_point(cfg, cfg.control_name, 256, 0)
    assert set(sp) == {"ntk_norm"} and 0.3 * 256 < sp["ntk_norm"] / ntk_norm < 3 * 256


def test_mean_gap_tells_noise_from_bias():
    rng = np.random.default_rng(0)
    noise = rng.standard_normal((20, 30))
    assert 0.3 < C.mean_gap(noise) < 2.0
    # a shared offset delta: gap ~ sqrt(S) delta / e (e = sqrt(30) per draw), unbounded, not capped at sqrt(S)
    assert 3.5 < C.mean_gap(noise + 1.0) < 5.5
    assert C.mean_gap(noise + 3.0) > 10 and C.mean_gap(np.ones((20, 30))) == math.inf
    assert math.isnan(C.mean_gap(noise[:1]))


def test_config_validation_names_the_value():
    with pytest.raises(ValueError, match="'relu3'"):
        C.Config(variants=("relu3",))
    with pytest.raises(ValueError, match="'swish_d2'"):
        C.Config(variants=("swish_d2",))
    with pytest.raises(ValueError, match="param='SP'"):
        C.Config(param="SP")
    with pytest.raises(ValueError, match="control_param='NTK'"):
        C.Config(control_param="NTK")
    with pytest.raises(ValueError, match="seeds >= 2"):
        C.Config(seeds=1)
    with pytest.raises(ValueError, match="widths"):
        C.Config(widths=(64,))
    assert C.parse_variant("sigma_gelu_d2_bias") == ("sigma_gelu", 2, True)


def test_registered():
    spec = all_checks()["ntk_convergence"]
    assert spec.order == 15 and spec.axes == ("widths", "seeds")
