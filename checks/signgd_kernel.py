"""signgd_kernel: the asymmetric SignGD kernel is the kernel analog of SignGD ([KV] Thm 4.3 / Thm C.4).

Claim ([KV] Def. 4.1, 4.2, Thm 4.3, Thm C.4 with Assumption C.2 g-h): when a
network trained by SignGD is in the kernel regime, each step changes the output
on any input x by

    f_t(x) - f_{t-1}(x) ~= - sum_M eta_M sign(chi_t) <grad_M f_0(x), sign(grad_M f_0(x_t))>
                        =  - sign(chi_t) K^(A-SignGD)_eta(x, x_t),                 (Thm 4.3)

and SGD by  -eta chi_t K^(SGD)(x, x_t)  ([KV] Def. 3.4), with the kernels taken at
theta_0 and chi_t = f_{t-1}(x_t) - y_t the output derivative (Def. 3.1). The
theorem is an n -> infinity limit with no rate, so the claim is that the relative
prediction error falls with width at a slope clearly below 0; the measured slope
is reported (finite-width theory and checks.md observe about -1).

Setup (docs/checks.md, the setup known to give clean slopes): NTK
parametrization, 2 hidden tanh layers, SignGD rates on the raw weights
c/sqrt(n) (input), c/n (hidden), c/sqrt(n) (output) -- the NTK preset's c_adam
exponents, [KV] Table 10 / Assumption C.2h -- which keep each step's output change
Theta(1) at every width (also claimed: its slope is 0). SGD runs use the NTK
preset's width-independent SGD rate. Steps draw batches of size 1 (the theorem)
and small batches (B > 1); for a batch the analog is the update direction taken
at theta_0, -eta_M sign(sum_b chi_b grad_M f_0(x_b)), which reduces to
Thm 4.3 at B = 1. eps-sign ([KV] Assumption C.2g) uses eps_M proportional to the
rms entry of grad_M f_0 over the training pool, so eps-sign is neither 0 nor sign.

Measured per run: the per-step relative error
sqrt(sum_t ||df_t - pred_t||^2 / sum_t ||df_t||^2) on held-out inputs, the
whole-trajectory error ||(f_T - f_0) - sum_t pred_t|| / ||f_T - f_0||, and rms df.

Controls (must hold): (1) the SGD kernel with its best scalar rescaling predicts
SignGD steps with an error that does not fall with n (SignGD is not a rescaled
SGD); (2) a muP run with [KV] Table 10's SignGD rates (feature learning, r = 0)
keeps a non-vanishing error; (3) eps-sign is told apart from sign: the exact-sign
analog predicting the eps-sign run's steps keeps an error that does not fall.
Also reported: how closely early full-batch Adam with a small learning rate
tracks SignGD ([KV] Sec. 4).

The predictions are computed from the theorem's formula (``analog_direction``),
independently of ntkcheck.models.optim, which the networks train with: a bug
there shows as a prediction error. Faults it must catch (FAULTS): the A-SignGD
predictor built from the SGD kernel, SignGD applying the raw gradient, eps
dropped from eps-sign's update, width-independent SignGD rates, Adam without
bias correction.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from ntkcheck.checks._common import (DTYPE, Teacher, limit_threads, mlp_params, network_bytes, rel_err, rms, series,
                                     sphere_inputs)
from ntkcheck.checks.config import CheckConfig, axis, setting
from ntkcheck.checks.faults import Fault
from ntkcheck.checks.fit import fit_rows, mean_ci, slope_claim
from ntkcheck.checks.plots import loglog_panels
from ntkcheck.checks.registry import CheckSpec
from ntkcheck.checks.sweep import grid, sweep
from ntkcheck.models import build, optim, train
from ntkcheck.models.activations import ACTIVATIONS
from ntkcheck.models.functional import output, pullback, pushforward
from ntkcheck.models.kernels import empirical_kernel
from ntkcheck.result import Claim, claim
from ntkcheck.seeding import generator

#: (name, parametrization, update rule, batch size); the lr scale comes from Config
VARIANTS = (
    ("signgd_b1", "NTK", "sign", 1),
    ("signgd_bs", "NTK", "sign", None),
    ("epssign_b1", "NTK", "eps_sign", 1),
    ("sgd_b1", "NTK", "sgd", 1),
    ("sgd_bs", "NTK", "sgd", None),
    ("mup_signgd_b1", "MUP", "sign", 1),
)
#: the variants whose kernel prediction error must fall with width
KERNEL_VARIANTS = ("signgd_b1", "signgd_bs", "epssign_b1", "sgd_b1", "sgd_bs")
SOURCE = "[KV] Thm 4.3, Thm C.4"


@dataclass(frozen=True)
class Config(CheckConfig):
    widths: tuple[int, ...] = axis("width", (64, 128, 256, 512, 1024, 2048, 4096))
    seeds: int = axis("seeds", 6)
    d_in: int = 8
    depth: int = 2
    activation: str = setting("tanh", choices=ACTIVATIONS)
    n_pool: int = 16          # training examples the steps draw from
    n_test: int = 16          # held-out inputs where df is predicted
    steps: int = 8
    batch: int = 4            # the "small batch" size
    #: SignGD base rate c: rates c/sqrt(n), c/n, c/sqrt(n) give rms df ~ 0.3 per step at every width
    lr_signgd: float = setting(0.5, gt=0)
    #: SGD rate of the NTK parametrization (width-independent, c_sgd = 0): rms df ~ 0.1 per step
    lr_sgd: float = setting(0.5, gt=0)
    #: muP control with Table 10 SignGD rates (c, c/n, c/n): 0.3 moves features by Theta(1)
    lr_mup: float = setting(0.3, gt=0)
    #: eps_M = eps_rel * rms entry of grad_M f_0 over the pool ([KV] Assumption C.2g: eps matches the scale)
    eps_rel: float = 0.1
    #: Adam vs SignGD: full-batch steps with the SignGD rates times this (the "small lr" of early Adam)
    adam_lr_factor: float = setting(0.2, gt=0)
    adam_steps: int = 8
    #: "clearly below 0": with >= 3 seeds the bootstrap CI half-width of these slopes is ~0.1-0.15,
    #: and checks.md observes ~-1, so a slope must beat -0.3 to count as a decay
    decay_margin: float = 0.3
    #: Theta(1) step size: df's slope must be 0 within 0.15 (neighbouring widths scatter by ~0.1)
    flat_tol: float = 0.15
    #: a control "does not vanish": its slope stays above -0.2 (a true decay here is ~-1) ...
    control_slope_tol: float = 0.2
    #: ... and its error at the largest width stays above this level (the kernel variants reach ~0.01)
    control_floor: float = 0.05
    #: early Adam tracks SignGD: relative trajectory difference at the largest width below this
    #: (Adam's moments average the sign over a few steps; at lr factor 0.2 the measured gap is ~0.02-0.04)
    adam_tol: float = 0.25
    #: torch intra-op threads while this check runs: its matmuls (batches of 1-16 rows) are too small
    #: for thread parallelism to pay, and on a shared 2-core machine OMP spinning made runs 10x slower
    threads: int = setting(1, ge=0)

    def __post_init__(self):
        super().__post_init__()
        if any(w < 2 for w in self.widths) or len(self.widths) < 2:
            raise ValueError(f"widths must be >= 2 integers, at least two of them, got {self.widths}")
        if self.seeds < 2:
            raise ValueError(f"signgd_kernel needs seeds >= 2 for a bootstrap CI, got {self.seeds}")
        if self.steps < 1 or self.batch < 1 or self.batch > self.n_pool:
            raise ValueError("need steps >= 1 and 1 <= batch <= n_pool")

    @classmethod
    def quick(cls) -> "Config":
        return cls(widths=(64, 128, 256, 512, 1024), seeds=5)


def _pool(config: Config, seed: int):
    """Width-independent data of one seed: pool inputs, their teacher targets, held-out inputs."""
    g = generator(10_000 + seed)
    teacher = Teacher.draw(config.d_in, g)
    xp = sphere_inputs(config.n_pool, config.d_in, g)
    xt = sphere_inputs(config.n_test, config.d_in, g)
    return xp, teacher(xp), xt


def _model(config: Config, pname: str, width: int, seed: int):
    return build("mlp", width, pname, seed=seed, dtype=DTYPE, d_in=config.d_in, depth=config.depth,
                 activation=config.activation)


def eps_per_tensor(f, params0, x_pool, eps_rel: float) -> dict[str, float]:
    """eps_M = eps_rel * rms_entries(grad_M f_0) averaged over the pool (the scale of grad_M f, Assumption C.2g)."""
    n = x_pool.shape[0]
    acc = {k: 0.0 for k in params0}
    for i in range(n):
        g = pullback(f, params0, x_pool[i:i + 1], torch.ones(1, 1, dtype=DTYPE))
        for k in params0:
            acc[k] += float(g[k].pow(2).mean())
    return {k: eps_rel * (v / n) ** 0.5 for k, v in acc.items()}


def update_rule(rule: str, lrs, eps=None) -> optim.Optimizer:
    """The optimizer of an update rule: 'sgd', 'sign' (SignGD) or 'eps_sign' (per-tensor eps)."""
    if rule == "sgd":
        return optim.sgd(lrs)
    if rule == "sign":
        return optim.signgd(lrs)
    if rule == "eps_sign":
        return optim.signgd(lrs, eps=eps)
    raise ValueError(f"unknown update rule {rule!r}")


def analog_direction(grads, lrs, rule: str, eps=None) -> dict:
    """The kernel analog's parameter direction -eta_M phi(g_M) of [KV] Thm 4.3 / C.4, written from the theorem
    and deliberately not through ntkcheck.models.optim (the update code the networks train with), so a bug
    in the optimizers shows as a prediction error instead of being mirrored by the prediction:
    phi = id ('sgd'), sign ('sign'), g / (|g| + eps_M) ('eps_sign', [KV] Assumption C.2g)."""
    if rule == "sgd":
        return {k: -lrs[k] * g for k, g in grads.items()}
    if rule == "sign":
        return {k: -lrs[k] * torch.sign(g) for k, g in grads.items()}
    if rule == "eps_sign":
        return {k: -lrs[k] * g / (g.abs() + eps[k]) for k, g in grads.items()}
    raise ValueError(f"unknown update rule {rule!r}")


def predicted_step(f, params0, lrs, rule, x_batch, chi, x_eval, eps=None) -> torch.Tensor:
    """The kernel analog's df on x_eval: <grad f_0(x_eval), -eta_M rule(grad_M L_t(theta_0))>, [N_eval, C].

    grad_M L_t(theta_0) = (1/B) sum_b chi_b grad_M f_0(x_b) (chi from the live network). For B = 1 and
    rule 'sign' this is -sign(chi_t) K^(A-SignGD)_eta(x_eval, x_t) ([KV] Thm 4.3); for 'sgd' it is
    -(eta chi_t) K^(SGD)(x_eval, x_t) ([KV] Def. 3.4).
    """
    g0 = pullback(f, params0, x_batch, chi / x_batch.shape[0])
    return pushforward(f, params0, analog_direction(g0, lrs, rule, eps), x_eval)


def kernel_predictor(K: torch.Tensor, rule: str, B: int):
    """Step prediction from a kernel K[N_eval, 1, N_pool, 1] computed once at theta_0 by the engine.

    'sign' (B = 1 only): df = -sign(chi_t) K^(A-SignGD)_eta(x, x_t)  ([KV] Thm 4.3);
    'sgd': df = -(1/B) sum_b chi_b K^(SGD)_eta(x, x_b)  ([KV] Def. 3.3-3.4; eta inside K's weights).
    """
    if rule == "sign" and B != 1:
        raise ValueError("the A-SignGD kernel predicts batch-size-1 steps; use the matrix-free analog for B > 1")
    K2 = K[:, 0, :, 0]

    def predict(idx: torch.Tensor, chi: torch.Tensor) -> torch.Tensor:
        c = chi[:, 0]
        if rule == "sign":
            return (-torch.sign(c) * K2[:, idx]).sum(dim=1, keepdim=True)
        return -(K2[:, idx] * c).sum(dim=1, keepdim=True) / idx.numel()

    return predict


def matrix_free_predictor(f, params0, lrs, rule, x_pool, x_eval, eps=None):
    """Step prediction without a kernel matrix (batches of SignGD, eps-sign): see predicted_step."""
    def predict(idx: torch.Tensor, chi: torch.Tensor) -> torch.Tensor:
        return predicted_step(f, params0, lrs, rule, x_pool[idx], chi, x_eval, eps)

    return predict


def run_trajectory(f, params0, lrs, rule, x_pool, y_pool, x_eval, schedule, predictors, eps=None):
    """Train with `rule` over the batch schedule ([steps, B] pool indices).

    Returns f_0(x_eval), f_T(x_eval), the actual per-step df and, for each named predictor
    (idx, chi) -> df, its per-step predictions (chi = f(x_t) - y_t from the live network at the step).
    """
    f0 = output(f, params0, x_eval)
    acts, prev = [], [f0]
    preds = {name: [] for name in predictors}

    def on_step(step) -> None:
        f_new = output(f, step.params, x_eval)
        acts.append(f_new - prev[0])
        prev[0] = f_new
        chi = step.outputs - step.y
        for name, predict in predictors.items():
            preds[name].append(predict(schedule[step.t - 1], chi))

    train(f, params0, update_rule(rule, lrs, eps), lambda t: (x_pool[schedule[t - 1]], y_pool[schedule[t - 1]]),
          len(schedule), callback=on_step)
    return f0, prev[0], acts, preds


def trajectory_metrics(f0, fT, acts, preds) -> dict:
    A, Pr = torch.cat(acts), torch.cat(preds)
    return {"step_err": rel_err(A, Pr),
            "traj_err": rel_err(fT - f0, sum(preds)),
            "df_rms": rms(A)}


def best_scalar_err(acts, preds) -> float:
    """min_alpha ||A - alpha P|| / ||A|| over all steps: a kernel up to its best rescaling."""
    A, Pr = torch.cat(acts), torch.cat(preds)
    alpha = float((A * Pr).sum() / (Pr * Pr).sum())
    return rel_err(A, alpha * Pr)


def compute_point(config: Config, width: int, seed: int) -> list[dict]:
    xp, yp, xt = _pool(config, seed)
    sched_g = generator(20_000 + seed)
    rows = []
    models = {}
    for name, pname, rule, B in VARIANTS:
        B = config.batch if B is None else B
        if pname not in models:
            models[pname] = _model(config, pname, width, seed)
        model = models[pname]
        f, p0 = model.apply, model.params()
        opt = "sgd" if rule == "sgd" else "signgd"
        base = {"sgd": config.lr_sgd, "signgd": config.lr_signgd}[opt] if pname == "NTK" else config.lr_mup
        lrs = model.learning_rates(opt, base)
        eps = eps_per_tensor(f, p0, xp, config.eps_rel) if rule == "eps_sign" else None
        schedule = torch.randint(0, config.n_pool, (config.steps, B), generator=sched_g)
        if rule == "sgd" or (rule == "sign" and B == 1):
            kind = "sgd" if rule == "sgd" else "asym_signgd"
            K = empirical_kernel(f, p0, xt, xp, kind=kind, weights=lrs)
            predictors = {"kernel": kernel_predictor(K, rule, B)}
        else:
            predictors = {"kernel": matrix_free_predictor(f, p0, lrs, rule, xp, xt, eps)}
        if name == "signgd_b1":
            K_sgd = empirical_kernel(f, p0, xt, xp, kind="sgd")
            predictors["sgd_kernel"] = kernel_predictor(K_sgd, "sgd", B)
        if rule == "eps_sign":   # eps-sign told apart from sign: the exact-sign analog of the same steps
            predictors["sign_analog"] = matrix_free_predictor(f, p0, lrs, "sign", xp, xt)
        f0, fT, acts, preds = run_trajectory(f, p0, lrs, rule, xp, yp, xt, schedule, predictors, eps)
        rows.append(dict(variant=name, batch=B, **trajectory_metrics(f0, fT, acts, preds["kernel"])))
        if name == "signgd_b1":
            rows.append(dict(variant="sgd_kernel_for_signgd", batch=B,
                             step_err=best_scalar_err(acts, preds["sgd_kernel"]),
                             traj_err=float("nan"), df_rms=rms(torch.cat(acts))))
        if rule == "eps_sign":
            rows.append(dict(variant="sign_analog_for_epssign", batch=B,
                             **trajectory_metrics(f0, fT, acts, preds["sign_analog"])))
    # early Adam vs SignGD: full batch over the pool, the same per-tensor rates scaled down
    model = models["NTK"]
    f, p0 = model.apply, model.params()
    lrs = model.learning_rates("signgd", config.lr_signgd * config.adam_lr_factor)
    p_sign = train(f, p0, optim.signgd(lrs), (xp, yp), config.adam_steps)
    p_adam = train(f, p0, optim.adam(lrs, eps=1e-12), (xp, yp), config.adam_steps)
    f0 = output(f, p0, xt)
    f_sign, f_adam = output(f, p_sign, xt), output(f, p_adam, xt)
    rows.append(dict(variant="adam_vs_signgd", batch=config.n_pool,
                     step_err=float((f_adam - f_sign).norm() / (f_sign - f0).norm()),
                     traj_err=float("nan"), df_rms=rms(f_sign - f0)))
    return rows


def run(config: Config, store) -> list[Claim]:
    with limit_threads(config.threads):
        return _run(config, store)


def _run(config: Config, store) -> list[Claim]:
    points = grid(width=config.widths, seed=config.seed_range())
    rows = sweep(store, points, lambda pt: compute_point(config, pt["width"], pt["seed"]), desc="signgd_kernel")
    store.write_measurements(rows)
    nmax = max(config.widths)
    claims = []
    fits = {}
    for v in KERNEL_VARIANTS:
        for key in ("step_err", "traj_err"):
            fit = fits[(v, key)] = fit_rows(rows, "width", key, {"variant": v})
            claims.append(slope_claim(f"{v}.{key}.decays", f"{v}: slope of {key} vs n (kernel analog error "
                                      "vanishes)", fit, predicted=0.0, relation="<", tolerance=config.decay_margin,
                                      source=SOURCE))
    fit = fit_rows(rows, "width", "df_rms", {"variant": "signgd_b1"})
    claims.append(slope_claim("signgd_b1.df_rms.flat", "signgd_b1: slope of rms df per step (lr scaling keeps steps "
                              "Theta(1))", fit, predicted=0.0, relation="==", tolerance=config.flat_tol,
                              source="[KV] Assumption C.2h, Table 10"))
    for v, what in (("sgd_kernel_for_signgd", "SGD kernel, best scalar, predicting SignGD"),
                    ("mup_signgd_b1", "muP SignGD (feature learning), A-SignGD kernel"),
                    ("sign_analog_for_epssign", "the exact-sign analog predicting eps-sign steps")):
        fit = fits[(v, "step_err")] = fit_rows(rows, "width", "step_err", {"variant": v})
        claims.append(slope_claim(f"control.{v}.step_err.flat", f"control {what}: slope of step error", fit,
                                  predicted=0.0, relation=">=", tolerance=config.control_slope_tol, control=True,
                                  source=SOURCE if v != "sign_analog_for_epssign" else "[KV] Assumption C.2g"))
        level, level_ci = mean_ci([r["step_err"] for r in rows if r["variant"] == v and r["width"] == nmax], log=True)
        claims.append(claim(f"control.{v}.step_err.floor", f"control {what}: step error at n={nmax} (geometric mean "
                            "over seeds) stays above floor", predicted=config.control_floor, measured=level, ci=level_ci, relation=">=",
                            control=True, source=SOURCE))
    adam, adam_ci = mean_ci([r["step_err"] for r in rows if r["variant"] == "adam_vs_signgd" and r["width"] == nmax],
                            log=True)
    claims.append(claim("adam_vs_signgd.gap", f"early Adam vs SignGD: relative trajectory gap at n={nmax} "
                        "(geometric mean over seeds)",
                        predicted=0.0, measured=adam, ci=adam_ci, relation="<=", tolerance=config.adam_tol,
                        source="[KV] Sec. 4"))
    fits[("adam_vs_signgd", "step_err")] = fit_rows(rows, "width", "step_err", {"variant": "adam_vs_signgd"})
    store.write_json("fits.json", {f"{v}:{k}": f.to_json() for (v, k), f in fits.items()})
    _plot(rows, store)
    return claims


def _kernel_kind_sgd(original):
    def kernel(*args, **kw):
        return original(*args, **dict(kw, kind="sgd"))
    return kernel


def _signgd_is_sgd(original):
    from ntkcheck.models import optim as O

    return lambda lrs, eps=0.0, schedule=None: O.sgd(lrs, schedule=schedule)


def _eps_ignored(original):
    return lambda g, eps: torch.sign(g)


def _sign_rates_width_free(original):
    def learning_rate(self, n, optimizer, n0=1.0):
        return self.lr if optimizer != "sgd" else original(self, n, optimizer, n0)
    return learning_rate


def _adam_without_bias_correction(original):
    def adam(lrs, betas=(0.9, 0.999), eps=1e-8, schedule=None):
        opt = original(lrs, betas=betas, eps=eps, schedule=schedule)
        b1, b2 = betas

        def update(grads, state, params=None):
            out, new = opt.update(grads, state, params)
            t = new["step"]
            fix = (1 - b1 ** t) / (1 - b2 ** t) ** 0.5   # undo the bias correction
            return {k: u * fix for k, u in out.items()}, new
        return dataclasses.replace(opt, update=update)
    return adam


FAULTS = (
    Fault("asym_kernel_is_sgd", "the A-SignGD predictor built from the SGD kernel (kind 'sgd' for 'asym_signgd')",
          "ntkcheck.checks.signgd_kernel:empirical_kernel", _kernel_kind_sgd),
    Fault("signgd_trains_as_sgd", "the SignGD optimizer applies the raw gradient (the sign dropped)",
          "ntkcheck.models.optim:signgd", _signgd_is_sgd),
    Fault("eps_ignored_in_update", "eps-sign trains with the exact sign (eps dropped in the update)",
          "ntkcheck.models.optim:eps_sign", _eps_ignored),
    Fault("sign_rates_width_free", "SignGD/Adam learning rates not scaled with width ([KV] Table 10 ignored)",
          "ntkcheck.theory.parametrization:RoleScaling.learning_rate", _sign_rates_width_free),
    Fault("adam_without_bias_correction", "Adam without its bias correction (first steps 3x too large)",
          "ntkcheck.models.optim:adam", _adam_without_bias_correction),
)


def _plot(rows, store) -> None:
    """The kernel variants against n^-1 (the rate measured here and predicted by finite-width theory; the
    theorem itself gives none), the controls against flat lines."""
    controls = ("sgd_kernel_for_signgd", "mup_signgd_b1", "sign_analog_for_epssign")
    panels = [
        {"title": "per-step kernel prediction error (kernel regime)", "ylabel": "relative error",
         "series": [(v, *series(rows, "step_err", variant=v), -1.0) for v in KERNEL_VARIANTS]},
        {"title": "per-step prediction error (controls: no decay)", "ylabel": "relative error",
         "series": [(v, *series(rows, "step_err", variant=v), 0.0) for v in controls]},
        {"title": "whole-trajectory prediction error", "ylabel": "relative error",
         "series": [(v, *series(rows, "traj_err", variant=v), -1.0) for v in KERNEL_VARIANTS]},
        {"title": "rms output change per step (Theta(1)); Adam-SignGD gap", "ylabel": "rms df / relative gap",
         "series": [("signgd_b1", *series(rows, "df_rms", variant="signgd_b1"), 0.0)]
         + [(v, *series(rows, "df_rms", variant=v)) for v in ("sgd_b1", "mup_signgd_b1")]
         + [("Adam vs SignGD gap", *series(rows, "step_err", variant="adam_vs_signgd"))]},
    ]
    loglog_panels(store.path("signgd_kernel.png"), panels, suptitle="[KV] Thm 4.3: SignGD kernel analog vs width")


def memory_bytes(config: Config) -> int:
    """Peak bytes of the largest point: the widest MLP, its optimizer state and the matrix-free analog's copies."""
    return network_bytes(mlp_params(max(config.widths), config.d_in, config.depth))


SPEC = CheckSpec(name="signgd_kernel", order=20, config_cls=Config, run=run, version=3, memory=memory_bytes,
                 faults=FAULTS,
                 summary="[KV] Thm 4.3/C.4: A-SignGD kernel predicts SignGD steps (and K_SGD SGD) with error -> 0 in n")
