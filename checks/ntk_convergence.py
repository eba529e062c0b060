"""ntk_convergence: the empirical NTK at initialization tends to the analytic infinite-width NTK.

Claim (Jacot et al. 2018, Prop. 1 and Thm 1; Lee et al. 2019; Arora et al. 2019): for an
L-hidden-layer MLP in NTK parametrization, at initialization and as the width n -> infinity,

    eNTK_n(x, x') = sum_theta <df/dtheta(x), df/dtheta(x')>  ->  Theta^{L+1}(x, x')      (Jacot Thm 1)
    phi(h^L(x)) . phi(h^L(x')) / n                            ->  Sigma^{L+1}(x, x')      (Jacot Prop. 1)

with Sigma, Theta the layer-by-layer recursions of ntkcheck.theory.ntk_analytic (ReLU by the
arc-cosine kernels, erf in closed form, other activations by quadrature). Both sides are averages
over the n neurons of each layer, so by the CLT the seed-to-seed deviation is Gaussian with
standard deviation ~ n^-1/2, while the mean's finite-width correction is O(1/n) (Dyer & Gur-Ari
2019; Hanin & Nica 2020). Measured on a fixed, width-independent set X of N inputs on the sphere
of radius sqrt(d_in), per (variant, width, seed):

    e_NTK(n)  = ||eNTK_n(X, X) - Theta^{L+1}(X, X)||_F / ||Theta^{L+1}(X, X)||_F,
    e_NNGP(n) = ||G_n - Sigma^{L+1}(X, X)||_F / ||Sigma^{L+1}(X, X)||_F,

eNTK_n from the kernel engine with unit learning rates on the raw tensors, and G_n =
weight_var_{L+1} phi(h^L) phi(h^L)^T / n + bias_var_{L+1} (= the Gram of the last hidden layer's
post-activations over n for the NTK preset, whose biases start at zero). G_n is the covariance of
f(X) over the readout's init given the hidden layers, so it is the NNGP without the readout's
sampling noise; the outputs' covariance over S seeds would carry an S^-1/2 Monte-Carlo error that
does not fall with n and would hide the slope unless S >> n.

Predicted: e_NTK and e_NNGP fall like n^-1/2 (slope -1/2). And the analytic kernel is the
eNTK's mean, not just its limit up to a constant: at the largest width the seed average of the
normalized deviations D_s = (K_s - K_inf) / ||K_inf|| must be as small as zero-mean noise allows:
in units of its standard error,

    gap = ||mean_s D_s||_F / se,   se^2 = sum_s ||D_s - mean_s D_s||_F^2 / (S (S - 1)),

is ~1 (gap^2 is about F(k, k(S-1))-distributed for k effective fluctuation directions), and
grows like sqrt(S) delta / e when K_inf is off by a relative delta (e: one seed's error).

Control: the standard parametrization (SP preset) with unit learning rates has no finite limit:
its gradients wrt the raw hidden and output weights are n^1/2 larger, so ||eNTK_SP||_F grows like
n^e with e = theory.ntk_analytic.ntk_scale_exponent(SP, L) = 1 (the NTK preset's exponent is 0).

Faults this check catches (tried by patching, 10 seeds): the biases' init-at-zero treated as
neural-tangents' sigma_b (bias_var = bias_lr: the bias variants' slopes -0.04..0.00, gaps 17-180);
biases left out of the NTK (bias_lr = 0: slope ~0, gap 140-190); a wrong constant in a dual
activation (relu's E_phi' times 1.8: slope 0.00, gap 65); any other analytic or model error
larger than the noise (the error plateaus). Presets whose exponents leave the NTK edge, or an SP
whose exponents drift to it, are refused by Config (no analytic limit / no control effect).
Not caught by design: an analytic error below about 3 / sqrt(S) of one seed's error at the
largest width (quick mode: ~4% relu, ~2% erf, ~1% tanh; full mode about half that).
"""
from __future__ import annotations

import dataclasses
import math
import re
import zlib
from dataclasses import dataclass

import numpy as np
import torch

from ntkcheck.checks._common import DTYPE, limit_threads, mlp_params, network_bytes, series, sphere_inputs
from ntkcheck.checks.config import CheckConfig, axis, setting
from ntkcheck.checks.faults import Fault
from ntkcheck.checks.fit import fit_rows
from ntkcheck.checks.plots import loglog_panels
from ntkcheck.checks.registry import CheckSpec
from ntkcheck.checks.sweep import grid, sweep
from ntkcheck.models import build
from ntkcheck.models.activations import ACTIVATIONS
from ntkcheck.models.kernels import empirical_kernel
from ntkcheck.result import Claim, claim
from ntkcheck.seeding import derive, generator
from ntkcheck.theory import ntk_analytic as A
from ntkcheck.theory import parametrization as P

_VARIANT = re.compile(r"^([a-z_]+?)_d(\d+)(_bias)?$")


def parse_variant(name: str) -> tuple[str, int, bool]:
    """'relu_d3' -> ('relu', 3, False); 'erf_d3_bias' -> ('erf', 3, True): activation, depth L, biases."""
    m = _VARIANT.match(name)
    if not m or m.group(1) not in ACTIVATIONS or int(m.group(2)) < 1:
        raise ValueError(f"variant {name!r} is not ACTIVATION_dDEPTH[_bias] with an activation of {ACTIVATIONS} "
                         "and depth >= 1 (e.g. 'relu_d3', 'erf_d3_bias')")
    return m.group(1), int(m.group(2)), m.group(3) is not None


@dataclass(frozen=True)
class Config(CheckConfig):
    widths: tuple[int, ...] = axis("width", (64, 128, 256, 512, 1024, 2048, 4096))
    seeds: int = axis("seeds", 32)
    #: the MLPs compared with their analytic kernels, ACTIVATION_dDEPTH[_bias]: ReLU (arc-cosine
    #: closed form), erf (Williams' closed form) and tanh (quadrature), with and without biases
    variants: tuple[str, ...] = ("relu_d3", "erf_d3_bias", "tanh_d2_bias")
    #: the control network, run under control_param
    control: str = "relu_d3"
    param: str = setting("NTK", choices=tuple(P.PRESETS))
    control_param: str = setting("SP", choices=tuple(P.PRESETS))
    n_inputs: int = 16        # N: the fixed input set X (width- and seed-independent)
    d_in: int = 8
    input_seed: int = setting(0, ge=0)   # X = sphere_inputs(N, d_in, generator(input_seed))
    #: dual activations: "auto" (closed forms for relu / erf / linear, else polar quadrature)
    method: str = setting("auto", choices=A.METHODS)
    #: slope == -1/2: at 20 seeds over 64..2048 the bootstrap CI half-width is 0.02-0.06 and the point
    #: estimates over nine seed offsets lay in [-0.57, -0.44]; 0.15 covers that and still excludes 0
    #: (a wrong limit: the error plateaus, -0.04..0.00 for the faults in the module docstring) and -1
    #: (an O(1/n)-only deviation)
    slope_tol: float = 0.15
    #: gap <= 1 + gap_tol = 3: under zero-mean noise gap^2 ~ F(k, k(S-1)) with k the effective number of
    #: fluctuation directions (estimated 2-11 here), so P(gap > 3) < 0.1% at S = 20; over nine seed
    #: offsets the 54 gaps lay in [0.30, 2.16]. A kernel off by a relative delta gives gap ~ sqrt(S)
    #: delta / e (e one seed's error at n_max, 0.014-0.06 here); the plateau faults reach 17-190
    gap_tol: float = 2.0
    #: control slope == ntk_scale_exponent(SP) = 1: measured 0.980-1.016 over nine seed offsets (CI
    #: +-0.03); the input layer's O(1) share of the SP kernel bends the smallest widths a little
    control_tol: float = 0.1
    #: torch intra-op threads while this check runs (see signgd_kernel.Config.threads)
    threads: int = setting(1, ge=0)

    def __post_init__(self):
        super().__post_init__()
        if len(self.widths) < 2 or any(w < 2 for w in self.widths):
            raise ValueError(f"widths needs at least two widths >= 2, got {self.widths}")
        if self.seeds < 2:
            raise ValueError(f"ntk_convergence needs seeds >= 2 for a bootstrap CI, got {self.seeds}")
        if not self.variants:
            raise ValueError("variants must name at least one network, e.g. ('relu_d3',)")
        for v in (*self.variants, self.control):
            parse_variant(v)
        if len(set(self.variants)) != len(self.variants):
            raise ValueError(f"variants must be distinct, got {self.variants}")
        for name in ("param", "control_param"):
            try:
                P.get(getattr(self, name))
            except ValueError as e:
                raise ValueError(f"{name}: {e}") from None
        for v in self.variants:
            _, depth, bias = parse_variant(v)
            try:
                A.mlp_coefficients(P.get(self.param), depth, bias)
            except ValueError as e:
                raise ValueError(f"param={self.param!r} has no analytic NTK limit: {e}") from None
        _, depth, _ = parse_variant(self.control)
        try:
            expo = A.ntk_scale_exponent(P.get(self.control_param), depth)
        except ValueError as e:
            raise ValueError(f"control_param={self.control_param!r}: {e}") from None
        if expo <= 0:
            # a control must lack the effect; this also refuses an SP preset whose exponents drifted
            # to the NTK edge, which a theory-derived prediction alone would follow silently
            raise ValueError(f"control_param={self.control_param!r} has a finite unit-rate NTK limit "
                             f"(kernel exponent {expo}); the control needs one whose eNTK grows with n")
        if self.n_inputs < 2 or self.d_in < 1:
            raise ValueError(f"need n_inputs >= 2 and d_in >= 1, got n_inputs={self.n_inputs}, d_in={self.d_in}")
        if self.method not in A.METHODS:
            raise ValueError(f"method must be one of {A.METHODS}, got {self.method!r}")
        if self.method == "closed":
            bad = [v for v in self.variants if parse_variant(v)[0] not in A.CLOSED_FORMS]
            if bad:
                raise ValueError(f"method='closed' but variants {bad} have no closed form ({A.CLOSED_FORMS})")
        for name in ("slope_tol", "gap_tol", "control_tol"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")

    @classmethod
    def quick(cls) -> "Config":
        return cls(widths=(64, 128, 256, 512, 1024, 2048), seeds=20)

    @property
    def control_name(self) -> str:
        return f"control_{self.control_param.lower()}_{self.control}"


def inputs(config: Config) -> torch.Tensor:
    """The fixed input set X [N, d_in] on the sphere of radius sqrt(d_in)."""
    return sphere_inputs(config.n_inputs, config.d_in, generator(config.input_seed))


def analytic(config: Config, variant: str) -> A.Kernels:
    """The infinite-width kernels of a variant on X (computed once per run by ``run``; never cached across
    runs, so a fault injected into theory/ by the selftest takes effect)."""
    act, depth, bias = parse_variant(variant)
    return A.mlp_kernels(inputs(config).numpy(), P.get(config.param), depth, act, bias=bias, method=config.method)


def _network(config: Config, pname: str, variant: str, width: int, seed: int):
    act, depth, bias = parse_variant(variant)
    # independent networks per variant: the seed stream is keyed by the variant's name
    s = derive(seed, zlib.crc32(f"{pname}:{variant}".encode()))
    return build("mlp", width, pname, seed=s, dtype=DTYPE, d_in=config.d_in, d_out=1, depth=depth, activation=act,
                 bias=bias)


def compute_point(config: Config, variant: str, width: int, seed: int, kin: A.Kernels | None = None) -> dict:
    """One network at init: e_NTK, e_NNGP, ||eNTK||_F and the normalized deviations' upper triangles.

    ``variant`` is one of config.variants (under config.param) or config.control_name (the control
    network under config.control_param: only ||eNTK||_F is measured).
    """
    x = inputs(config)
    if variant == config.control_name:
        model = _network(config, config.control_param, config.control, width, seed)
        K = empirical_kernel(model.apply, model.params(), x)[:, 0, :, 0]
        return {"ntk_norm": float(K.norm())}
    if variant not in config.variants:
        raise ValueError(f"unknown variant {variant!r}; expected one of {config.variants} or {config.control_name!r}")
    kin = analytic(config, variant) if kin is None else kin
    co = A.mlp_coefficients(P.get(config.param), parse_variant(variant)[1], parse_variant(variant)[2])
    model = _network(config, config.param, variant, width, seed)
    params = model.params()
    K = empirical_kernel(model.apply, params, x)[:, 0, :, 0].numpy()
    with torch.no_grad():
        h_last = model.apply(params, x, all_layers=True)[-2]      # h^L, the last hidden preactivations
        feats = model.phi(h_last)
        G = (co.weight_var[-1] * (feats @ feats.T) / width + co.bias_var[-1]).numpy()
    iu = np.triu_indices(K.shape[0])
    out = {"ntk_norm": float(np.linalg.norm(K))}
    for key, emp, ref in (("ntk", K, kin.ntk), ("nngp", G, kin.nngp)):
        D = (emp - ref) / np.linalg.norm(ref)
        out[f"{key}_err"] = float(np.linalg.norm(D))
        # the upper triangle of D, off-diagonal entries weighted sqrt(2) so that ||vec||_2 = ||D||_F
        w = np.where(iu[0] == iu[1], 1.0, math.sqrt(2.0))
        out[f"{key}_dev"] = [float(v) for v in D[iu] * w]
    return out


def mean_gap(devs: list[list[float]]) -> float:
    """||mean_s D_s|| / se with se^2 = sum_s ||D_s - mean||^2 / (S (S - 1)), the standard error of the mean.

    ~1 when the D_s [S, m] are zero-mean noise; unbounded when they share a bias (the raw second
    moment in place of se would cap it at sqrt(S), and a small S could then never fail).
    """
    D = np.asarray(devs, dtype=float)
    S = D.shape[0]
    if S < 2:
        return float("nan")
    mean = D.mean(axis=0)
    se = math.sqrt(((D - mean) ** 2).sum() / (S * (S - 1)))
    return float(np.linalg.norm(mean) / se) if se > 0 else float("inf")


def _points(config: Config):
    """Every (variant, width, seed), cheapest widths first so an interrupted sweep covers every variant."""
    names = [*config.variants, config.control_name]
    pts = grid(variant=names, width=config.widths, seed=config.seed_range())
    return sorted(pts, key=lambda p: (p["width"], p["seed"], names.index(p["variant"])))


def run(config: Config, store) -> list[Claim]:
    with limit_threads(config.threads):
        return _run(config, store)


def _run(config: Config, store) -> list[Claim]:
    kins = {v: analytic(config, v) for v in config.variants}
    rows = sweep(store, _points(config), lambda pt: compute_point(config, pt["variant"], pt["width"], pt["seed"],
                                                                  kins.get(pt["variant"])), desc="ntk_convergence")
    store.write_measurements([{k: v for k, v in r.items() if not k.endswith("_dev")} for r in rows])
    nmax = max(config.widths)
    claims, fits, gaps = [], {}, {}
    for v in config.variants:
        for key, what, src in (("ntk", "eNTK vs analytic NTK", "Jacot et al. 2018 Thm 1"),
                               ("nngp", "last-layer feature Gram vs analytic NNGP", "Jacot et al. 2018 Prop. 1")):
            fit = fit_rows(rows, "width", f"{key}_err", {"variant": v})
            fits[f"{v}:{key}_err"] = fit
            claims.append(claim(f"{v}.{key}.slope", f"{v}: slope of the relative error, {what}", predicted=-0.5,
                                measured=fit.slope, relation="==", tolerance=config.slope_tol, ci=fit.ci,
                                source=f"{src}; CLT over n neurons"))
            devs = [r[f"{key}_dev"] for r in rows if r["variant"] == v and r["width"] == nmax]
            gaps[f"{v}:{key}"] = gap = mean_gap(devs)
            claims.append(claim(f"{v}.{key}.mean_gap", f"{v}: seed-mean deviation from the analytic {key.upper()} at "
                                f"n={nmax}, in units of its noise (the analytic kernel is the mean)", predicted=1.0,
                                measured=gap, relation="<=", tolerance=config.gap_tol, source=src))
        fits[f"{v}:ntk_norm"] = fit_rows(rows, "width", "ntk_norm", {"variant": v})
    _, depth, _ = parse_variant(config.control)
    expo = float(A.ntk_scale_exponent(P.get(config.control_param), depth))
    fit = fit_rows(rows, "width", "ntk_norm", {"variant": config.control_name})
    fits[f"{config.control_name}:ntk_norm"] = fit
    claims.append(claim(f"control.{config.control_param.lower()}.ntk_norm.slope",
                        f"control {config.control_param} ({config.control}), unit learning rates: slope of "
                        "||eNTK||_F (no finite limit)", predicted=expo, measured=fit.slope, relation="==",
                        tolerance=config.control_tol, ci=fit.ci, control=True,
                        source="Jacot et al. 2018 (NTK vs standard parametrization); "
                               "theory.ntk_analytic.ntk_scale_exponent"))
    store.write_json("fits.json", {"fits": {k: f.to_json() for k, f in fits.items()}, "mean_gap": gaps})
    _plot(config, rows, store)
    return claims


def _plot(config: Config, rows, store) -> None:
    ws = sorted(set(config.widths))

    def ref(key):
        # an n^-1/2 line through the seed-mean error of the smallest width
        ys = [r[key] for r in rows if r["width"] == ws[0] and r["variant"] in config.variants and key in r]
        c = float(np.exp(np.mean(np.log(ys)))) * math.sqrt(ws[0])
        return ("n^-1/2", ws, [c / math.sqrt(w) for w in ws])

    panels = [
        {"title": "||eNTK - NTK_inf||_F / ||NTK_inf||_F", "ylabel": "relative error",
         "series": [(v, *series(rows, "ntk_err", variant=v)) for v in config.variants] + [ref("ntk_err")]},
        {"title": "||G_n - NNGP_inf||_F / ||NNGP_inf||_F (last-layer Gram)", "ylabel": "relative error",
         "series": [(v, *series(rows, "nngp_err", variant=v)) for v in config.variants] + [ref("nngp_err")]},
        {"title": f"||eNTK||_F: {config.param} (flat) vs {config.control_param} (~n)", "ylabel": "Frobenius norm",
         "series": [(v, *series(rows, "ntk_norm", variant=v)) for v in (*config.variants, config.control_name)]},
    ]
    loglog_panels(store.path("ntk_convergence.png"), panels,
                  suptitle="Jacot et al. 2018: eNTK and NNGP at init converge to the analytic kernels like n^-1/2")


def _bias_var_as_lr(original):
    """neural-tangents' convention for a bias that starts at zero: it adds sigma_b^2 to the NNGP too."""
    def coefficients(param, depth, bias, **kw):
        co = original(param, depth, bias, **kw)
        return dataclasses.replace(co, bias_var=co.bias_lr)
    return coefficients


def _no_bias_gradient(original):
    def coefficients(param, depth, bias, **kw):
        co = original(param, depth, bias, **kw)
        return dataclasses.replace(co, bias_lr=tuple(0.0 for _ in co.bias_lr))
    return coefficients


def _relu_derivative_times(factor: float):
    def patch(table):
        relu = table["relu"]

        def dual(a, b, c):
            e_phi, e_dphi = relu(a, b, c)
            return e_phi, factor * e_dphi
        return dict(table, relu=dual)
    return patch


def _sp_networks(original):
    """The networks built in SP while the theory side still says NTK (a parametrization swapped by mistake)."""
    def build_sp(arch, width, param, **kw):
        return original(arch, width, "SP" if param == "NTK" else param, **kw)
    return build_sp


FAULTS = (
    Fault("nngp_gets_bias_variance", "zero-initialized biases given neural-tangents' sigma_b^2 in the NNGP as well",
          "ntkcheck.theory.ntk_analytic:mlp_coefficients", _bias_var_as_lr),
    Fault("ntk_without_bias_gradient", "the bias tensors' gradients left out of the analytic NTK",
          "ntkcheck.theory.ntk_analytic:mlp_coefficients", _no_bias_gradient),
    Fault("relu_derivative_constant", "a wrong constant (x1.8) in ReLU's derivative kernel E[phi'(u) phi'(v)]",
          "ntkcheck.theory.ntk_analytic:_CLOSED", _relu_derivative_times(1.8)),
    Fault("networks_built_in_sp", "the measured networks built in the standard parametrization, the theory in NTK",
          "ntkcheck.checks.ntk_convergence:build", _sp_networks),
)


def memory_bytes(config: Config) -> int:
    """Peak bytes of the largest point: the deepest, widest MLP and its per-example kernel factors."""
    depth = max(parse_variant(v)[1] for v in (*config.variants, config.control))
    return network_bytes(mlp_params(max(config.widths), config.d_in, depth))


SPEC = CheckSpec(name="ntk_convergence", order=15, config_cls=Config, run=run, version=1, memory=memory_bytes,
                 faults=FAULTS,
                 summary="Jacot et al. 2018 Thm 1: eNTK and NNGP at init -> analytic infinite-width kernels like "
                         "n^-1/2; SP control's eNTK grows like n")
