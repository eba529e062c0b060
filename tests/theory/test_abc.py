"""theory.abc: the presets' regimes, r, and [KV] Table 10 for muP, derived symbolically."""
import sympy as sp
from hypothesis import given
from hypothesis import strategies as st

from ntkcheck.theory.parametrization import MUP, NTK, SP, SP_LR, Parametrization, RoleScaling
from ntkcheck.theory.abc import analyze, table10

R = sp.Rational


def test_presets_regimes_and_r():
    assert (analyze(SP, 2).r, analyze(SP, 2).regime) == (-1, "unstable")
    assert (analyze(SP_LR, 2).r, analyze(SP_LR, 2).regime) == (R(1, 2), "kernel")
    assert (analyze(NTK, 2).r, analyze(NTK, 2).regime) == (R(1, 2), "kernel")
    assert (analyze(MUP, 2).r, analyze(MUP, 2).regime) == (0, "feature_learning")
    for p, regime in ((NTK, "kernel"), (MUP, "feature_learning")):
        assert analyze(p, 3, "adam").regime == regime
    assert analyze(SP, 2, "adam").regime == "unstable"


def test_sp_step_one_exponents_of_checks_md():
    """SP with constant lr at step 1: last-layer dh ~ n^+1/2, df ~ n^+1."""
    a = analyze(SP, 2, "sgd")
    assert a.layers[1].feature_update == R(-1, 2)
    assert a.output_update_step1 == -1


def test_table10_for_mup():
    """[KV] Table 10 (U input, W hidden, V output), exponents e of Theta(n^-e)."""
    t = table10(MUP)
    assert t["init"] == {"U": 0, "W": R(1, 2), "V": 1}
    assert t["update"] == {"U": 0, "W": 1, "V": 1}
    assert t["lr_sgd"] == {"U": -1, "W": 0, "V": 1}
    assert t["lr_signgd"] == {"U": 0, "W": 1, "V": 1}


def test_yang_hu_formula_with_global_c():
    """With one global c the per-layer r reduces to [KV] C.3's formula."""
    for c in (R(0), R(1, 2), R(1)):
        p = Parametrization("x", input=RoleScaling(a=R(-1, 2), b=R(1, 2), c_sgd=c),
                            hidden=RoleScaling(a=0, b=R(1, 2), c_sgd=c),
                            output=RoleScaling(a=R(1, 2), b=R(1, 2), c_sgd=c))
        expected = sp.Min(R(1), 1 + c) + c - 1 + sp.Min(2 * R(-1, 2) + 1, 0)
        assert analyze(p, 3).r == sp.simplify(expected)


@given(gamma=st.sampled_from([R(1, 4), R(1, 2), R(1), R(3, 2)]), depth=st.integers(1, 4))
def test_lemma_c6_invariance_of_exponents(gamma, depth):
    """Shifting (a, b, c) by (+g, -g, -2g) per role (Lemma C.6 with gamma = n^-g) keeps every exponent."""
    def shift(s, g):
        return RoleScaling(a=s.a + g, b=s.b - g, c_sgd=s.c_sgd - 2 * g, c_adam=s.c_adam - g)
    g = gamma
    for p in (NTK, MUP, SP_LR):
        q = Parametrization("shifted", input=shift(p.input, g), hidden=shift(p.hidden, g),
                            output=shift(p.output, g))
        for opt in ("sgd", "adam"):
            a, b = analyze(p, depth, opt), analyze(q, depth, opt)
            assert (a.r, a.regime, a.output_update) == (b.r, b.regime, b.output_update)
            assert [l.feature_update for l in a.layers] == [l.feature_update for l in b.layers]
