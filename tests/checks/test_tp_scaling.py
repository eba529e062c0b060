"""tp_scaling --quick: the predicted slopes hold and the SP control grows, as its r < 0 says."""
import pytest

from ntkcheck.checks import tp_scaling


@pytest.fixture(scope="module")
def result(quick_result):
    return quick_result("tp_scaling")


def test_quick_verdict_passes_with_controls(result):
    failed = [c.name for c in result.claims if not c.holds]
    assert result.verdict == "pass", failed
    controls = [c for c in result.claims if c.control]
    assert len(controls) >= 4 and all(c.holds for c in controls)


def test_sp_control_grows_and_kernel_presets_shrink(result):
    assert result.claim("mlp.sgd.SP.dh_slope").measured > 0.3
    assert result.claim("mlp.sgd.NTK.dh_slope").measured < -0.35
    assert abs(result.claim("mlp.sgd.MUP.dh_slope").measured) < 0.15
    assert result.claim("transformer.adam.SP.dh_grows").relation == ">"


def test_predictions_come_from_theory_not_constants():
    dh, df, _ = tp_scaling._predicted("SP", "sgd", 2)
    assert (dh, df) == (0.5, 1.0)
    # NTK's hidden weight W = n^-1/2 w: SGD moves its entries by n^-(2a + c + m) = n^-3/2, Adam by n^-(a + c) =
    # n^-3/2 with Adam's c = 1; MUP (a = 0): n^-1 under both
    assert tp_scaling._predicted("NTK", "adam", 2) == (-0.5, 0.0, -1.5)
    assert tp_scaling._predicted("NTK", "sgd", 2) == (-0.5, 0.0, -1.5)
    assert tp_scaling._predicted("MUP", "sgd", 3) == (0.0, 0.0, -1.0)


def test_weight_update_claim_measures_the_hidden_weight_with_its_multiplier(result):
    """The Adam-rate fault (2a + c for a + c) moves only this claim: NTK under Adam, -1.5 -> -2."""
    c = result.claim("mlp.adam.NTK.dW_slope")
    assert c.predicted == -1.5 and c.holds and abs(c.measured + 1.5) < 0.02   # sign updates: exact up to eps


def test_single_point_measures_a_kernel_regime_step():
    """One NTK point: the first hidden layer moves much less than the output at width 1024."""
    cfg = tp_scaling.Config(steps=1)
    rows = {r["layer"]: r for r in tp_scaling.measure_point(cfg, "mlp", "sgd", "NTK", 1024, 0)}
    assert rows["h2"]["rms_dh"] < 0.1 * rows["out"]["rms_dh"]
    assert rows["h1"]["rms_h"] > 0.5
    assert rows["W2"]["rms_dh"] < 1e-3 * rows["W2"]["rms_h"]   # the hidden weight barely moves (n^-3/2 vs n^-1/2)
