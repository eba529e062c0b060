"""task_arithmetic: the --quick claims by id, the negation's first-order effect, the fault helpers."""
import pytest
import torch

from ntkcheck.checks import registry
from ntkcheck.checks import task_arithmetic as TA


@pytest.fixture(scope="module")
def result(quick_result):
    return quick_result("task_arithmetic")


def test_quick_verdict_passes_with_controls(result):
    bad = [c.id for c in result.claims if not c.holds]
    assert not bad and result.verdict == "pass"
    controls = [c for c in result.claims if c.control]
    assert controls and all(c.holds for c in controls)


def test_claims_present_with_their_relations(result):
    assert result.claim("negation.effect").relation == "==" and result.claim("negation.effect").predicted == 1.0
    assert abs(result.claim("negation.effect").measured - 1.0) < 0.05
    assert result.claim("interaction.sharp").predicted == -1.0
    assert result.claim("control.shared.interference").control


def test_negation_effect_matches_first_order_and_no_negation_does_not():
    """Cor. 1 to first order: MSE(f_neg) - MSE(f_FT) = 4 E[delta (y - f_PT)]; theta_PT itself is far off."""
    cfg = TA.Config.quick()
    row = TA._point(cfg, 512, 0)[0]
    assert abs(row["neg_effect_ratio"] - 1.0) < 0.05
    # without negation the 'negated' model is theta_PT: (MSE_PT - MSE_FT) / prediction is far from 1
    assert (row["mse_pt"] - row["mse_ft"]) / row["neg_effect_pred"] < 0.7


def test_task_vector_helpers():
    a = {"w": torch.tensor([1.0, 2.0])}
    b = {"w": torch.tensor([3.0, 1.0])}
    tau = TA.task_vector(b, a)
    assert torch.equal(tau["w"], torch.tensor([2.0, -1.0]))
    assert torch.equal(TA.add_task_vectors(a, [tau], scale=-1.0)["w"], torch.tensor([-1.0, 3.0]))
    assert TA.cosine(tau, tau) == pytest.approx(1.0)
    x = TA.task_inputs(5, 8, 1, torch.Generator().manual_seed(0))
    assert torch.equal(x[:, :4], torch.zeros(5, 4)) and bool((x[:, 4:] != 0).all())


def test_config_is_frozen_and_quick_is_smaller():
    cls = registry.get("task_arithmetic").config_cls
    q, full = cls.quick(), cls()
    assert max(q.widths) <= max(full.widths) and q.seeds <= full.seeds
    with pytest.raises(Exception):
        q.seeds = 1  # frozen
    with pytest.raises(ValueError, match="d_in"):
        cls(d_in=7)
