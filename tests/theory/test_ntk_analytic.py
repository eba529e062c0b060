"""The analytic NNGP / NTK of theory/ntk_analytic.py: closed forms, quadrature, properties, Monte-Carlo.

Monte-Carlo: the project's own MLP (models.build) and kernel engine at width 2^14 (one hidden layer)
and 2^12 (two), float64, three seeds, N = 6 inputs on the sphere; the seed-mean eNTK and
last-layer Gram must sit within a few CLT units (C / sqrt(n S), C ~ 1-4 measured) of the analytic kernels.
"""
import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from ntkcheck.models import build
from ntkcheck.models.activations import get_activation
from ntkcheck.models.kernels import empirical_kernel
from ntkcheck.theory import ntk_analytic as A
from ntkcheck.theory.parametrization import MUP, NTK, SP, SP_LR

var_s = st.floats(0.05, 20.0)
rho_s = st.one_of(st.floats(-1.0, 1.0), st.sampled_from([-1.0, 0.0, 1.0]))


def _inputs(n, d, seed):
    x = np.random.default_rng(seed).standard_normal((n, d))
    return x / np.linalg.norm(x, axis=1, keepdims=True) * math.sqrt(d)


# ---------------------------------------------------------------- closed forms
@given(a=var_s)
def test_relu_arccos_at_equal_inputs(a):
    """At x = x': E[relu(u)^2] = a / 2 and E[step(u)^2] = 1 / 2 (theta = 0)."""
    E, D = A.dual_relu(a, a, a)
    assert math.isclose(E, a / 2, rel_tol=1e-12) and math.isclose(D, 0.5, rel_tol=1e-12)


@given(a=var_s, b=var_s)
def test_relu_arccos_orthogonal_and_opposite(a, b):
    """rho = 0: E = sqrt(ab) / (2 pi), E' = 1/4; rho = -1: both vanish (u, v never positive together)."""
    E, D = A.dual_relu(a, b, 0.0)
    assert math.isclose(E, math.sqrt(a * b) / (2 * math.pi), rel_tol=1e-12) and math.isclose(D, 0.25)
    E, D = A.dual_relu(a, b, -math.sqrt(a * b))
    assert abs(E) < 1e-12 * math.sqrt(a * b) + 1e-15 and abs(D) < 1e-12


@given(a=var_s, b=var_s, rho=rho_s)
def test_erf_closed_form_against_williams_limits(a, b, rho):
    """Williams' formula is odd in c and bounded by its diagonal values (Cauchy-Schwarz)."""
    c = rho * math.sqrt(a * b)
    E, _ = A.dual_erf(a, b, c)
    Em, _ = A.dual_erf(a, b, -c)
    Ea, _ = A.dual_erf(a, a, a)
    Eb, _ = A.dual_erf(b, b, b)
    assert math.isclose(E, -Em, abs_tol=1e-14)
    assert abs(E) <= math.sqrt(Ea * Eb) * (1 + 1e-12)


@given(depth=st.integers(1, 5), bias=st.booleans(), seed=st.integers(0, 1000))
def test_linear_activation_gives_the_deep_linear_kernel(depth, bias, seed):
    """phi = id, project coefficients: Sigma^{L+1} = G = X X^T / d, Theta^{L+1} = (L + 1)(G + 1{bias}),
    for the closed form and the quadrature alike (a polynomial integrand: exact)."""
    X = _inputs(5, 3, seed)
    G = X @ X.T / 3
    for method, kw in (("closed", {}), ("polar", {}), ("hermite", {"order": 4})):  # hermite: exact for deg <= 7
        k = A.mlp_kernels(X, NTK, depth, "linear", bias=bias, method=method, **kw)
        np.testing.assert_allclose(k.nngp, G, atol=1e-11)
        np.testing.assert_allclose(k.ntk, (depth + 1) * (G + float(bias)), atol=1e-10)


def test_one_hidden_layer_relu_by_hand():
    """L = 1, no bias: Theta = E_relu[G] + E_step[G] G with the arc-cosine formulas written out."""
    X = _inputs(4, 3, 0)
    G = X @ X.T / 3
    d = np.sqrt(np.outer(np.diag(G), np.diag(G)))
    t = np.arccos(np.clip(G / d, -1, 1))
    E = d * (np.sin(t) + (np.pi - t) * np.cos(t)) / (2 * np.pi)
    Ed = (np.pi - t) / (2 * np.pi)
    k = A.mlp_kernels(X, NTK, 1, "relu")
    np.testing.assert_allclose(k.nngp, E, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(k.ntk, E + Ed * G, rtol=1e-12, atol=1e-14)


# ---------------------------------------------------------------- quadrature
@given(a=var_s, b=var_s, rho=rho_s, act=st.sampled_from(["relu", "erf"]))
def test_polar_quadrature_matches_closed_forms(a, b, rho, act):
    """The polar (generalized Gauss-Hermite x split Gauss-Legendre) rule reproduces relu's arc-cosine and
    erf's closed forms to ~1e-8 relative, including rho = +-1 (x = +-x')."""
    c = rho * math.sqrt(a * b)
    want = A.get_dual(act, "closed")(np.array(a), np.array(b), np.array(c))
    got = A.get_dual(act, "polar")(np.array(a), np.array(b), np.array(c))
    scale = (math.sqrt(a * b), 1.0) if act == "relu" else (1.0, 1.0 / math.sqrt((1 + 2 * a) * (1 + 2 * b)))
    for g, w, s in zip(got, want, scale):
        assert abs(float(g) - float(w)) <= 1e-8 * s


@given(a=st.floats(0.05, 1.5), b=st.floats(0.05, 1.5), rho=rho_s)
def test_hermite_quadrature_matches_erf(a, b, rho):
    """The plain tensor-product Gauss-Hermite rule is spectrally accurate for the smooth erf at the
    variances of unit-norm inputs (at variance 3 erf' is narrow enough to cost it 1e-8 at 80 nodes)."""
    c = rho * math.sqrt(a * b)
    want = A.dual_erf(a, b, c)
    got = A.dual_quadrature(*A.activation("erf"), a, b, c, method="hermite", order=80)
    assert abs(float(got[0]) - float(want[0])) < 1e-8 and abs(float(got[1]) - float(want[1])) < 1e-8


def test_hermite_is_slow_on_the_relu_kink_and_polar_is_not():
    """Why "polar" is the default: at 200 nodes tensor Gauss-Hermite is still ~1e-4 off relu's closed form."""
    a, b, c = 1.3, 0.7, 0.4
    want = float(A.dual_relu(a, b, c)[0])
    herm = float(A.dual_quadrature(*A.activation("relu"), a, b, c, method="hermite", order=200)[0])
    polar = float(A.dual_quadrature(*A.activation("relu"), a, b, c, method="polar")[0])
    assert abs(herm - want) > 1e-5 and abs(polar - want) < 1e-13


@given(a=st.floats(0.05, 3.0), b=st.floats(0.05, 3.0), rho=rho_s, act=st.sampled_from(["tanh", "gelu"]))
def test_quadrature_rules_agree_on_smooth_activations(a, b, rho, act):
    """tanh, gelu (no closed form): polar and a large hermite rule agree, and a custom (phi, phi') pair
    gives the name's result."""
    c = rho * math.sqrt(a * b)
    polar = A.get_dual(act)(a, b, c)
    custom = A.get_dual(A.activation(act), "polar")(a, b, c)
    assert all(float(p) == float(q) for p, q in zip(polar, custom))
    herm = A.get_dual(act, "hermite", order=240)(a, b, c)
    for p, h in zip(polar, herm):
        assert abs(float(p) - float(h)) < 1e-9 * (1 + abs(float(p)))


@given(a=var_s, b=var_s, sign=st.sampled_from([-1.0, 1.0]), act=st.sampled_from(["tanh", "gelu", "sigma_gelu"]))
def test_polar_quadrature_against_adaptive_1d_at_rho_one(a, b, sign, act):
    """At rho = +-1 the expectation is 1-D, E[g(sqrt(a) z, +-sqrt(b) z)]: adaptive quadrature is the reference
    over the whole variance range (including sigma_gelu's 0.1-wide bend)."""
    from scipy import integrate

    phi, dphi = A.activation(act)
    E, D = A.get_dual(act)(a, b, sign * math.sqrt(a * b))
    for got, fn in ((E, phi), (D, dphi)):
        def integrand(z):
            return fn(math.sqrt(a) * z) * fn(sign * math.sqrt(b) * z) * math.exp(-z * z / 2) / math.sqrt(2 * math.pi)
        want = integrate.quad(integrand, -40, 40, points=[0.0], epsabs=1e-13, epsrel=1e-12, limit=400)[0]
        assert abs(float(got) - want) < 1e-9 * (1 + abs(want))


@pytest.mark.parametrize("name", A.ACTIVATIONS)
def test_numpy_activations_match_the_models(name):
    """theory's numpy (phi, phi') are the models' torch activations and their autograd derivative."""
    x = torch.linspace(-4, 4, 161, dtype=torch.float64, requires_grad=True)
    y = get_activation(name)(x)
    (dy,) = torch.autograd.grad(y.sum(), x)
    phi, dphi = A.activation(name)
    xn = x.detach().numpy()
    np.testing.assert_allclose(phi(xn), y.detach().numpy(), atol=1e-12)
    keep = np.abs(xn) > 1e-9  # relu' at exactly 0 is a convention
    np.testing.assert_allclose(dphi(xn)[keep], dy.numpy()[keep], atol=1e-12)


# ---------------------------------------------------------------- properties
@given(n=st.integers(1, 6), d=st.integers(1, 5), depth=st.integers(1, 4), bias=st.booleans(),
       act=st.sampled_from(["relu", "erf", "tanh"]), seed=st.integers(0, 10_000))
def test_kernels_symmetric_psd(n, d, depth, bias, act, seed):
    X = np.random.default_rng(seed).standard_normal((n, d))
    k = A.mlp_kernels(X, NTK, depth, act, bias=bias, order=16, radial_order=24)
    for M in (k.nngp, k.ntk, *k.sigmas, *k.thetas, *k.features):
        assert M.shape == (n, n)
        np.testing.assert_array_equal(M, M.T)
        # parallel inputs (d = 1) sit at rho = +-1, where arccos turns rounding (1e-16) into 1e-8
        assert np.linalg.eigvalsh(M).min() >= -1e-7 * max(1.0, np.abs(M).max())
    assert np.all(np.diag(k.ntk) >= np.diag(k.nngp) - 1e-12)  # Theta = Sigma + (PSD backprop terms) here


@given(t=st.floats(0.1, 10.0), depth=st.integers(1, 4), seed=st.integers(0, 10_000))
def test_relu_kernels_are_homogeneous(t, depth, seed):
    """relu and no biases: every layer is positively homogeneous, so K(t X) = t^2 K(X)."""
    X = np.random.default_rng(seed).standard_normal((4, 3))
    k1, kt = A.mlp_kernels(X, NTK, depth, "relu"), A.mlp_kernels(t * X, NTK, depth, "relu")
    np.testing.assert_allclose(kt.ntk, t * t * k1.ntk, rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(kt.nngp, t * t * k1.nngp, rtol=1e-10, atol=1e-14)


def test_coefficients_of_the_presets():
    """NTK: unit weight coefficients; biases start at zero (bias_var 0) but are trained (bias_lr 1)."""
    co = A.mlp_coefficients(NTK, 3, bias=True)
    assert co.weight_var == co.weight_lr == (1.0,) * 4
    assert co.bias_var == (0.0,) * 4 and co.bias_lr == (1.0,) * 4
    assert A.mlp_coefficients(NTK, 2, bias=False).bias_lr == (0.0,) * 3
    # base width n0: m = (n / n0)^-1/2 puts n0 into the hidden and output coefficients
    co = A.mlp_coefficients(NTK, 2, bias=False, base_width=4)
    assert co.weight_var == co.weight_lr == (1.0, 4.0, 4.0)
    # a multiplier constant alpha enters weight_lr as alpha^2 and weight_var as (alpha sigma)^2
    co = A.mlp_coefficients(NTK.with_role("hidden", alpha=2.0, sigma=0.5), 2, bias=False)
    assert co.weight_lr[1] == 4.0 and co.weight_var[1] == 1.0
    for p in (SP, SP_LR, MUP):
        with pytest.raises(ValueError, match="no finite"):
            A.mlp_coefficients(p, 2, bias=False)


def test_kernel_scale_exponents():
    """Unit-rate eNTK grows like n^e: NTK e = 0, SP (and SP_LR, same a, b) e = 1; muP's forward is not
    of this form (output a + b = 1) and is refused."""
    assert A.ntk_scale_exponent(NTK, 3) == 0
    assert A.ntk_scale_exponent(SP, 3) == 1 and A.ntk_scale_exponent(SP, 1) == 1
    assert A.ntk_scale_exponent(SP_LR, 2) == 1
    with pytest.raises(ValueError, match="no width-independent forward"):
        A.ntk_scale_exponent(MUP, 2)


def test_bad_arguments_name_the_value():
    X = _inputs(3, 2, 0)
    with pytest.raises(ValueError, match="'softsign'"):
        A.kernels(X, 2, "softsign")
    with pytest.raises(ValueError, match="no closed form"):
        A.kernels(X, 2, "tanh", method="closed")
    with pytest.raises(ValueError, match="depth \\+ 1 = 3"):
        A.kernels(X, 2, "relu", weight_var=[1.0, 1.0])
    with pytest.raises(ValueError, match="shape"):
        A.kernels(X[0], 2, "relu")
    with pytest.raises(ValueError, match=">= 1"):
        A.kernels(X, 0, "relu")


# ---------------------------------------------------------------- Monte-Carlo
def _mc(act, depth, bias, width, seeds, x):
    """Seed means of the eNTK (engine, unit rates) and of phi(h^L) phi(h^L)^T / n, [N, N] each."""
    Ks, Gs = [], []
    for s in seeds:
        model = build("mlp", width, "NTK", seed=s, dtype=torch.float64, d_in=x.shape[1], d_out=1, depth=depth,
                      activation=act, bias=bias)
        p = model.params()
        Ks.append(empirical_kernel(model.apply, p, x)[:, 0, :, 0].numpy())
        with torch.no_grad():
            h = model.phi(model.apply(p, x, all_layers=True)[-2])
        Gs.append((h @ h.T / width).numpy())
    return np.mean(Ks, axis=0), np.mean(Gs, axis=0)


def _rel(a, b):
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


@pytest.fixture
def one_thread():
    """Small Grams: threads do not pay on the shared 2-core machine; the caller's setting is restored."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


#: the seed-mean's relative error must stay below this many CLT units 1 / sqrt(n S): the cases below
#: measured 0.5-3.3 units (relative errors 0.24%-2.4%); the wrong bias readings sit at 51-577 units
CLT_UNITS = 8.0


@pytest.mark.parametrize("act,depth,bias,width", [
    ("relu", 1, False, 2**14), ("relu", 1, True, 2**14), ("erf", 1, True, 2**14), ("tanh", 1, False, 2**14),
    ("gelu", 1, True, 2**14), ("linear", 1, True, 2**14),
    ("relu", 2, True, 2**12), ("erf", 2, False, 2**12),
])
def test_monte_carlo_matches_analytic(act, depth, bias, width, one_thread):
    seeds = (11, 12, 13)
    x = torch.from_numpy(_inputs(6, 5, 7))
    K, G = _mc(act, depth, bias, width, seeds, x)
    k = A.mlp_kernels(x.numpy(), NTK, depth, act, bias=bias)
    tol = CLT_UNITS / math.sqrt(width * len(seeds))
    assert _rel(K, k.ntk) < tol, (_rel(K, k.ntk), tol)
    assert _rel(G, k.nngp) < tol, (_rel(G, k.nngp), tol)


def test_monte_carlo_rejects_the_neural_tangents_bias_convention(one_thread):
    """Zero-init but trained biases: NNGP without bias variance, NTK with the bias gradient. Both other
    readings (sigma_b^2 in the NNGP too; no bias term in the NTK) are far outside the MC's error."""
    x = torch.from_numpy(_inputs(6, 5, 7))
    width, seeds = 2**14, (21, 22, 23)
    K, G = _mc("relu", 1, True, width, seeds, x)
    tol = CLT_UNITS / math.sqrt(width * len(seeds))
    right = A.mlp_kernels(x.numpy(), NTK, 1, "relu", bias=True)
    nt = A.kernels(x.numpy(), 1, "relu", weight_var=1.0, bias_var=1.0)          # bias_lr = bias_var = 1
    frozen = A.kernels(x.numpy(), 1, "relu", weight_var=1.0, bias_var=0.0)      # bias_lr = 0
    assert _rel(K, right.ntk) < tol and _rel(G, right.nngp) < tol
    assert _rel(K, nt.ntk) > 4 * tol and _rel(G, nt.nngp) > 4 * tol
    assert _rel(K, frozen.ntk) > 4 * tol
