"""linearization: fine-tuning from a pretrained init is linear in the parameters up to O(n^-1/2) ([ES] Lemma 1, Thm 5).

Claim ([ES] Lemma 1 eq. 14, eq. 17-18, Thm 5 eq. 98-99; [KV] Def. 3.2, Table 1,
Table 6): pretrain a network from random init on a source task, then fine-tune
it by full-batch gradient descent on a related target task. In the kernel
regime (NTK parametrization, or standard parametrization with lr eta_0/n) the
fine-tuned network is its first-order Taylor expansion around the pretrained
parameters,

    f_FT(x) = f_PT(x) + <grad f_PT(x), theta_FT - theta_PT> + e,   ||e|| = O(n^-1/2)   ([ES] eq. 14, 18)
    sup_t ||K_PT - K_t||_F / ||K_PT||_F = O(n^-1/2)                                 ([ES] eq. 17, 99)
    sum_t ||theta_t - theta_{t-1}|| / ||theta_PT|| -> 0                             ([ES] eq. 98)

The papers prove upper bounds, so the first claim for each quantity is
"slope <= -1/2 within tolerance". Finite-width theory (Dyer & Gur-Ari 2019;
Huang & Yau 2020) predicts the training-induced change is O(1/n): the sharp
exponent -1 is a second, separate claim (for the linearization error, on
e_lin / ||f_FT - f_PT||: the FT change is Theta(1), so the exponent is the
same, and the ratio scatters less from init to init). The kernel drift here is the change of
one network's eNTK along its own fine-tuning trajectory (sharp -1), not the
seed-to-seed fluctuation of the eNTK at init (-1/2, the mean distance between
independent inits over init_pairs pairs, claimed separately): different quantities.

Also measured: the [KV] Table 6 distance (average element-wise relative
distance of K_PT and K_FT on held-out inputs), relative parameter movement, and
the [KV] Table 1 statistic: the fraction of FT's test-loss improvement that the
linearized model recovers, (L_PT - L_lin) / (L_PT - L_FT) (Table 1's threshold
for "Linearization holds" is 0.5); its gap to 1 should shrink with width.

Models: the MLP (2 hidden tanh layers; smooth activation, as [ES] Assumption 4.6
needs) and the transformer block of [ES] Sec. 3.2 (multi-head attention with
1/d logit scaling, LayerNorm, residual), each in NTK parametrization and in SP
with lr eta_0/n. Control: muP trained from scratch (feature learning, r = 0):
e_lin and the drift do not decay.
"""
from __future__ import annotations

from dataclasses import dataclass

from ntkcheck.checks._common import (DTYPE, Teacher, finetune_kernel_behavior, limit_threads, mlp_params,
                                     network_bytes, series, sphere_inputs, transformer_params)
from ntkcheck.checks.config import CheckConfig, axis, setting
from ntkcheck.checks.faults import Fault
from ntkcheck.checks.fit import fit_rows, mean_ci, slope_claim
from ntkcheck.checks.plots import loglog_panels
from ntkcheck.checks.registry import CheckSpec
from ntkcheck.checks.sweep import grid, sweep
from ntkcheck.models import build, optim, train
from ntkcheck.models.activations import ACTIVATIONS
from ntkcheck.models.kernels import empirical_kernel, kernel_distance
from ntkcheck.result import Claim, claim
from ntkcheck.seeding import generator

#: variant -> (architecture, parametrization, pretrain?, role)
VARIANTS = {
    "mlp_ntk": ("mlp", "NTK", True, "claim"),
    "mlp_sp_lr": ("mlp", "SP_LR", True, "claim"),
    "transformer_ntk": ("transformer", "NTK", True, "claim"),
    "transformer_sp_lr": ("transformer", "SP_LR", True, "claim"),
    "mlp_mup_scratch": ("mlp", "MUP", False, "control"),
}
METRICS = ("e_lin", "e_lin_rel", "drift", "init_fluct", "table6", "movement", "lin_gap")


@dataclass(frozen=True)
class Config(CheckConfig):
    widths: tuple[int, ...] = axis("width", (64, 128, 256, 512, 1024, 2048, 4096))   # MLP widths
    attn_widths: tuple[int, ...] = axis("width", (32, 64, 128, 256, 512, 1024))       # transformer widths
    seeds: int = axis("seeds", 5)                                                      # MLP seeds
    #: transformer seeds: its linearization error scatters more from init to init (per-seed local slopes
    #: from +1.3 to -2.9 between neighbouring widths at n = 32..256), so it needs more seeds than the MLP
    attn_seeds: int = axis("seeds", 5)
    d_in: int = 8
    depth: int = 2
    activation: str = setting("tanh", choices=ACTIVATIONS)
    seq_len: int = 4
    n_heads: int = 2
    n_train: int = 32          # source and target training sets (full batch)
    n_test: int = 32           # held-out inputs for e_lin and the Table 1 losses
    n_kernel: int = 16         # held-out inputs where K_PT, K_t are compared
    pt_steps: int = setting(50, ge=0)
    ft_steps: int = 50
    checkpoints: int = 5       # kernel drift is the max over this many points of the FT trajectory
    #: init fluctuation averaged over this many pairs of independent inits per point: one pair's distance
    #: scatters by 15-30% (transformer, n = 32..512), which alone puts +-0.2 on a slope over two octaves
    init_pairs: int = setting(8, ge=1)
    #: target = source teacher + relatedness * independent teacher (a related, not identical, task)
    relatedness: float = 0.5
    #: GD rates: NTK eta (c_sgd = 0), SP eta_0 in eta_0 / n (the K_SP ~ n K_NTK scale makes them comparable)
    lr_ntk: float = setting(1.0, gt=0)
    lr_sp: float = setting(1.0, gt=0)
    #: the transformer's NTK has a larger scale (residual + attention paths): half the MLP rate keeps GD stable
    lr_attn_scale: float = setting(0.5, gt=0)
    #: muP base SGD rate (input eta n, hidden eta, output eta / n); 0.05 trains stably at every width
    lr_mup: float = setting(0.05, gt=0)
    #: bound claim "slope <= -1/2": a sharp -1 passes with room; 0.15 absorbs the CI half-width at 4-5 seeds
    bound_tol: float = 0.15
    #: sharp claim "slope == -1": finite-width corrections bend the fit by ~0.1-0.2 (quick MLP SP_LR e_lin
    #: -0.82 to -0.93 over seed bases at n = 128..1024; the transformer -1.06 to -1.25 at n = 32..128;
    #: full mode -0.88 to -0.96): 0.3 admits that bend and still excludes the bound's -1/2 by 0.2
    sharp_tol: float = 0.3
    #: init fluctuation ||K_0(seed) - K_0(seed')|| / ||K_0|| == n^-1/2 (CLT over n neurons); 0.15 for the CI
    fluct_tol: float = 0.15
    #: muP control "no decay": slope >= -0.25 (a kernel-regime decay here is ~-1)
    control_tol: float = 0.25
    #: [KV] Table 1 threshold: the linearized model recovers >= 50% of FT's improvement
    table1_threshold: float = 0.5
    threads: int = setting(1, ge=0)   # see signgd_kernel.Config.threads

    def __post_init__(self):
        super().__post_init__()
        for name in ("widths", "attn_widths"):
            v = getattr(self, name)
            if len(v) < 2 or any(w < 2 for w in v):
                raise ValueError(f"{name} needs at least two widths >= 2, got {v}")
        if min(self.seeds, self.attn_seeds) < 2:
            raise ValueError(f"linearization needs seeds >= 2 for a bootstrap CI, got seeds={self.seeds}, "
                             f"attn_seeds={self.attn_seeds}")
        if self.n_kernel > self.n_test or self.checkpoints < 1:
            raise ValueError("need n_kernel <= n_test and checkpoints >= 1")

    @classmethod
    def quick(cls) -> "Config":
        return cls(widths=(128, 256, 512, 1024), attn_widths=(32, 64, 128, 256), seeds=6, attn_seeds=12)


def _data(config: Config, seed: int, arch: str):
    """Width-independent tasks of one seed: source (x, y), related target (x, y), test inputs and targets."""
    g = generator(30_000 + seed)
    seq = config.seq_len if arch == "transformer" else None
    t1, t2 = Teacher.draw(config.d_in, g), Teacher.draw(config.d_in, g)

    def target(x):
        return t1(x) + config.relatedness * t2(x)

    xs = sphere_inputs(config.n_train, config.d_in, g, seq)
    xt = sphere_inputs(config.n_train, config.d_in, g, seq)
    xe = sphere_inputs(config.n_test, config.d_in, g, seq)
    return (xs, t1(xs)), (xt, target(xt)), (xe, target(xe))


def _build(config: Config, arch: str, pname: str, width: int, seed: int):
    common = dict(seed=seed, dtype=DTYPE, d_in=config.d_in, activation=config.activation)
    if arch == "mlp":
        return build("mlp", width, pname, depth=config.depth, **common)
    return build("transformer", width, pname, n_heads=config.n_heads, attn_logit=1.0, **common)


def _lrs(config: Config, model, pname: str, arch: str):
    base = {"NTK": config.lr_ntk, "SP_LR": config.lr_sp, "MUP": config.lr_mup}[pname]
    if arch == "transformer":
        base *= config.lr_attn_scale
    return model.learning_rates("sgd", base)


def compute_point(config: Config, variant: str, width: int, seed: int) -> dict:
    arch, pname, pretrain, _ = VARIANTS[variant]
    (xs, ys), (xt, yt), (xe, ye) = _data(config, seed, arch)
    model = _build(config, arch, pname, width, seed)
    f, p0 = model.apply, model.params()
    opt = optim.sgd(_lrs(config, model, pname, arch))
    p_pt = train(f, p0, opt, (xs, ys), config.pt_steps) if pretrain else p0
    out = finetune_kernel_behavior(f, p_pt, opt, xt, yt, xe, ye, xe[:config.n_kernel], config.ft_steps,
                                   config.checkpoints)
    out["init_fluct"] = init_fluctuation(config, arch, pname, width, seed, xe[:config.n_kernel])
    return out


def init_fluctuation(config: Config, arch: str, pname: str, width: int, seed: int, xk) -> float:
    """Mean over init_pairs of ||K_0(a) - K_0(b)||_F / ||K_0(a)||_F for independent inits a, b of this width.

    A different quantity from the drift: two independent inits' eNTKs differ by O(n^-1/2) (CLT over the
    n neurons, NTK4A-style). The pairs are consecutive members of a chain of init_pairs + 1 inits (seeds
    70_000 + 1000 seed + j), so each pair costs one more kernel.
    """
    def kernel(j):
        model = _build(config, arch, pname, width, 70_000 + 1000 * seed + j)
        return empirical_kernel(model.apply, model.params(), xk)

    prev, total = kernel(0), 0.0
    for j in range(1, config.init_pairs + 1):
        nxt = kernel(j)
        total += kernel_distance(prev, nxt, reduction="frobenius")
        prev = nxt
    return total / config.init_pairs


def _points(config: Config):
    """Every (variant, width, seed), cheapest widths first so an interrupted sweep covers every variant."""
    pts = []
    for v, (arch, *_ ) in VARIANTS.items():
        ws, n_seeds = (config.widths, config.seeds) if arch == "mlp" else (config.attn_widths, config.attn_seeds)
        pts += grid(variant=[v], width=ws, seed=config.seed_range(n_seeds))
    return sorted(pts, key=lambda p: (p["width"], p["seed"]))


def run(config: Config, store) -> list[Claim]:
    with limit_threads(config.threads):
        return _run(config, store)


def _run(config: Config, store) -> list[Claim]:
    rows = sweep(store, _points(config), lambda pt: compute_point(config, pt["variant"], pt["width"], pt["seed"]),
                 desc="linearization")
    store.write_measurements(rows)
    claims, fits = [], {}
    for v, (arch, pname, _, role) in VARIANTS.items():
        for key in METRICS:
            fits[f"{v}:{key}"] = fit_rows(rows, "width", key, {"variant": v})
        if role == "claim":
            for key, eq in (("e_lin", "[ES] Lemma 1 eq. 14"), ("drift", "[ES] eq. 17, 99")):
                claims.append(slope_claim(f"{v}.{key}.bound", f"{v}: slope of {key} (bound)", fits[f"{v}:{key}"],
                                          predicted=-0.5, relation="<=", tolerance=config.bound_tol, source=eq))
            # the sharp exponent of the linearization error is claimed on e_lin / ||f_FT - f_PT||: the FT
            # change is Theta(1) (its slope is 0 to +-0.02 here), so the exponent is e_lin's, and dividing
            # by it cancels part of the init-to-init scatter (transformer CI +-0.16 -> +-0.13 at 10 seeds)
            for key, what in (("e_lin_rel", "e_lin / ||f_FT - f_PT||"), ("drift", "drift")):
                claims.append(slope_claim(f"{v}.{key}.sharp", f"{v}: slope of {what} (sharp finite-width "
                                          "exponent)", fits[f"{v}:{key}"], predicted=-1.0, relation="==",
                                          tolerance=config.sharp_tol, source="Dyer & Gur-Ari 2019; Huang & Yau 2020"))
            claims.append(slope_claim(f"{v}.init_fluct.slope", f"{v}: slope of the eNTK's seed-to-seed fluctuation "
                                      "at init (not the drift)", fits[f"{v}:init_fluct"], predicted=-0.5,
                                      relation="==", tolerance=config.fluct_tol, source="CLT over n neurons (NTK4A)"))
            claims.append(slope_claim(f"{v}.movement.bound", f"{v}: slope of relative parameter movement",
                                      fits[f"{v}:movement"], predicted=-0.5, relation="<=",
                                      tolerance=config.bound_tol, source="[ES] eq. 98"))
            widths = config.widths if arch == "mlp" else config.attn_widths
            frac, frac_ci = mean_ci([r["lin_frac"] for r in rows if r["variant"] == v and r["width"] == max(widths)])
            claims.append(claim(f"{v}.table1", f"{v}: [KV] Table 1 fraction of FT gain recovered by f_lin at "
                                f"n={max(widths)}", predicted=config.table1_threshold, measured=frac, ci=frac_ci,
                                relation=">=", source="[KV] Table 1"))
        else:
            for key in ("e_lin", "drift"):
                claims.append(slope_claim(f"control.{v}.{key}.flat", f"control {v}: slope of {key} (feature learning: "
                                          "no decay)", fits[f"{v}:{key}"], predicted=0.0, relation=">=",
                                          tolerance=config.control_tol, control=True, source="[KV] Table 10"))
    store.write_json("fits.json", {k: f.to_json() for k, f in fits.items()})
    _plot(rows, store)
    return claims


def _plot(rows, store) -> None:
    titles = {"e_lin": "linearization error ||f_FT - f_lin|| (rms)",
              "e_lin_rel": "relative linearization error ||f_FT - f_lin|| / ||f_FT - f_PT||",
              "drift": "kernel drift sup_t ||K_PT-K_t||/||K_PT||",
              "table6": "[KV] Table 6 element-wise kernel distance", "movement": "relative parameter movement",
              "lin_gap": "|1 - Table 1 fraction recovered by f_lin|",
              "init_fluct": "eNTK seed-to-seed fluctuation at init (not drift)"}
    #: the predicted slope drawn beside each series: the sharp exponent where it is claimed, else the bound's
    predicted = {"e_lin": -1.0, "e_lin_rel": -1.0, "drift": -1.0, "init_fluct": -0.5, "movement": -1.0,
                 "table6": -1.0, "lin_gap": None}
    panels = []
    for arch in ("mlp", "transformer"):
        for k in METRICS:
            ser = []
            for v, (a, _, _, role) in VARIANTS.items():
                if a != arch:
                    continue
                slope = (0.0 if k in ("e_lin", "drift") else None) if role == "control" else predicted[k]
                ser.append((v, *series(rows, k, variant=v)) + ((slope,) if slope is not None else ()))
            panels.append({"title": f"{arch}: {titles[k]}", "series": ser, "ylabel": k})
    loglog_panels(store.path("linearization.png"), panels,
                  suptitle="[ES] Lemma 1 / Thm 5: kernel behavior of fine-tuning vs width (NTK, SP lr/n; muP control)")


def _linearize_sign_flipped(original):
    def linearize(f, params0):
        f_lin = original(f, params0)
        p0 = {k: v.detach().clone() for k, v in params0.items()}

        def flipped(params, x):
            base = f(p0, x)
            return base - (f_lin(params, x) - base)
        return flipped
    return linearize


def _mup_control_as_ntk(variants):
    return dict(variants, mlp_mup_scratch=("mlp", "NTK", False, "control"))


def _sp_lr_as_sp(presets):
    import dataclasses

    return dict(presets, SP_LR=dataclasses.replace(presets["SP"], name="SP_LR"))


def _kernel_distance_zero(original):
    return lambda K0, K1, **kw: 0.0


def _no_pretraining(original):
    return lambda f, params, optimizer, data, steps, **kw: dict(params)


FAULTS = (
    Fault("linearize_sign_flipped", "f_lin = f_PT - <grad f_PT, theta - theta_PT> (the jvp's sign flipped)",
          "ntkcheck.models.functional:linearize", _linearize_sign_flipped),
    Fault("mup_control_built_as_ntk", "the muP control built in NTK parametrization (the control copies the claim)",
          "ntkcheck.checks.linearization:VARIANTS", _mup_control_as_ntk),
    Fault("sp_lr_without_lr_scaling", "SP_LR's learning rate not divided by the width (SP's exponents)",
          "ntkcheck.theory.parametrization:PRESETS", _sp_lr_as_sp),
    Fault("drift_against_itself", "the kernel drift measured as a distance that is always 0",
          "ntkcheck.models.kernels:kernel_distance", _kernel_distance_zero),
    Fault("no_pretraining", "fine-tuning starts from the random init instead of the pretrained parameters",
          "ntkcheck.checks.linearization:train", _no_pretraining, caught=False,
          reason="in the kernel regime fine-tuning from a random init is linearizable too: the bound holds "
                 "around any init, so skipping pretraining changes no claim (it is the papers' setting, "
                 "not a premise the measurement can detect)"),
)


def memory_bytes(config: Config) -> int:
    """Peak bytes of the largest point: the widest MLP or transformer, pretrained and fine-tuned copies."""
    return network_bytes(max(mlp_params(max(config.widths), config.d_in, config.depth),
                             transformer_params(max(config.attn_widths), config.d_in, 1, config.n_heads)))


SPEC = CheckSpec(name="linearization", order=30, config_cls=Config, run=run, version=3, memory=memory_bytes,
                 faults=FAULTS,
                 summary="[ES] Lemma 1/Thm 5: e_lin, kernel drift, Table 6 distance fall like n^-1/2 or faster; "
                 "muP control flat")
