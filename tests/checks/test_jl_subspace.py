"""jl_subspace --quick: verdict pass, every claim (controls included) holds; the sharp claims separate the
correct JL bound from the wrong ones; the projection sampler and tail statistics it rests on."""
import importlib
import math
import re

import numpy as np
import pytest

from ntkcheck.checks import registry
from ntkcheck.checks.faults import inject

CLAIM_IDS = ("lemma_d4.identity", "control.lemma_d4.b_nonzero", "lora.deviation.slope", "id.deviation.slope",
             "lora.exceedance.bound", "lora.exceedance.rate", "lora.exceedance.slack", "id.exceedance.bound",
             "id.exceedance.rate", "id.exceedance.slack", "lora_all_union.exceedance.bound",
             "lora_all_paper.exceedance.bound", "remark_d6.rank", "control.small_rank.misses",
             "table11.ft_vs_lora", "table11.k_vs_klora", "table11.ft_vs_k", "lora_ft.traj_gap",
             "lora_ft.kernel_gap", "lora_ft.traj_gap.slope")


@pytest.fixture(scope="module")
def result(quick_result):
    return quick_result("jl_subspace")


def _module():
    return importlib.import_module("ntkcheck.checks.jl_subspace")


def test_every_claim_present_and_holding(result):
    assert [c.id for c in result.claims] == list(CLAIM_IDS)
    bad = [c.id for c in result.claims if not c.holds]
    assert not bad and result.verdict == "pass"


def test_sharp_claims_are_tight(result):
    """The rate ratio is near Cramer's I / r (1.09 over the windows), the slack near its prediction, and the
    bound is tested at informative (eps, k): the claims are not wide enough to pass a constant off by 2 or N."""
    for key in ("lora", "id"):
        rate = result.claim(f"{key}.exceedance.rate")
        assert rate.predicted == 1.0 and rate.tolerance <= 0.3 and 1.0 <= rate.measured <= 1.2
        slack = result.claim(f"{key}.exceedance.slack")
        assert slack.tolerance < math.log(32) / 2 and abs(slack.measured - slack.predicted) < 0.3
        bound = result.claim(f"{key}.exceedance.bound")
        assert int(re.search(r"max over the (\d+) \(eps, k\)", bound.name).group(1)) >= 10
    remark = result.claim("remark_d6.rank")
    assert remark.predicted < 0.01 and remark.ci[1] <= remark.predicted


def test_config_is_frozen_and_quick_is_smaller():
    cls = registry.get("jl_subspace").config_cls
    q, full = cls.quick(), cls()
    assert q.draws <= full.draws and q.seeds <= full.seeds
    with pytest.raises(Exception):
        q.seeds = 1  # frozen


def test_config_needs_three_ranks_per_window():
    cls = registry.get("jl_subspace").config_cls
    with pytest.raises(ValueError, match="rate fit needs 3"):
        cls(ranks=(2, 8, 16, 64, 1024))
    with pytest.raises(ValueError, match="window_min_p"):
        cls(window_min_p=0.3, window_max_p=0.1)


def _exact_rows(cfg, draws_total: int, rng=None) -> list[dict]:
    """jl rows whose worst-pair counts are the exact chi-square tail times the draws (or binomial draws of it)."""
    from ntkcheck.theory import jl

    rows = []
    for k in cfg.ranks:
        row = {"k": k, "n": draws_total, "seed": 0}
        for eps in cfg.sharp_epsilons:
            p = jl.chi2_deviation_tail(k, eps)
            row[f"c_lora_dom_{eps:g}"] = p * draws_total if rng is None else int(rng.binomial(draws_total, p))
        rows.append(row)
    return rows


def test_sharp_claims_separate_the_correct_bound_from_wrong_constants():
    """On exact worst-pair tails, the correct bound holds both sharp claims and each claims-scope fault
    (exponent /2 or /8, prefactor 4 N or 4 N^3) fails one of them: the design, independent of a run."""
    mod = _module()
    cfg = mod.Config.quick()
    rows = _exact_rows(cfg, cfg.seeds * cfg.draws, np.random.default_rng(0))
    clean = mod._sharp_claims("lora", "LoRA", "[KV]", rows, cfg, {})
    assert [c.state for c in clean] == ["holds", "holds"], [(c.measured, c.ci) for c in clean]
    for fault in (f for f in mod.FAULTS if f.scope == "claims"):
        with inject(fault):
            states = [c.state for c in mod._sharp_claims("lora", "LoRA", "[KV]", rows, cfg, {})]
        assert "fails" in states, (fault.name, states)


def test_faults_listed_and_targets_resolve():
    spec = registry.get("jl_subspace")
    assert len(spec.faults) >= 4 and all(f.caught for f in spec.faults)
    for f in spec.faults:
        module, attr = f.target.split(":")
        assert callable(getattr(importlib.import_module(module), attr))
    # claims-scope faults change nothing a point holds: the point code never calls their targets
    assert {f.target for f in spec.faults if f.scope == "claims"} <= {"ntkcheck.theory.jl:jl_pair_bound",
                                                                       "ntkcheck.theory.jl:jl_tail_bound"}


def test_wishart_draws_match_direct_projection():
    """The Bartlett-drawn projected Gram has the mean and spread of an explicit N(0, 1/k) projection."""
    from ntkcheck.checks._jl_helpers import gram_root, projected_grams

    rng = np.random.default_rng(0)
    V = rng.standard_normal((5, 40))
    K = V @ V.T
    for k, draws in ((12, 20000), (3, 20000)):  # Bartlett (k >= r = 5) and the direct draw (k < r)
        fast = projected_grams(gram_root(K), k, draws, rng)
        P = rng.standard_normal((draws, k, 40)) / np.sqrt(k)
        PV = np.einsum("dkm,nm->dkn", P, V)
        direct = np.einsum("dkn,dkm->dnm", PV, PV)
        np.testing.assert_allclose(fast.mean(0), K, atol=0.05 * np.abs(K).max())
        np.testing.assert_allclose(fast.std(0), direct.std(0), rtol=0.05, atol=0.02 * np.abs(K).max())


def test_worst_pair_deviation_is_chi_square():
    """The diagonal entry of a projected Gram over its own value is chi2_k / k: the worst pair's exact law."""
    from ntkcheck.checks._jl_helpers import gram_root, projected_grams
    from ntkcheck.theory import jl

    rng = np.random.default_rng(1)
    V = rng.standard_normal((6, 50))
    K = V @ V.T
    k, draws, eps = 64, 40000, 0.25
    G = projected_grams(gram_root(K), k, draws, rng)
    dev = np.abs(G[:, 2, 2] / K[2, 2] - 1)
    p = jl.chi2_deviation_tail(k, eps)
    assert abs((dev >= eps).mean() - p) <= 5 * math.sqrt(p * (1 - p) / draws)


def test_tail_statistics():
    from ntkcheck.checks._jl_helpers import binomial_bootstrap, clopper_pearson, tail_decay_rate
    from ntkcheck.theory import jl

    lo, hi = clopper_pearson(0, 4500)
    assert lo == 0.0 and math.isclose(hi, 1 - 0.025 ** (1 / 4500), rel_tol=1e-6)
    lo, hi = clopper_pearson(50, 100)
    assert lo < 0.5 < hi and math.isclose(lo + hi, 1.0, rel_tol=1e-9)
    assert clopper_pearson(100, 100)[1] == 1.0
    # on Bahadur-Rao tails the fit returns Cramer's rate exactly
    ks = np.array([100.0, 200.0, 400.0])
    n = np.full(3, 1e12)
    assert math.isclose(tail_decay_rate(ks, jl.bahadur_rao_tail(ks, 0.2) * n, n), jl.cramer_rate(0.2),
                        rel_tol=1e-9)
    value, (a, b) = binomial_bootstrap(lambda c: float(c.sum() / 3000), np.array([100.0, 200.0, 300.0]),
                                       np.full(3, 1000.0))
    assert a < value < b and b - a < 0.05
