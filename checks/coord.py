"""The coordinate check on any model (microsoft/mup's first tool; [KV] App. C.1's coordinate sizes).

For a factory ``width -> nn.Module``, at each width n and seed: a few optimizer
steps on one batch (MSE), and before and after each step the coordinate size
(root mean square) of every layer's output, h_t, and of its change from
initialization, h_t - h_0. Against width, each layer's size at the last step
is fitted as rms ~ n^s (least squares on log-log, bootstrap CI over seeds).
A parametrization in which training is stable at every width (muP) keeps every
layer's activations and updates Theta(1): s <= tolerance for both; a layer with
s > tolerance grows with width (standard parametrization with a width-independent
learning rate: its updates grow like n^1/2 to n^1), and the verdict names it.
A layer whose update shrinks (s < -tolerance) is reported as vanishing (kernel
regime, no feature learning there), not judged.

"Layer" = every leaf submodule (no children) whose output is a tensor, in call
order (a module called twice is recorded twice, name#2), plus the model's output.
A ntkcheck WidthModel (whose forward does not call its submodules) is read through
its per-layer features instead. The data: ``batch(generator) -> (x, y)`` if the
factory's module defines one, else x ~ N(0, 1) [batch, d_in] with d_in the
in_features of the first nn.Linear (or ntkcheck ParamLinear), and y ~ N(0, 1) of the output's shape.
Initialization draws from torch's global generator inside a forked RNG state
seeded per (seed), so the caller's RNG is untouched and runs repeat exactly.
"""
from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

import torch
from torch import nn

from ntkcheck.checks.fit import fit_rows
from ntkcheck.checks.plots import loglog_panels
from ntkcheck.checks.sweep import grid, sweep
from ntkcheck.errors import UserError
from ntkcheck.models import optim, train
from ntkcheck.models.functional import functional
from ntkcheck.provenance import now_iso, provenance
from ntkcheck.result import Result, claim, measurement
from ntkcheck.store import ResultStore

VERSION = 1


# ---------------------------------------------------------------- loading a user's factory
def load_factory(spec: str) -> tuple[Callable[[int], nn.Module], Callable | None, str]:
    """(factory, batch function or None, FUNCTION) from 'path/to/file.py:FUNCTION' or 'package.module:FUNCTION'.

    Every failure (no such file or module, an import that raises, no such function) is a UserError
    naming the bad part.
    """
    if ":" not in spec:
        raise UserError(f"{spec!r}: expected FILE_OR_MODULE:FUNCTION, e.g. my_models.py:make_model")
    where, func = spec.rsplit(":", 1)
    if not where or not func.isidentifier():
        raise UserError(f"{spec!r}: expected FILE_OR_MODULE:FUNCTION with FUNCTION a Python name")
    path = Path(where)
    if where.endswith(".py") or path.exists() or "/" in where:
        if not path.is_file():
            raise UserError(f"model file {where!r} does not exist")
        name = f"ntkcheck_user_{hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:10]}"
        mspec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(mspec)
        sys.modules[name] = module
        try:
            mspec.loader.exec_module(module)
        except Exception as e:  # the user's file: any error it raises is reported in one line
            sys.modules.pop(name, None)
            raise UserError(f"importing {where!r} failed: {type(e).__name__}: {e}") from None
    else:
        try:
            module = importlib.import_module(where)
        except Exception as e:
            raise UserError(f"cannot import module {where!r}: {type(e).__name__}: {e}") from None
    factory = getattr(module, func, None)
    if not callable(factory):
        raise UserError(f"{where!r} has no function {func!r}")
    batch = getattr(module, "batch", None)
    return factory, (batch if callable(batch) else None), func


def _source_digest(spec: str) -> str:
    """Hash of the factory's file, so editing the model recomputes finished points."""
    where = spec.rsplit(":", 1)[0]
    try:
        return hashlib.sha256(Path(where).read_bytes()).hexdigest()[:16]
    except OSError:
        return where


# ---------------------------------------------------------------- one (width, seed) point
def _make(factory: Callable[[int], nn.Module], width: int, seed: int) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        try:
            model = factory(width)
        except Exception as e:
            raise UserError(f"{getattr(factory, '__name__', 'factory')}(width={width}) raised "
                            f"{type(e).__name__}: {e}") from None
    if not isinstance(model, nn.Module):
        raise UserError(f"{getattr(factory, '__name__', 'factory')}(width={width}) returned "
                        f"{type(model).__name__}, not a torch.nn.Module")
    return model.double().eval()


def _default_batch(model: nn.Module, size: int, g: torch.Generator):
    from ntkcheck.models.layers import ParamLinear

    first = next((m for m in model.modules() if isinstance(m, (nn.Linear, ParamLinear))), None)
    if first is None:
        raise UserError("cannot infer the input width (no nn.Linear); define batch(generator) -> (x, y) "
                        "next to the factory")
    d_in = first.in_features if isinstance(first, nn.Linear) else first.fan_in
    x = torch.randn(size, d_in, generator=g, dtype=torch.float64)
    with torch.no_grad():
        out = model(x)
    y = torch.randn(out.shape, generator=g, dtype=torch.float64)
    return x, y


def _recorder(model: nn.Module):
    """(f_record, names): f_record(params, x) -> {layer: output} for every leaf module's call, plus 'output'."""
    from ntkcheck.models.layers import WidthModel

    if isinstance(model, WidthModel):
        def f_record(p, x):
            feats = model.apply(p, x, all_layers=True)
            out = {f"h{i + 1}": h for i, h in enumerate(feats[:-1])}
            out["output"] = feats[-1]
            return out
        return model.apply, f_record

    f, _ = functional(model)
    leaves = [(n, m) for n, m in model.named_modules() if n and not list(m.children())]

    def f_record(p, x):
        got: dict[str, torch.Tensor] = {}
        handles = []
        for name, mod in leaves:
            def hook(_mod, _inp, out, name=name):
                t = out if isinstance(out, torch.Tensor) else next(
                    (o for o in (out if isinstance(out, (tuple, list)) else ()) if isinstance(o, torch.Tensor)), None)
                if t is None or not t.is_floating_point():
                    return
                key, k = name, 2
                while key in got:
                    key, k = f"{name}#{k}", k + 1
                got[key] = t.detach()
            handles.append(mod.register_forward_hook(hook))
        try:
            got["output"] = f(p, x).detach()
        finally:
            for h in handles:
                h.remove()
        return got

    return f, f_record


def _rms(t: torch.Tensor) -> float:
    return float(t.double().pow(2).mean().sqrt())


def coord_point(factory, width: int, seed: int, *, optimizer: str, lr: float, steps: int, batch=None,
                batch_size: int = 32) -> list[dict]:
    """Rows {step, layer, rms_h, rms_dh} for t = 0..steps of one (width, seed)."""
    model = _make(factory, width, seed)
    g = torch.Generator().manual_seed(1_000_003 + seed)   # the same data at every width
    if batch is not None:
        try:
            x, y = batch(g)
        except Exception as e:
            raise UserError(f"batch(generator) raised {type(e).__name__}: {e}") from None
        x, y = torch.as_tensor(x), torch.as_tensor(y)
        x = x.double() if x.is_floating_point() else x
        y = y.double()
    else:
        x, y = _default_batch(model, batch_size, g)
    f, record = _recorder(model)
    params = {k: v.detach().clone() for k, v in model.named_parameters()}
    rates = (model.learning_rates(optimizer if optimizer == "sgd" else "adam", lr)
             if hasattr(model, "learning_rates") and callable(model.learning_rates) else lr)
    with torch.no_grad():
        h0 = record(params, x)
    rows = [{"step": 0, "layer": k, "rms_h": _rms(v), "rms_dh": 0.0} for k, v in h0.items()]

    def on_step(step) -> None:
        with torch.no_grad():
            ht = record(step.params, x)
        rows.extend({"step": step.t, "layer": k, "rms_h": _rms(v), "rms_dh": _rms(v - h0[k])}
                    for k, v in ht.items() if k in h0)

    try:
        y = y.reshape(h0["output"].shape)
        train(f, params, optim.make(optimizer, rates), (x, y), steps, callback=on_step)
    except (RuntimeError, ValueError) as e:
        raise UserError(f"training the width-{width} model failed: {type(e).__name__}: {str(e).splitlines()[0]}") \
            from None
    return rows


# ---------------------------------------------------------------- the check
def coord_check(factory: Callable[[int], nn.Module], widths: Sequence[int], *, optimizer: str = "adam",
                lr: float | None = None, steps: int = 4, seeds: int = 6, batch=None, batch_size: int = 32,
                tolerance: float = 0.15, out: str | Path = "ntkcheck-runs", name: str = "coord",
                source: str = "") -> Result:
    """Run the coordinate check of ``factory`` and write DIR/<name>/ (result.json, measurements.csv, plots).

    Claims per layer (at the last step, slope of rms vs width): activations do not grow
    (slope <= tolerance) and updates do not grow (slope <= tolerance). The verdict passes iff no
    layer grows; details.json lists growing and vanishing layers.
    """
    if optimizer not in ("sgd", "adam"):
        raise UserError(f"--optimizer {optimizer!r}: expected sgd or adam")
    widths = sorted({int(w) for w in widths})
    if len(widths) < 2 or widths[0] < 1:
        raise UserError(f"--widths {widths}: need at least two different positive widths")
    if seeds < 2:
        raise UserError(f"--seeds {seeds}: the slope's bootstrap CI needs at least two seeds")
    lr = ({"sgd": 0.1, "adam": 0.01}[optimizer]) if lr is None else float(lr)
    store = ResultStore(Path(out), name)
    config = {"factory": source or getattr(factory, "__name__", "factory"), "widths": widths, "seeds": seeds,
              "optimizer": optimizer, "lr": lr, "steps": steps, "batch_size": batch_size, "tolerance": tolerance}
    store.bind({k: v for k, v in config.items() if k not in ("widths", "seeds", "tolerance")}
               | {"source": _source_digest(source) if source else ""}, VERSION)
    started, t0 = now_iso(), time.time()
    rows = sweep(store, grid(width=widths, seed=range(seeds)),
                 lambda pt: coord_point(factory, pt["width"], pt["seed"], optimizer=optimizer, lr=lr, steps=steps,
                                        batch=batch, batch_size=batch_size), desc=f"coord {name}")
    store.write_measurements(rows)
    layers = list(dict.fromkeys(r["layer"] for r in rows))
    claims, growing, vanishing = [], [], []
    src = "muP coordinate check (Yang et al. 2021); [KV] App. C.1"
    for layer in layers:
        act = fit_rows(rows, "width", "rms_h", {"layer": layer, "step": steps})
        claims.append(claim(f"{layer}.activation", f"{layer}: slope of activation size vs width at step {steps}",
                            predicted=0.0, measured=act.slope, relation="<=", tolerance=tolerance, ci=act.ci,
                            source=src))
        moved = [r for r in rows if r["layer"] == layer and r["step"] == steps]
        if all(r["rms_dh"] == 0.0 for r in moved):
            claims.append(measurement(f"{layer}.update", f"{layer}: output never changes (no update to measure)",
                                      0.0, source=src))
            continue
        upd = fit_rows(rows, "width", "rms_dh", {"layer": layer, "step": steps})
        claims.append(claim(f"{layer}.update", f"{layer}: slope of update size vs width at step {steps}",
                            predicted=0.0, measured=upd.slope, relation="<=", tolerance=tolerance, ci=upd.ci,
                            source=src))
        if not (act.slope <= tolerance and upd.slope <= tolerance):
            growing.append(layer)
        elif upd.slope < -tolerance:
            vanishing.append(layer)
    panels = []
    for key, what in (("rms_h", "activation"), ("rms_dh", "update")):
        for t in sorted({r["step"] for r in rows if key == "rms_h" or r["step"] > 0}):
            panels.append({"title": f"{what} size, step {t}", "ylabel": f"rms of {what}",
                           "series": [(layer, [r["width"] for r in rows if r["layer"] == layer and r["step"] == t],
                                       [r[key] for r in rows if r["layer"] == layer and r["step"] == t])
                                      for layer in layers]})
    loglog_panels(store.path("coord_check.png"), panels, suptitle=f"coordinate check: {config['factory']} "
                  f"({optimizer}, lr {lr:g})")
    store.write_json("details.json", {"growing": growing, "vanishing": vanishing, "layers": layers})
    result = Result(name, claims, kind="check", config=config, version=VERSION,
                    provenance=provenance(time.time() - t0, started=started))
    store.write_result(result)
    return result
