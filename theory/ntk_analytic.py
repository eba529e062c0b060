"""The analytic infinite-width NNGP and NTK of the MLPs ntkcheck builds (Jacot et al. 2018; Lee et al. 2019).

Network (models/mlp.py, models/layers.py) with L hidden layers of width n, inputs x in R^d:

    h^1 = m_1 w^1 x + beta_1 b^1,    h^{l+1} = m_{l+1} w^{l+1} phi(h^l) + beta_{l+1} b^{l+1},    f = h^{L+1},

with trainable tensors w^l (entries N(0, s_l^2)) and b^l. Take each layer's coefficients

    weight_var_l = m_l^2 fan_in_l s_l^2   forward variance of the effective weight times fan-in
    weight_lr_l  = eta_l m_l^2 fan_in_l   what the gradient wrt the raw w^l contributes (learning rate eta_l)
    bias_var_l   = beta_l^2 Var(b^l)      the bias's forward variance at init
    bias_lr_l    = eta_b beta_l^2         what the gradient wrt the raw b^l contributes

With Lambda(x, x') = [[S(x, x), S(x, x')], [S(x, x'), S(x', x')]] and (u, v) ~ N(0, Lambda), write
E_phi[S] = E[phi(u) phi(v)] and E_phi'[S] = E[phi'(u) phi'(v)]. As n -> infinity (layer by layer),

    Sigma^1 = weight_var_1 <x, x'> / d + bias_var_1
    Theta^1 = weight_lr_1  <x, x'> / d + bias_lr_1
    Sigma^{l+1} = weight_var_{l+1} E_phi[Sigma^l] + bias_var_{l+1}                                (NNGP)
    Theta^{l+1} = weight_lr_{l+1} E_phi[Sigma^l] + bias_lr_{l+1} + weight_var_{l+1} E_phi'[Sigma^l] Theta^l   (NTK)

and the output's NNGP and NTK are Sigma^{L+1}, Theta^{L+1} (times the identity over outputs).
The weight part of the NTK term carries weight_lr (the gradient wrt the raw w sees the multiplier m,
not the init std s), while the backpropagated term carries weight_var (the chain rule sees the
effective weight m w). For neural-tangents' NTK parametrization (w ~ N(0, 1), m = sigma_w /
sqrt(fan_in)) weight_lr = weight_var = sigma_w^2 and bias_lr = bias_var = sigma_b^2; the models
here differ in the biases: they are initialized to ZERO (bias_var = 0: the NNGP gets no bias
variance) but are trained (bias_lr = beta^2 > 0: they add to the NTK). ``mlp_coefficients``
derives all four from a Parametrization value.

Dual activations E_phi, E_phi' in closed form:
  relu (Cho & Saul 2009, arc-cosine kernels of degree 1 and 0; Arora et al. 2019), with
    rho = c / sqrt(a b), theta = arccos(rho):
        E[relu(u) relu(v)] = sqrt(a b) (sin theta + (pi - theta) cos theta) / (2 pi),
        E[step(u) step(v)] = (pi - theta) / (2 pi)              (at x = x': a / 2 and 1 / 2);
  erf (Williams 1997):
        E[erf(u) erf(v)] = (2 / pi) arcsin(2 c / sqrt((1 + 2 a)(1 + 2 b))),
        E[erf'(u) erf'(v)] = (4 / pi) / sqrt((1 + 2 a)(1 + 2 b) - 4 c^2);
  linear: E = c, E' = 1 (the deep linear network's kernels).
Every other activation (tanh, gelu, sigma_gelu, or any numpy pair (phi, phi')) by Gaussian
quadrature of the 2x2 expectation (``dual_quadrature``). Pure numpy/scipy; no torch.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Callable, Sequence

import numpy as np
from numpy.polynomial.legendre import leggauss
from scipy.special import erf, roots_hermitenorm

from ntkcheck.theory.parametrization import Parametrization

Array = np.ndarray
Elementwise = Callable[[Array], Array]
#: (a, b, c) -> (E[phi(u) phi(v)], E[phi'(u) phi'(v)]) for (u, v) ~ N(0, [[a, c], [c, b]]), elementwise
Dual = Callable[[Array, Array, Array], tuple[Array, Array]]

ACTIVATIONS = ("relu", "erf", "linear", "tanh", "gelu", "sigma_gelu")
CLOSED_FORMS = ("relu", "erf", "linear")
METHODS = ("auto", "closed", "polar", "hermite")


# ---------------------------------------------------------------- activations (numpy)
def activation(name: str, sigma: float = 0.1) -> tuple[Elementwise, Elementwise]:
    """(phi, phi') in numpy for the activations of models/activations.py (the same formulas).

    gelu is the exact x Phi(x) (torch's default); sigma_gelu ([KV] Assumption C.2f) has
    derivative (1 + erf(x / sigma)) / 2 (the other terms cancel).
    """
    if name == "relu":
        return (lambda x: np.maximum(x, 0.0)), (lambda x: (x > 0).astype(float))
    if name == "erf":
        return erf, (lambda x: 2.0 / math.sqrt(math.pi) * np.exp(-x * x))
    if name == "linear":
        return (lambda x: x), (lambda x: np.ones_like(x))
    if name == "tanh":
        return np.tanh, (lambda x: 1.0 - np.tanh(x) ** 2)
    if name == "gelu":
        def cdf(x):
            return 0.5 * (1.0 + erf(x / math.sqrt(2.0)))

        return (lambda x: x * cdf(x)), (lambda x: cdf(x) + x * np.exp(-0.5 * x * x) / math.sqrt(2 * math.pi))
    if name == "sigma_gelu":
        s = float(sigma)
        return ((lambda x: 0.5 * x * erf(x / s) + s * np.exp(-(x / s) ** 2) / (2 * math.sqrt(math.pi)) + 0.5 * x),
                (lambda x: 0.5 * erf(x / s) + 0.5))
    raise ValueError(f"unknown activation {name!r}; expected one of {ACTIVATIONS}")


# ---------------------------------------------------------------- dual activations
def _correlation(a: Array, b: Array, c: Array) -> tuple[Array, Array]:
    """(sqrt(a b), rho = c / sqrt(a b) clipped to [-1, 1]; rho = 0 where a b = 0)."""
    ab = np.sqrt(np.maximum(a * b, 0.0))
    safe = np.where(ab > 0, ab, 1.0)
    rho = np.where(ab > 0, np.clip(c / safe, -1.0, 1.0), 0.0)
    return ab, rho


def dual_relu(a: Array, b: Array, c: Array) -> tuple[Array, Array]:
    """Arc-cosine kernels (Cho & Saul 2009): E[relu(u) relu(v)] = sqrt(ab)(sin t + (pi - t) cos t) / (2 pi),
    E[1{u>0} 1{v>0}] = (pi - t) / (2 pi), t = arccos(c / sqrt(ab)). Shapes broadcast elementwise."""
    ab, rho = _correlation(np.asarray(a, float), np.asarray(b, float), np.asarray(c, float))
    t = np.arccos(rho)
    return ab * (np.sqrt(1.0 - rho * rho) + (math.pi - t) * rho) / (2 * math.pi), (math.pi - t) / (2 * math.pi)


def dual_erf(a: Array, b: Array, c: Array) -> tuple[Array, Array]:
    """Williams 1997: E[erf(u) erf(v)] = (2/pi) arcsin(2c / sqrt((1+2a)(1+2b))),
    E[erf'(u) erf'(v)] = (4/pi) det(I + 2 Lambda)^(-1/2) = (4/pi) / sqrt((1+2a)(1+2b) - 4c^2)."""
    a, b, c = (np.asarray(v, float) for v in (a, b, c))
    q = (1.0 + 2.0 * a) * (1.0 + 2.0 * b)
    return (2.0 / math.pi) * np.arcsin(np.clip(2.0 * c / np.sqrt(q), -1.0, 1.0)), \
        (4.0 / math.pi) / np.sqrt(np.maximum(q - 4.0 * c * c, 1e-300))


def dual_linear(a: Array, b: Array, c: Array) -> tuple[Array, Array]:
    """phi(x) = x: E[u v] = c, E[1 * 1] = 1."""
    c = np.asarray(c, float)
    return c.copy(), np.ones_like(c)


_CLOSED: dict[str, Dual] = {"relu": dual_relu, "erf": dual_erf, "linear": dual_linear}


#: radial panel edges of the "polar" rule: geometric in r, so a feature of phi at any radius between
#: 2^-10 and 8 standard deviations falls inside a panel of bounded ratio; beyond 12 the weight is < e^-72
_RADIAL_EDGES = np.concatenate([[0.0], 2.0 ** np.arange(-10, 4), [12.0]])


def _radial_rule(per_panel: int) -> tuple[Array, Array]:
    """Nodes r_k > 0 and weights w_k with sum_k w_k F(r_k) ~ int_0^inf r e^{-r^2/2} F(r) dr (composite
    Gauss-Legendre on _RADIAL_EDGES, the Rayleigh weight multiplied into the weights)."""
    g, w = leggauss(per_panel)
    lo, width = _RADIAL_EDGES[:-1, None], np.diff(_RADIAL_EDGES)[:, None]
    r = (lo + (g + 1.0) / 2.0 * width).ravel()
    return r, (w * width / 2.0).ravel() * r * np.exp(-0.5 * r * r)


#: angular panels of a segment between two breakpoints, as fractions of it: graded 2^-6 .. 1/2 toward
#: both ends, where a kink (relu) or a narrow bend (sigma_gelu's, width sigma) of phi sits
_ANGULAR_FRACTIONS = np.concatenate([[0.0], 2.0 ** -np.arange(6, 0, -1), 1.0 - 2.0 ** -np.arange(2, 7), [1.0]])


def _angular_rule(per_panel: int) -> tuple[Array, Array]:
    """Nodes in [0, 1] and weights of the graded composite Gauss-Legendre rule on _ANGULAR_FRACTIONS."""
    g, w = leggauss(per_panel)
    lo, width = _ANGULAR_FRACTIONS[:-1, None], np.diff(_ANGULAR_FRACTIONS)[:, None]
    return (lo + (g + 1.0) / 2.0 * width).ravel(), (w * width / 2.0).ravel()


def dual_quadrature(phi: Elementwise, dphi: Elementwise, a: Array, b: Array, c: Array, *,
                    method: str = "polar", order: int = 8, radial_order: int = 12,
                    max_elements: int = 1 << 22) -> tuple[Array, Array]:
    """E[phi(u) phi(v)] and E[phi'(u) phi'(v)], (u, v) ~ N(0, [[a, c], [c, b]]), by quadrature; shapes broadcast.

    Write (u, v) = (sqrt(a) z1, sqrt(b)(rho z1 + sqrt(1 - rho^2) z2)) with z ~ N(0, I_2).

    method "hermite": the tensor product of ``order``-point Gauss-Hermite rules (weight e^{-z^2/2})
      in (z1, z2). Spectrally accurate for smooth phi at moderate variance (erf: 1e-13 at order 50),
      but for a kink (relu's at 0) the error falls only like 1/order (3e-3 at 20 nodes, 3e-4 at 200).
    method "polar" (default): z = r (cos t, sin t), t in [0, pi), r in R, so that

          E[g(u, v)] = 1/(2 pi) int_0^pi dt int_0^inf r e^{-r^2/2} [g(r A(t), r B(t)) + g(-r A(t), -r B(t))] dr,

      A(t) = sqrt(a) cos t, B(t) = sqrt(b)(rho cos t + sqrt(1 - rho^2) sin t). A kink of phi at 0 is a
      ray, at the angles where u = 0 (t = pi/2) or v = 0; the angle range is split there, and each
      segment gets 12 Gauss-Legendre panels of ``order`` nodes graded toward its ends (a bend of
      width sigma, sigma_gelu's, is a narrow angular feature next to the split ray: 32 plain nodes
      per segment lost 1e-5 there). Along a ray (the generalized Gauss-Hermite weight |r| e^{-r^2/2})
      a composite Gauss-Legendre rule with ``radial_order`` nodes on each of 15 panels geometric in
      r: a single Gauss-Laguerre rule in r^2 / 2 puts its nodes at the Gaussian's scale and lost
      1e-4 on erf' at variance 8 with 64 nodes, where phi' is much narrower than the spread of u.
      At the defaults relu and erf match their closed forms, and tanh, gelu, sigma_gelu adaptive 1-D
      quadrature at rho = +-1, to ~1e-11 for variances 0.05-20.
    Pairs are processed in chunks of at most ``max_elements`` integrand evaluations.
    """
    if method not in ("polar", "hermite"):
        raise ValueError(f"quadrature method must be 'polar' or 'hermite', got {method!r}")
    if order < 1 or radial_order < 1:
        raise ValueError(f"quadrature orders must be >= 1, got order={order}, radial_order={radial_order}")
    a, b, c = np.broadcast_arrays(*(np.asarray(v, float) for v in (a, b, c)))
    shape = a.shape
    a, b, c = a.ravel(), b.ravel(), c.ravel()
    _, rho = _correlation(a, b, c)
    s = np.sqrt(np.maximum(1.0 - rho * rho, 0.0))
    sa, sb = np.sqrt(np.maximum(a, 0.0)), np.sqrt(np.maximum(b, 0.0))
    E, D = np.empty(a.size), np.empty(a.size)

    if method == "hermite":
        z, w = roots_hermitenorm(order)
        w = w / w.sum()
        z1, z2 = (t.ravel() for t in np.meshgrid(z, z, indexing="ij"))
        W = np.outer(w, w).ravel()
        step = max(1, max_elements // W.size)
        for lo in range(0, a.size, step):
            sl = slice(lo, lo + step)
            u = sa[sl, None] * z1
            v = sb[sl, None] * (rho[sl, None] * z1 + s[sl, None] * z2)
            E[sl] = (phi(u) * phi(v)) @ W
            D[sl] = (dphi(u) * dphi(v)) @ W
        return E.reshape(shape), D.reshape(shape)

    r, wr = _radial_rule(radial_order)
    fg, fw = _angular_rule(order)
    # breakpoints in [0, pi]: u = 0 at t = pi/2, v = 0 where rho cos t + s sin t = 0
    t_v = np.mod(np.arctan2(s, rho) + math.pi / 2, math.pi)
    br = np.sort(np.stack([np.zeros_like(t_v), np.full_like(t_v, math.pi / 2), t_v, np.full_like(t_v, math.pi)],
                          axis=1), axis=1)
    lo_, len_ = br[:, :-1, None], np.diff(br, axis=1)[..., None]     # [P, 3, 1] segments (some may be empty)
    t = (lo_ + fg * len_).reshape(a.size, -1)                         # [P, 3 * 12 * order]
    wt = (fw * len_).reshape(a.size, -1)
    per_pair = t.shape[1] * r.size * 2
    step = max(1, max_elements // per_pair)
    for lo in range(0, a.size, step):
        sl = slice(lo, lo + step)
        A = sa[sl, None] * np.cos(t[sl])                              # [p, T]
        B = sb[sl, None] * (rho[sl, None] * np.cos(t[sl]) + s[sl, None] * np.sin(t[sl]))
        U, V = r[:, None, None] * A, r[:, None, None] * B             # [K, p, T]
        e = phi(U) * phi(V) + phi(-U) * phi(-V)
        d = dphi(U) * dphi(V) + dphi(-U) * dphi(-V)
        E[sl] = np.einsum("k,kpt,pt->p", wr, e, wt[sl]) / (2 * math.pi)
        D[sl] = np.einsum("k,kpt,pt->p", wr, d, wt[sl]) / (2 * math.pi)
    return E.reshape(shape), D.reshape(shape)


def get_dual(act: str | tuple[Elementwise, Elementwise], method: str = "auto", *, sigma: float = 0.1,
             **quadrature) -> Dual:
    """The dual (a, b, c) -> (E_phi, E_phi') of an activation name or a numpy pair (phi, phi').

    method: "auto" (closed form for relu / erf / linear, else "polar" quadrature), "closed",
    "polar" or "hermite" (see ``dual_quadrature``; keywords order, radial_order go there).
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {METHODS}")
    if isinstance(act, str):
        if method in ("auto", "closed") and act in _CLOSED:
            return _CLOSED[act]
        if method == "closed":
            raise ValueError(f"no closed form for activation {act!r}; closed forms: {CLOSED_FORMS}")
        phi, dphi = activation(act, sigma)
    else:
        if method == "closed":
            raise ValueError("a custom (phi, phi') pair has no closed form; use method 'polar' or 'hermite'")
        phi, dphi = act
    qmethod = "polar" if method == "auto" else method

    def dual(a, b, c):
        return dual_quadrature(phi, dphi, a, b, c, method=qmethod, **quadrature)

    return dual


def apply_dual(dual: Dual, S: Array) -> tuple[Array, Array]:
    """(E_phi[S], E_phi'[S]), [N, N] each: the dual at every pair (S_ii, S_jj, S_ij) of a symmetric kernel
    S [N, N] (evaluated on the upper triangle and mirrored, so the results are exactly symmetric)."""
    d = np.diag(S)
    i, j = np.triu_indices(S.shape[0])
    e, ed = dual(d[i], d[j], S[i, j])
    E, Ed = np.empty_like(S), np.empty_like(S)
    E[i, j], E[j, i] = e, e
    Ed[i, j], Ed[j, i] = ed, ed
    return E, Ed


# ---------------------------------------------------------------- recursions
@dataclass(frozen=True)
class Coefficients:
    """Per-layer coefficients of the recursions (length L + 1: layers 1..L hidden, L + 1 output).

    See the module docstring: weight_var, weight_lr, bias_var, bias_lr.
    """

    weight_var: tuple[float, ...]
    weight_lr: tuple[float, ...]
    bias_var: tuple[float, ...]
    bias_lr: tuple[float, ...]

    @property
    def depth(self) -> int:
        return len(self.weight_var) - 1

    @classmethod
    def broadcast(cls, depth: int, weight_var=1.0, weight_lr=None, bias_var=0.0, bias_lr=None) -> "Coefficients":
        """Scalars or length-(depth + 1) sequences; weight_lr defaults to weight_var and bias_lr to
        bias_var (neural-tangents' NTK parametrization)."""
        if int(depth) != depth or depth < 1:
            raise ValueError(f"depth (number of hidden layers) must be an integer >= 1, got {depth}")

        def seq(name, v):
            out = tuple(float(x) for x in (v if isinstance(v, Sequence) else [v] * (depth + 1)))
            if len(out) != depth + 1:
                raise ValueError(f"{name} needs depth + 1 = {depth + 1} values, got {len(out)}")
            if any(not math.isfinite(x) or x < 0 for x in out):
                raise ValueError(f"{name} must be finite and >= 0, got {out}")
            return out

        wv, bv = seq("weight_var", weight_var), seq("bias_var", bias_var)
        return cls(wv, seq("weight_lr", wv if weight_lr is None else weight_lr), bv,
                   seq("bias_lr", bv if bias_lr is None else bias_lr))


@dataclass(frozen=True)
class Kernels:
    """The infinite-width kernels on X [N, d]: every matrix [N, N].

    nngp = Sigma^{L+1} and ntk = Theta^{L+1} (the output's); sigmas[l - 1] = Sigma^l and
    thetas[l - 1] = Theta^l for l = 1..L+1; features[l - 1] = E_phi[Sigma^l] for l = 1..L, the limit
    of the post-activation Gram phi(h^l) phi(h^l)^T / n of hidden layer l.
    """

    nngp: Array
    ntk: Array
    sigmas: tuple[Array, ...]
    thetas: tuple[Array, ...]
    features: tuple[Array, ...]


def kernels(X: Array, depth: int, activation: str | tuple[Elementwise, Elementwise] = "relu", *,
            coefficients: Coefficients | None = None, weight_var=1.0, weight_lr=None, bias_var=0.0,
            bias_lr=None, method: str = "auto", sigma: float = 0.1, **quadrature) -> Kernels:
    """NNGP and NTK recursions (module docstring) of a depth-L MLP on inputs X [N, d] -> Kernels ([N, N] each).

    coefficients: a Coefficients (e.g. ``mlp_coefficients(param, depth, bias)``); otherwise built
    from weight_var, weight_lr, bias_var, bias_lr (scalars or per-layer sequences of length L + 1).
    method and quadrature keywords: see ``get_dual``; sigma: sigma_gelu's sigma.
    """
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2 or X.shape[0] < 1 or X.shape[1] < 1:
        raise ValueError(f"X must be a non-empty [N, d] array, got shape {X.shape}")
    co = coefficients or Coefficients.broadcast(depth, weight_var, weight_lr, bias_var, bias_lr)
    if co.depth != depth:
        raise ValueError(f"coefficients are for depth {co.depth}, asked for depth {depth}")
    dual = get_dual(activation, method, sigma=sigma, **quadrature)
    G = X @ X.T / X.shape[1]
    S = co.weight_var[0] * G + co.bias_var[0]
    T = co.weight_lr[0] * G + co.bias_lr[0]
    sigmas, thetas, feats = [S], [T], []
    for l in range(1, depth + 1):
        E, Ed = apply_dual(dual, S)
        S, T = (co.weight_var[l] * E + co.bias_var[l],
                co.weight_lr[l] * E + co.bias_lr[l] + co.weight_var[l] * Ed * T)
        feats.append(E)
        sigmas.append(S)
        thetas.append(T)
    sym = [(M + M.T) / 2 for M in (*sigmas, *thetas, *feats)]
    k = depth + 1
    return Kernels(nngp=sym[k - 1], ntk=sym[2 * k - 1], sigmas=tuple(sym[:k]), thetas=tuple(sym[k:2 * k]),
                   features=tuple(sym[2 * k:]))


def nngp(X: Array, depth: int, activation="relu", **kw) -> Array:
    """Sigma^{L+1}(X, X) [N, N]: the output's covariance over inits as n -> infinity (see ``kernels``)."""
    return kernels(X, depth, activation, **kw).nngp


def ntk(X: Array, depth: int, activation="relu", **kw) -> Array:
    """Theta^{L+1}(X, X) [N, N]: the limit of the eNTK sum_theta <df/dtheta(x), df/dtheta(x')> (see ``kernels``)."""
    return kernels(X, depth, activation, **kw).ntk


# ---------------------------------------------------------------- the models' parametrizations
def _scale(r, n0: float) -> tuple[float, float]:
    """(multiplier, init std) of a role with the n^-a, n^-b factors taken out (they cancel in the limit)."""
    return r.alpha * n0 ** float(r.a), r.sigma * n0 ** float(r.b)


def ntk_scale_exponent(param: Parametrization, depth: int) -> Fraction:
    """e such that the unit-learning-rate eNTK of a depth-L MLP under ``param`` grows like n^e.

    Only for parametrizations whose forward pass has a width-independent limit (effective weights
    of variance ~ 1 / fan_in: a + b = 0 for the input role, 1/2 for hidden and output), so that
    the gradients wrt the effective weights W = n^-a w have a limit. Then grad_w = n^-a grad_W,
    and summing over the n x n (hidden) or n (output, input) entries gives per role

        input: n^(-2 a_in),   hidden: n^(1 - 2 a_hid) (only when L >= 2),   output: n^(1 - 2 a_out),

    the kernel growing like the largest: NTK 0 (a finite limit), SP 1 (grows like n).
    """
    if param.input.a + param.input.b != 0 or param.output.a + param.output.b != Fraction(1, 2) or (
            depth >= 2 and param.hidden.a + param.hidden.b != Fraction(1, 2)):
        raise ValueError(f"parametrization {param.name!r} has no width-independent forward limit "
                         "(needs a+b = 0 input, 1/2 hidden and output); its eNTK scale is not derived here")
    exps = [-2 * param.input.a, 1 - 2 * param.output.a]
    if depth >= 2:
        exps.append(1 - 2 * param.hidden.a)
    return max(exps)


def mlp_coefficients(param: Parametrization, depth: int, bias: bool, *, base_width: int = 1) -> Coefficients:
    """The Coefficients of ``build("mlp", n, param, depth=L, bias=bias)`` with unit learning rates on every
    raw tensor (the engine's default eNTK), whose n -> infinity limit the recursions give.

    models/layers.py: the input layer uses m_1 = alpha_in n^-a_in / sqrt(d), w ~ N(0, sigma_in^2 n^-2b_in);
    hidden and output layers m = alpha n^-a, w ~ N(0, sigma^2 n^-2b). A finite limit needs
    ntk_scale_exponent == 0 with every role at its edge: a_in = b_in = 0 and a = 1/2, b = 0 for hidden
    and output (the NTK parametrization); otherwise ValueError. Then weight_var = (alpha sigma)^2 and
    weight_lr = alpha^2 per layer (base width n0 folded into alpha, sigma). Biases: hidden-layer
    biases use the input role's multiplier beta = alpha_in, the output bias beta = 1, and all start
    at ZERO: bias_var = 0, bias_lr = beta^2 when ``bias`` (else 0).
    """
    roles = [param.input] + [param.hidden] * (depth - 1) + [param.output]
    edge = (param.input.a == 0 and param.input.b == 0 and param.output.a == Fraction(1, 2)
            and param.output.b == 0 and (depth < 2 or (param.hidden.a == Fraction(1, 2) and param.hidden.b == 0)))
    if not edge:
        raise ValueError(f"parametrization {param.name!r} has no finite-width-independent unit-rate NTK limit for "
                         "every layer (needs a = b = 0 input, a = 1/2, b = 0 hidden and output)")
    n0 = float(base_width)
    ms = [_scale(r, n0) for r in roles]
    beta_hidden = param.input.alpha * n0 ** float(param.input.a)
    betas = [beta_hidden] * depth + [1.0]
    return Coefficients(weight_var=tuple((m * s) ** 2 for m, s in ms), weight_lr=tuple(m * m for m, _ in ms),
                        bias_var=(0.0,) * (depth + 1),
                        bias_lr=tuple(b * b if bias else 0.0 for b in betas))


def mlp_kernels(X: Array, param: Parametrization, depth: int, activation: str = "relu", *, bias: bool = False,
                base_width: int = 1, method: str = "auto", sigma: float = 0.1, **quadrature) -> Kernels:
    """``kernels`` with the coefficients of the project's MLP under ``param`` (see ``mlp_coefficients``)."""
    co = mlp_coefficients(param, depth, bias, base_width=base_width)
    return kernels(X, depth, activation, coefficients=co, method=method, sigma=sigma, **quadrature)
