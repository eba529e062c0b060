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
exponent -1 is a second, separate claim. The kernel drift here is the change of
one network's eNTK along its own fine-tuning trajectory (sharp -1), not the
seed-to-seed fluctuation of the eNTK at init (-1/2, measured between two
independent inits and claimed separately): different quantities.

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

import torch

from ntkcheck.checks import _training as T
from ntkcheck.checks.fit import fit_rows
from ntkcheck.checks.plots import loglog_panels
from ntkcheck.checks.registry import CheckSpec
from ntkcheck.checks.sweep import grid, sweep
from ntkcheck.models import parametrization as P
from ntkcheck.models.kernels import empirical_kernel, kernel_distance
from ntkcheck.result import Claim, Result

#: variant -> (architecture, parametrization, pretrain?, role)
VARIANTS = {
    "mlp_ntk": ("mlp", "NTK", True, "claim"),
    "mlp_sp_lr": ("mlp", "SP_LR", True, "claim"),
    "attn_ntk": ("attn", "NTK", True, "claim"),
    "attn_sp_lr": ("attn", "SP_LR", True, "claim"),
    "mlp_mup_scratch": ("mlp", "MUP", False, "control"),
}
METRICS = ("e_lin", "drift", "init_fluct", "table6", "movement", "lin_gap")


@dataclass(frozen=True)
class Config:
    widths: tuple[int, ...] = (64, 128, 256, 512, 1024, 2048, 4096)   # MLP widths
    attn_widths: tuple[int, ...] = (32, 64, 128, 256, 512, 1024)       # transformer embedding widths
    seeds: int = 5
    d_in: int = 8
    depth: int = 2
    activation: str = "tanh"
    seq_len: int = 4
    n_heads: int = 2
    n_train: int = 32          # source and target training sets (full batch)
    n_test: int = 32           # held-out inputs for e_lin and the Table 1 losses
    n_kernel: int = 16         # held-out inputs where K_PT, K_t are compared
    pt_steps: int = 50
    ft_steps: int = 50
    checkpoints: int = 5       # kernel drift is the max over this many points of the FT trajectory
    #: target = source teacher + relatedness * independent teacher (a related, not identical, task)
    relatedness: float = 0.5
    #: GD rates: NTK eta (c_sgd = 0), SP eta_0 in eta_0 / n (the K_SP ~ n K_NTK scale makes them comparable)
    lr_ntk: float = 1.0
    lr_sp: float = 1.0
    #: the transformer's NTK has a larger scale (residual + attention paths): half the MLP rate keeps GD stable
    lr_attn_scale: float = 0.5
    #: muP base SGD rate (input eta n, hidden eta, output eta / n); 0.05 trains stably at every width
    lr_mup: float = 0.05
    #: bound claim "slope <= -1/2": a sharp -1 passes with room; 0.15 absorbs the CI half-width at 4-5 seeds
    bound_tol: float = 0.15
    #: sharp claim "slope == -1": finite-width corrections at n = 32-64 bend the fit by ~0.1-0.2
    #: (checks.md: MLP at -0.97 +- 0.07); 0.25 still excludes the bound's -1/2
    sharp_tol: float = 0.25
    #: init fluctuation ||K_0(seed) - K_0(seed')|| / ||K_0|| == n^-1/2 (CLT over n neurons); 0.15 for the CI
    fluct_tol: float = 0.15
    #: muP control "no decay": slope >= -0.25 (a kernel-regime decay here is ~-1)
    control_tol: float = 0.25
    #: [KV] Table 1 threshold: the linearized model recovers >= 50% of FT's improvement
    table1_threshold: float = 0.5
    threads: int = 1           # see signgd_kernel.Config.threads

    def __post_init__(self):
        for name in ("widths", "attn_widths"):
            v = getattr(self, name)
            if len(v) < 2 or any(w < 2 for w in v):
                raise ValueError(f"{name} needs at least two widths >= 2, got {v}")
        if self.seeds < 2:
            raise ValueError(f"linearization needs seeds >= 2 for a bootstrap CI, got {self.seeds}")
        if self.n_kernel > self.n_test or self.checkpoints < 1:
            raise ValueError("need n_kernel <= n_test and checkpoints >= 1")

    @classmethod
    def quick(cls) -> "Config":
        return cls(widths=(128, 256, 512, 1024), attn_widths=(32, 64, 128), seeds=4)


def _data(config: Config, seed: int, arch: str):
    """Width-independent tasks of one seed: source (x, y), related target (x, y), test inputs and targets."""
    g = T.gen(30_000 + seed)
    seq = config.seq_len if arch == "attn" else None
    t1, t2 = T.Teacher.draw(config.d_in, g), T.Teacher.draw(config.d_in, g)

    def target(x):
        return t1(x) + config.relatedness * t2(x)

    xs = T.sphere_inputs(config.n_train, config.d_in, g, seq)
    xt = T.sphere_inputs(config.n_train, config.d_in, g, seq)
    xe = T.sphere_inputs(config.n_test, config.d_in, g, seq)
    return (xs, t1(xs)), (xt, target(xt)), (xe, target(xe))


def _build(config: Config, arch: str, pname: str, width: int, seed: int):
    param = P.get(pname)
    if arch == "mlp":
        return T.build_mlp(width, param, seed, d_in=config.d_in, depth=config.depth, activation=config.activation)
    return T.build_transformer(width, param, seed, d_in=config.d_in, n_heads=config.n_heads, attn_logit=1.0,
                               activation=config.activation)


def _lrs(config: Config, model, pname: str, arch: str):
    base = {"NTK": config.lr_ntk, "SP_LR": config.lr_sp, "MUP": config.lr_mup}[pname]
    if arch == "attn":
        base *= config.lr_attn_scale
    return model.learning_rates("sgd", base)


def finetune_metrics(f, p_pt, lrs, x_ft, y_ft, x_test, y_test, x_kernel, steps: int, checkpoints: int) -> dict:
    """Fine-tune from p_pt by full-batch GD and measure the kernel-behavior quantities ([KV] Def. 3.2).

    e_lin = rms_x |f_FT(x) - f_lin(x)|, f_lin the jvp expansion at p_pt ([ES] eq. 14, 18);
    drift = max over checkpoints of ||K_PT - K_t||_F / ||K_PT||_F ([ES] eq. 17, 99);
    table6 = mean_ij |K_FT - K_PT|_ij / |K_PT|_ij ([KV] Table 6);
    movement = ||theta_FT - theta_PT|| / ||theta_PT|| ([ES] eq. 98);
    lin_frac = (L_PT - L_lin) / (L_PT - L_FT) on test ([KV] Table 1), lin_gap = |1 - lin_frac|.
    """
    K_pt = empirical_kernel(f, p_pt, x_kernel)
    every = max(1, steps // checkpoints)
    drifts = []

    def on_step(t, p):
        if t % every == 0 or t == steps:
            K = empirical_kernel(f, p, x_kernel)
            drifts.append(kernel_distance(K_pt, K, reduction="frobenius"))

    p_ft = T.train_gd(f, p_pt, lrs, x_ft, y_ft, steps, on_step)
    K_ft = empirical_kernel(f, p_ft, x_kernel)
    f_pt, f_ft = T.output(f, p_pt, x_test), T.output(f, p_ft, x_test)
    f_lin = T.linearized(f, p_pt, p_ft, x_test)
    L_pt, L_ft, L_lin = T.mse(f_pt, y_test), T.mse(f_ft, y_test), T.mse(f_lin, y_test)
    frac = (L_pt - L_lin) / (L_pt - L_ft)
    delta = {k: p_ft[k] - p_pt[k] for k in p_pt}
    return {"e_lin": T.rms(f_ft - f_lin), "ft_change": T.rms(f_ft - f_pt), "drift": max(drifts),
            "table6": kernel_distance(K_pt, K_ft), "movement": (T.sq_norm(delta) / T.sq_norm(p_pt)) ** 0.5,
            "lin_frac": frac, "lin_gap": abs(1.0 - frac), "loss_pt": L_pt, "loss_ft": L_ft, "loss_lin": L_lin}


def compute_point(config: Config, variant: str, width: int, seed: int) -> dict:
    arch, pname, pretrain, _ = VARIANTS[variant]
    (xs, ys), (xt, yt), (xe, ye) = _data(config, seed, arch)
    model, f, p0 = _build(config, arch, pname, width, seed)
    lrs = _lrs(config, model, pname, arch)
    p_pt = T.train_gd(f, p0, lrs, xs, ys, config.pt_steps) if pretrain else p0
    out = finetune_metrics(f, p_pt, lrs, xt, yt, xe, ye, xe[:config.n_kernel], config.ft_steps, config.checkpoints)
    # a different quantity from the drift: two independent inits' eNTKs differ by O(n^-1/2) (NTK4A-style)
    _, f2, p2 = _build(config, arch, pname, width, 70_000 + seed)
    xk = xe[:config.n_kernel]
    out["init_fluct"] = kernel_distance(empirical_kernel(f, p0, xk), empirical_kernel(f2, p2, xk),
                                        reduction="frobenius")
    return out


def _points(config: Config):
    """Every (variant, width, seed), cheapest widths first so an interrupted sweep covers every variant."""
    pts = []
    for v, (arch, *_ ) in VARIANTS.items():
        ws = config.widths if arch == "mlp" else config.attn_widths
        pts += grid(variant=[v], width=ws, seed=range(config.seeds))
    return sorted(pts, key=lambda p: (p["width"], p["seed"]))


def run(config: Config, store) -> Result:
    with T.threads(config.threads):
        return _run(config, store)


def _run(config: Config, store) -> Result:
    rows = sweep(store, _points(config), lambda pt: compute_point(config, pt["variant"], pt["width"], pt["seed"]),
                 desc="linearization")
    store.write_measurements(rows)
    claims, fits = [], {}
    for v, (arch, pname, _, role) in VARIANTS.items():
        for key in METRICS:
            fits[f"{v}:{key}"] = fit_rows(rows, "width", key, {"variant": v})
        if role == "claim":
            for key in ("e_lin", "drift"):
                fit = fits[f"{v}:{key}"]
                claims.append(Claim.compare(f"{v}: slope of {key} (bound, [ES] eq. 14/17)", -0.5, fit.slope, "<=",
                                            config.bound_tol, ci=fit.ci))
                claims.append(Claim.compare(f"{v}: slope of {key} (sharp finite-width exponent)", -1.0, fit.slope,
                                            "==", config.sharp_tol, ci=fit.ci))
            fit = fits[f"{v}:init_fluct"]
            claims.append(Claim.compare(f"{v}: slope of the eNTK's seed-to-seed fluctuation at init (not the drift)",
                                        -0.5, fit.slope, "==", config.fluct_tol, ci=fit.ci))
            fit = fits[f"{v}:movement"]
            claims.append(Claim.compare(f"{v}: slope of relative parameter movement ([ES] eq. 98)", -0.5,
                                        fit.slope, "<=", config.bound_tol, ci=fit.ci))
            widths = config.widths if arch == "mlp" else config.attn_widths
            frac = T.seed_mean(rows, "lin_frac", variant=v)[max(widths)]
            claims.append(Claim.compare(f"{v}: [KV] Table 1 fraction of FT gain recovered by f_lin at "
                                        f"n={max(widths)}", config.table1_threshold, frac, ">=", 0.0))
        else:
            for key in ("e_lin", "drift"):
                fit = fits[f"{v}:{key}"]
                claims.append(Claim.compare(f"control {v}: slope of {key} (feature learning: no decay)", 0.0,
                                            fit.slope, ">=", config.control_tol, ci=fit.ci, control=True))
    store.write_json("fits.json", {k: f.to_json() for k, f in fits.items()})
    _plot(rows, store)
    return Result("linearization", config={}, claims=claims)


def _plot(rows, store) -> None:
    titles = {"e_lin": "linearization error ||f_FT - f_lin|| (rms)", "drift": "kernel drift sup_t ||K_PT-K_t||/||K_PT||",
              "table6": "[KV] Table 6 element-wise kernel distance", "movement": "relative parameter movement",
              "lin_gap": "|1 - Table 1 fraction recovered by f_lin|",
              "init_fluct": "eNTK seed-to-seed fluctuation at init (not drift)"}
    panels = [{"title": titles[k], "series": [(v, *T.series(rows, k, variant=v)) for v in VARIANTS]} for k in METRICS]
    loglog_panels(store.path("linearization.png"), panels,
                  suptitle="[ES] Lemma 1 / Thm 5: kernel behavior of fine-tuning vs width (NTK, SP lr/n; muP control)")


SPEC = CheckSpec(name="linearization", order=30, config_cls=Config, run=run,
                 summary="[ES] Lemma 1/Thm 5: e_lin, kernel drift, Table 6 distance fall like n^-1/2 or faster; muP control flat",
                 axes=("widths", "attn_widths", "seeds"))
