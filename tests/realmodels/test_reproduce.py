"""`lm reproduce` on tiny random models: every method end to end, resume, claims on planted numbers; LoRA
through peft against the analytic lora_kernel; models by Hugging Face id from a local cache."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from ntkcheck.errors import UserError
from ntkcheck.realmodels.experiment import LMConfig
from ntkcheck.realmodels.finetune import FTConfig

pytestmark = pytest.mark.hf

FT = FTConfig(optimizers=("sgd", "adam"), lrs_sgd=(0.1,), lrs_adam=(0.01,), batch_sizes=(2,), steps=4, eval_every=2)
LORA_FT = FTConfig(optimizers=("sgd", "adam"), lrs_sgd=(0.1,), lrs_adam=(0.01,), batch_sizes=(2,), steps=4,
                   eval_every=2)


@pytest.fixture(scope="module")
def tiny4(tmp_path_factory, data_dir):
    """Tiny random RoBERTa, GPT-Neo, BERT and Llama folders whose vocabulary covers the shared data's words."""
    pytest.importorskip("transformers")
    pytest.importorskip("peft")
    from ntkcheck.realmodels.tiny import make_tiny

    root = tmp_path_factory.mktemp("tiny4")
    return {a: make_tiny(root / a, a, data_dir=str(data_dir), hidden=16, layers=2, heads=2, seed=0)
            for a in ("roberta", "gpt-neo", "bert", "llama")}


def _cfg(model, data_dir, out, **kw):
    base = dict(model=str(model), task="sst2", data=str(data_dir), k=2, seeds=(13, 21), test_max=8, out=str(out),
                kinds=("sgd", "asym_signgd"))
    base.update(kw)
    return LMConfig(**base)


def _opts(tasks, **kw):
    from ntkcheck.realmodels.reproduce import ReproduceOptions

    base = dict(tasks=tuple(tasks), finetune=FT, lora_finetune=LORA_FT, spectrum_samples=6, distance_samples=2)
    base.update(kw)
    return ReproduceOptions(**base)


def test_reproduce_every_method_two_tasks_with_lora(tiny4, data_dir, tmp_path):
    """GPT-Neo (causal prompts), SST-2 and Subj, LoRA rank 2: every method, claim and plot, one result.json
    that `ntkcheck report` renders; a second call loads every stage (no kernel, no training)."""
    from ntkcheck.realmodels import finetune
    from ntkcheck.realmodels.reproduce import reproduce
    from ntkcheck.report import load_results
    from ntkcheck.result import Result

    cfg = _cfg(tiny4["gpt-neo"], data_dir, tmp_path, lora_rank=2)
    res = reproduce(cfg, _opts(("sst2", "subj")))
    out = tmp_path / "lm_reproduce_sst2-subj_k2_gpt-neo_lora2"
    blob = json.loads((out / "result.json").read_text())
    r = Result.from_json(blob)
    assert r.kind == "lm" and blob["verdict"] in ("pass", "fail", "inconclusive")
    for t in ("sst2", "subj"):
        data = res["per_task"][t]
        assert set(data["preds"]) == {"zero_shot", "sgd", "asym_signgd", "ft_sgd", "ft_adam", "lin_sgd", "lin_adam",
                                      "lora_sgd", "lora_ft_sgd", "lora_ft_adam"}
        assert all(p.shape == (2, 8) for p in data["preds"].values())
        for cid in ("kernel_beats_zero_shot", "sgd_solves", "asym_signgd_solves", "sgd_linearization",
                    "adam_linearization", "sgd_fixed_features", "beta", "lora_ft_vs_ft", "lora_kernel_vs_kernel"):
            c = r.claim(f"{t}.{cid}")
            if c.measured != c.measured:   # FT gained nothing over f0 on a tiny model: the share is undefined
                assert cid.endswith("linearization") and c.state == "measured" and "undefined" in c.name
                continue
            assert c.judged and c.relation is not None and c.ci[0] <= c.measured <= c.ci[1]
        # the claim's number is the one the rows give: K(SGD) minus zero-shot, mean over seeds
        rows = [x for x in data["rows"] if x.get("stage") == "kernel"]
        gap = np.mean([x["test"] for x in rows if x["method"] == "sgd"]) - \
            np.mean([x["test"] for x in rows if x["method"] == "zero_shot"])
        assert r.claim(f"{t}.kernel_beats_zero_shot").measured == pytest.approx(gap, abs=1e-9)
        assert len(data["spectrum"]) == 2 and r.claim(f"{t}.beta").measured == pytest.approx(
            np.mean([s["beta"] for s in data["spectrum"]]))
    assert r.claim("taskvec.cos.sst2.subj").state == "measured"
    for png in ("accuracy.png", "spectrum.png", "kernel_distance.png", "cosine.png"):
        assert (out / png).stat().st_size > 1000
    report = (tmp_path / "report.md").read_text()
    assert "lm_reproduce_sst2-subj_k2_gpt-neo_lora2" in report and "accuracy.png" in report
    assert [res_.name for _, res_ in load_results(tmp_path)] == ["lm_reproduce_sst2-subj_k2_gpt-neo_lora2"]
    assert "| 2 | zero-shot f0 |" in res["table"] and "SGD-LoRA-FT" in res["table"]
    assert "Lin. (SGD-FT)" in res["table"] and "Lin. (Adam-FT)" in res["table"]
    chosen = res["table"].split("What SST-2's dev sets chose:")[1].split("What Subj's dev sets chose:")[0]
    assert [line.split(" |")[0] for line in chosen.strip().splitlines()[2:]] == ["| K(SGD)", "| K(A-SignGD)"]
    # every method's seed budget for +-3, in the table and in details.json, is metrics.seeds_needed of its preds
    from ntkcheck.realmodels.metrics import seeds_needed

    budget = res["table"].split("Seeds an interval of +-3 points needs")[1]
    details = json.loads((out / "details.json").read_text())["tasks"]
    for t, label in (("sst2", "| SST-2 |"), ("subj", "| Subj |")):
        data = res["per_task"][t]
        assert budget.count(label) == len(data["preds"]) == 10
        for m, p in data["preds"].items():
            want = seeds_needed(p, data["y_test"], data["metric"], halfwidth=3.0)
            got = details[t]["seeds_needed"][m]
            assert got["sd_seeds"] == pytest.approx(want["sd_seeds"], abs=1e-12)
            assert got["halfwidth_test"] == pytest.approx(want["halfwidth_test"], abs=1e-12)

    from ntkcheck.realmodels import experiment

    calls = []
    real, real_kernel = finetune.fine_tune, experiment.Session.kernel_fn
    finetune.fine_tune = lambda *a, **k: calls.append("ft") or real(*a, **k)
    experiment.Session.kernel_fn = lambda self, kind: calls.append(kind) or real_kernel(self, kind)
    try:
        again = reproduce(cfg, _opts(("sst2", "subj")))
    finally:
        finetune.fine_tune, experiment.Session.kernel_fn = real, real_kernel
    assert calls == []          # every kernel block, spectrum, distance and FT point came from the store
    assert again["result"].to_json()["claims"] == r.to_json()["claims"]


@pytest.mark.parametrize("arch,mode", [("roberta", "mlm"), ("llama", "causal"), ("bert", "head")])
def test_reproduce_each_architecture(tiny4, data_dir, tmp_path, arch, mode):
    """RoBERTa masked prompts, Llama causal prompts, BERT with a new linear head and LoRA (standard FT: one
    session per seed, its claims reported as measurements, [KV] Sec. 5)."""
    from ntkcheck.realmodels.reproduce import reproduce

    cfg = _cfg(tiny4[arch], data_dir, tmp_path, mode=mode, kinds=("sgd", "signgd", "asym_signgd"),
               lora_rank=2 if mode == "head" else None)
    res = reproduce(cfg, _opts(("sst2",)))
    if mode == "head":
        assert {"lora_sgd", "lora_ft_sgd", "lora_ft_adam"} <= set(res["per_task"]["sst2"]["preds"])
    data = res["per_task"]["sst2"]
    assert data["mode"] == mode
    base = "linear_probe" if mode == "head" else "zero_shot"
    assert {base, "sgd", "signgd", "asym_signgd", "ft_sgd", "ft_adam", "lin_sgd", "lin_adam"} <= set(data["preds"])
    c = res["result"].claim("sst2.sgd_solves")
    assert c.judged == (mode != "head")
    assert res["result"].claim("sst2.signgd_solves").state == "measured"   # K(SignGD) has no claim of its own


def test_reproduce_without_kernels_or_distance(tiny4, data_dir, tmp_path, monkeypatch):
    """--kinds none --distance-samples 0: zero-shot, fine-tuning and Lin. with their claims, no kernel computed,
    no kernel-ratio or fixed-features claim, and the table says the distance was not measured."""
    from ntkcheck.realmodels.experiment import Session
    from ntkcheck.realmodels.reproduce import reproduce

    cfg = _cfg(tiny4["gpt-neo"], data_dir, tmp_path, kinds=())
    called = []
    real = Session.kernel_fn
    monkeypatch.setattr(Session, "kernel_fn", lambda self, *a, **k: called.append(a) or real(self, *a, **k))
    res = reproduce(cfg, _opts(("sst2",), spectrum_samples=0, distance_samples=0))
    assert called == []
    assert set(res["per_task"]["sst2"]["preds"]) == {"zero_shot", "ft_sgd", "ft_adam", "lin_sgd", "lin_adam"}
    ids = {c.id for c in res["result"].claims}
    assert {"sst2.sgd_linearization", "sst2.adam_linearization", "sst2.lin_sgd.test"} <= ids
    assert not ids & {"sst2.kernel_beats_zero_shot", "sst2.sgd_solves", "sst2.sgd_fixed_features"}
    assert "| SST-2 | SGD-FT |" in res["table"] and "not measured" in res["table"]


def test_reproduce_with_least_squares_is_lm_solve_with_least_squares(tiny4, data_dir, tmp_path):
    """--loss ridge in lm reproduce solves K(SGD) as lm solve --loss ridge does (same kernel cache, same rows and
    test predictions), differs from the logistic default, says so under its table; an unknown loss is refused."""
    from ntkcheck.realmodels.measure import solve_cmd
    from ntkcheck.realmodels.reproduce import reproduce

    cfg = _cfg(tiny4["llama"], data_dir, tmp_path, mode="causal", kinds=("sgd",), test_max=40)
    opts = dict(finetune=None, lora_finetune=None, spectrum_samples=0)
    runs = {loss: reproduce(cfg, _opts(("sst2",), loss=loss, **opts)) for loss in ("ridge", "logistic")}
    solved = solve_cmd(cfg, loss="ridge")["rows"]

    def sgd_rows(rows):
        return [(r["seed"], r["test"], r["test_pred"]) for r in rows if r["method"] == "sgd"]

    assert sgd_rows(runs["ridge"]["per_task"]["sst2"]["rows"]) == sgd_rows(solved)
    assert sgd_rows(runs["ridge"]["per_task"]["sst2"]["rows"]) != sgd_rows(runs["logistic"]["per_task"]["sst2"]["rows"])
    assert "solved by least squares (--loss ridge)" in runs["ridge"]["table"]
    assert "least squares" not in runs["logistic"]["table"]
    with pytest.raises(UserError, match="--loss hinge: expected one of logistic, ridge"):
        reproduce(cfg, _opts(("sst2",), loss="hinge", **opts))
    # --regs: reproduce and lm solve solve on the same ridge grid, every chosen point on it, said under the table
    gridded = reproduce(cfg, _opts(("sst2",), regs=(0.1, 1.0), **opts))
    rows = [r for r in gridded["per_task"]["sst2"]["rows"] if r["method"] == "sgd"]
    assert rows and {r["hp_reg"] for r in rows} <= {0.1, 1.0} and not any(r["no_minimizer"] for r in rows)
    assert sgd_rows(rows) == sgd_rows(solve_cmd(cfg, grid_override={"regs": (0.1, 1.0)})["rows"])
    assert "ridge grid is 0.1, 1 x ||K_train||_op (--regs)" in gridded["table"]
    assert "--regs" not in runs["logistic"]["table"]


def test_reproduce_with_a_sketch_of_every_parameter_is_the_exact_run(tiny4, data_dir, tmp_path):
    """--sketch-dim at least the number of parameters projects nothing: every kernel's test predictions and
    the kernel distances equal the exact run's; the result goes to its own folder and its table says the
    kernels were countsketched."""
    from dataclasses import replace

    from ntkcheck.realmodels.reproduce import reproduce

    cfg = _cfg(tiny4["gpt-neo"], data_dir, tmp_path, seeds=(13,), model_dtype="float64")
    opts = _opts(("sst2",), finetune=FTConfig(optimizers=("sgd",), lrs_sgd=(0.1,), batch_sizes=(2,), steps=4,
                                              eval_every=2), lora_finetune=None, spectrum_samples=0)
    exact = reproduce(cfg, opts)
    from ntkcheck.realmodels.experiment import iter_sessions

    P = sum(v.numel() for v in next(iter_sessions(cfg, "probe")).adapter.trainable.values())
    sk = reproduce(replace(cfg, sketch_dim=P), opts)
    assert sk["dir"] != exact["dir"] and sk["dir"].endswith(f"_cs{P}")
    assert f"countsketched to k = {P}" in sk["table"] and "countsketched" not in exact["table"]
    a, b = exact["per_task"]["sst2"], sk["per_task"]["sst2"]
    for m in ("sgd", "asym_signgd", "ft_sgd", "lin_sgd"):
        np.testing.assert_array_equal(b["preds"][m], a["preds"][m])
    assert np.allclose([r["kernel_distance"] for r in b["behavior"]], [r["kernel_distance"] for r in a["behavior"]],
                       rtol=1e-8)


def test_reproduce_resumes_after_interruption(tiny4, data_dir, tmp_path):
    """A run stopped in the middle of fine-tuning resumes: finished grid points are not trained again."""
    from ntkcheck.realmodels import finetune
    from ntkcheck.realmodels.reproduce import reproduce

    cfg = _cfg(tiny4["gpt-neo"], data_dir, tmp_path, seeds=(13,))
    ft = FTConfig(optimizers=("sgd", "adam"), lrs_sgd=(0.1, 0.05), lrs_adam=(0.01,), batch_sizes=(2,), steps=4,
                  eval_every=2)
    opts = _opts(("sst2",), finetune=ft, lora_finetune=None, spectrum_samples=0)
    real, calls = finetune.fine_tune, []

    def stop_third(*a, **k):
        calls.append(k["lr"])
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*a, **k)

    finetune.fine_tune = stop_third
    try:
        with pytest.raises(KeyboardInterrupt):
            reproduce(cfg, opts)
        done = list(calls[:2])
        calls.clear()
        finetune.fine_tune = lambda *a, **k: calls.append(k["lr"]) or real(*a, **k)
        res = reproduce(cfg, opts)
    finally:
        finetune.fine_tune = real
    assert len(calls) == 1 and sorted(done + calls) == sorted([0.1, 0.05, 0.01])
    assert res["result"].claim("sst2.sgd_solves").judged


def _planted(kernel_acc, ft_acc, zs_acc, *, n=400, seeds=3, beta=0.56, dist=0.5):
    """A task whose methods have exactly the given accuracies on every seed (planted predictions)."""
    y = np.arange(n) % 2

    def preds(acc):
        right = int(round(acc / 100 * n))
        p = y.copy()
        p[right:] = 1 - p[right:]
        return np.stack([p] * seeds)

    accs = {"zero_shot": zs_acc, "sgd": kernel_acc, "asym_signgd": kernel_acc, "ft_sgd": ft_acc, "ft_adam": ft_acc,
            "lin_sgd": ft_acc, "lin_adam": zs_acc}
    return {"task": "sst2", "metric": "acc", "mode": "causal", "seeds": list(range(seeds)), "n_test": n,
            "y_test": y.tolist(), "preds": {m: preds(a) for m, a in accs.items()}, "rows": [],
            "behavior": [{"seed": s, "optimizer": o, "kernel_distance": dist * (1 + 0.01 * s), "chi_mean": 0.4}
                         for s in range(seeds) for o in ("sgd", "adam")],
            "spectrum": [{"seed": s, "beta": beta + 0.001 * s, "n_eigs": 100} for s in range(seeds)]}


def test_claims_on_planted_numbers():
    """A kernel at 95% of FT holds; at 60% it fails; below zero-shot fails; Lin. at FT holds and at f0 fails;
    beta outside [0.51, 0.62] and a distance of 5 fail; head mode judges nothing."""
    from ntkcheck.realmodels.reproduce import task_claims

    def state(claims, cid):
        return next(c for c in claims if c.id == f"sst2.{cid}").state

    good = task_claims("sst2", _planted(85.5, 90.0, 70.0))
    assert state(good, "kernel_beats_zero_shot") == "holds"
    assert state(good, "sgd_solves") == "holds" and state(good, "asym_signgd_solves") == "holds"
    assert state(good, "sgd_linearization") == "holds"     # Lin. = FT: the whole gain
    assert state(good, "adam_linearization") == "fails"    # Lin. = f0: none of it
    assert state(good, "sgd_fixed_features") == "holds" and state(good, "beta") == "holds"
    bad = task_claims("sst2", _planted(54.0, 90.0, 70.0, beta=0.9, dist=5.0))
    assert state(bad, "kernel_beats_zero_shot") == "fails" and state(bad, "sgd_solves") == "fails"
    assert state(bad, "beta") == "fails" and state(bad, "sgd_fixed_features") == "fails"
    head = task_claims("sst2", dict(_planted(54.0, 90.0, 70.0), mode="head"), judged=False)
    assert all(c.state == "measured" for c in head if c.id != "sst2.beta")
    # FT worse than f0 (and Lin. worse still): the share of a negative gain is undefined, never "holds"
    worse = task_claims("sst2", _planted(85.5, 65.0, 70.0))
    lin = next(c for c in worse if c.id == "sst2.sgd_linearization")
    assert lin.state == "measured" and lin.measured != lin.measured and "undefined" in lin.name
    # LoRA: LoRA-FT at 95% of FT holds, at 60% fails; K_LoRA at K holds, at 0.8 K fails
    p = _planted(85.0, 90.0, 70.0)
    p["preds"]["lora_ft_sgd"], p["preds"]["lora_sgd"] = _planted(85.5, 54.0, 70.0)["preds"]["sgd"], p["preds"]["sgd"]
    lo = task_claims("sst2", p)
    assert state(lo, "lora_ft_vs_ft") == "holds" and state(lo, "lora_kernel_vs_kernel") == "holds"
    p["preds"]["lora_ft_sgd"] = _planted(54.0, 90.0, 70.0)["preds"]["sgd"]   # 54 / 90 = 0.6
    p["preds"]["lora_sgd"] = _planted(68.0, 90.0, 70.0)["preds"]["sgd"]      # 68 / 85 = 0.8
    lo = task_claims("sst2", p)
    assert state(lo, "lora_ft_vs_ft") == "fails" and state(lo, "lora_kernel_vs_kernel") == "fails"
    # --distance-samples 0: no kernel distance in the rows, so no fixed-features claim, the rest unchanged
    nodist = _planted(85.5, 90.0, 70.0)
    nodist["behavior"] = [{k: v for k, v in r.items() if k != "kernel_distance"} for r in nodist["behavior"]]
    nd = {c.id: c.state for c in task_claims("sst2", nodist)}
    assert "sst2.sgd_fixed_features" not in nd and nd["sst2.sgd_linearization"] == "holds"
    # K(SignGD) is reported against Adam-FT, never judged
    p["preds"]["signgd"] = p["preds"]["sgd"]
    assert state(task_claims("sst2", p), "signgd_solves") == "measured"


def test_a_claim_without_a_finite_interval_is_inconclusive():
    """A statistic defined in fewer than half the bootstrap replicates has no interval: its point value, inside
    the band, decides nothing (without the rule this claim would hold)."""
    from ntkcheck.realmodels.reproduce import _ci_claim

    data = {"preds": {"a": np.array([[1, 1, 0, 0]])}, "y_test": [1, 1, 1, 1], "metric": "acc"}
    c = _ci_claim("x", "x", data, ["a"], lambda v: v["a"] if v["a"] == 50.0 else float("nan"), relation=">=",
                  predicted=0.0)   # 50% is drawn in 6/16 of the replicates
    assert c.measured == 50.0 and c.state == "inconclusive"


def test_bootstrap_covers_seed_and_test_spread():
    """One seed: the interval is the test-sentence binomial one (half-width ~ 1.96 sqrt(p(1-p)/N)); seeds that
    disagree widen it; a paired difference of identical predictions is exactly 0."""
    from ntkcheck.realmodels.metrics import bootstrap_stat

    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 1000)
    a = np.where(rng.random((1, 1000)) < 0.8, y, 1 - y)
    v, (lo, hi) = bootstrap_stat({"a": a}, y, "acc", lambda m: m["a"])
    p = (a == y).mean()
    assert v == pytest.approx(100 * p) and (hi - lo) / 2 == pytest.approx(196 * np.sqrt(p * (1 - p) / 1000), rel=0.15)
    spread = np.stack([np.where(rng.random(1000) < q, y, 1 - y) for q in (0.6, 0.8, 0.95)])
    _, (lo3, hi3) = bootstrap_stat({"a": spread}, y, "acc", lambda m: m["a"])
    assert hi3 - lo3 > 2 * (hi - lo)
    d, (dlo, dhi) = bootstrap_stat({"a": spread, "b": spread.copy()}, y, "acc", lambda m: m["a"] - m["b"])
    assert d == dlo == dhi == 0.0
    # the seed weights alone: seeds that differ by a constant shift, every test sentence alike, so the
    # interval is that of resampling three seed means (0, 50, 100): its extremes are reachable, its middle 50
    same = np.stack([np.zeros(10, int), np.r_[np.ones(5, int), np.zeros(5, int)], np.ones(10, int)])
    v, (lo, hi) = bootstrap_stat({"a": same}, np.ones(10, int), "acc", lambda m: m["a"], n_boot=4000)
    assert v == 50.0 and lo <= 100 / 3 + 1e-9 and hi >= 200 / 3 - 1e-9
    # F1: the point value is the per-seed mean of f1_binary
    from ntkcheck.realmodels.metrics import f1_binary

    f, _ = bootstrap_stat({"a": spread}, y, "f1", lambda m: m["a"])
    assert f == pytest.approx(np.mean([f1_binary(r, y) for r in spread]), abs=1e-9)


def test_seeds_needed_splits_the_interval_into_seeds_and_test_sentences():
    """metrics.seeds_needed: seeds that agree need one seed when the test set's own half-width is under h and
    none suffices when it is over; seeds of 70 / 80 / 90% (sigma^2 = 100) need ceil(sigma^2 / ((h / z)^2 -
    v_test)) with v_test = Var_i(mean_s correct_si) / N for accuracy; at 20 seeds the predicted half-width is
    the bootstrap interval's; one seed cannot tell the spread."""
    import math

    from ntkcheck.realmodels.metrics import bootstrap_stat, seeds_needed

    z = 1.959963984540054
    y = np.zeros(10000, int)
    alike = np.stack([np.r_[np.zeros(8000, int), np.ones(2000, int)]] * 3)   # 80% on every seed
    b = seeds_needed(alike, y, "acc")
    assert b["sd_seeds"] == 0.0 and b["seeds_needed"] == 1
    assert b["halfwidth_test"] == pytest.approx(100 * z * math.sqrt(0.16 / 10000), rel=0.1)
    small = seeds_needed(alike[:, ::100], y[::100], "acc")   # the same 80% on 100 sentences: +-7.8 alone
    assert small["seeds_needed"] == math.inf and small["why_none"] == "test set"
    assert small["test_needed"] == pytest.approx(1e4 * 0.16 * (z / 3) ** 2, rel=0.15)   # 683 sentences
    N = 1000
    nested = np.stack([np.r_[np.zeros(int(N * q), int), np.ones(N - int(N * q), int)] for q in (0.7, 0.8, 0.9)])
    b = seeds_needed(nested, np.zeros(N, int), "acc", halfwidth=3.0)
    cbar = (nested == 0).mean(0)
    v_test = 1e4 * cbar.var() / N   # (percent)^2
    assert b["sd_seeds"] == pytest.approx(10.0, abs=1e-9)
    v = (b["halfwidth_test"] / z) ** 2
    assert v == pytest.approx(v_test, rel=0.1)
    assert b["seeds_needed"] == math.ceil(100.0 / ((3.0 / z) ** 2 - v)) and 80 <= b["seeds_needed"] <= 90
    assert seeds_needed(nested, np.zeros(N, int), "acc", halfwidth=12.0)["seeds_needed"] == 3
    rng = np.random.default_rng(1)
    many = np.stack([(rng.random(N) > q).astype(int) for q in rng.uniform(0.65, 0.9, 20)])
    b = seeds_needed(many, np.zeros(N, int), "acc")
    _, (lo, hi) = bootstrap_stat({"a": many}, np.zeros(N, int), "acc", lambda m: m["a"])
    assert b["halfwidth_at_seeds"] == pytest.approx((hi - lo) / 2, rel=0.15)
    one = seeds_needed(nested[:1], np.zeros(N, int), "acc")
    assert one["seeds_needed"] != one["seeds_needed"] and one["why_none"] == "one seed"   # nan: no spread known
    with pytest.raises(ValueError, match="halfwidth 0"):
        seeds_needed(nested, np.zeros(N, int), "acc", halfwidth=0)


# ------------------------------------------------------------------ LoRA through peft
@pytest.mark.parametrize("arch", ["roberta", "gpt-neo", "llama"])
def test_peft_lora_kernel_equals_analytic_lora_kernel(tiny4, arch):
    """The eNTK of a peft LoRA model's adapters at B = 0 equals lora_kernel on the base model with the same
    A ([KV] Lemma D.4) for float64, to 1e-12; alpha enters squared (alpha / r = 2 gives 4x)."""
    from ntkcheck.models.kernels import empirical_kernel, lora_kernel
    from ntkcheck.realmodels.adapters import load_pretrained, make_adapter
    from ntkcheck.realmodels.data import Example
    from ntkcheck.realmodels.lora import LoRASpec, lora_pairs
    from ntkcheck.realmodels.tasks import get_task

    model, tok, mode = load_pretrained(tiny4[arch])
    base = make_adapter(model, tok, mode, task=get_task("sst2"))
    la = make_adapter(model, tok, mode, task=get_task("sst2"), lora=LoRASpec(3, alpha=6.0, seed=1))
    assert all(".lora_" in n for n in la.select) and len(la.select) == 2 * 2 * 2   # q, v of 2 layers: A, B
    x = base.encode([Example("a great movie", None, 1), Example("bad and boring film", None, 0)])
    proj = {k.replace(".base_layer", ""): la.params[a] for k, (a, b) in lora_pairs(la.params).items()}
    assert all(float(la.params[b].abs().max()) == 0 for a, b in lora_pairs(la.params).values())
    K_peft = empirical_kernel(la.f, {k: v.double() for k, v in la.params.items()}, x, select=la.select,
                              method="jacobian")
    K_ana = lora_kernel(base.f, {k: v.double() for k, v in base.params.items()}, x, rank=3, scale=2.0,
                        select=list(proj), projections=proj)
    assert float(K_peft.abs().max()) > 0
    assert torch.allclose(K_peft, K_ana, rtol=1e-12, atol=1e-12 * float(K_ana.abs().max()))
    # A ~ N(0, 1/r): E[A^T A] = I, so the mean square entry is 1/r
    A = torch.cat([v.reshape(-1) for v in proj.values()])
    assert float(A.pow(2).mean()) == pytest.approx(1 / 3, rel=0.15)


def test_lora_bad_input(tiny4):
    from ntkcheck.realmodels.adapters import load_pretrained, make_adapter
    from ntkcheck.realmodels.lora import LoRASpec
    from ntkcheck.realmodels.tasks import get_task

    model, tok, mode = load_pretrained(tiny4["llama"])
    with pytest.raises(UserError, match=r"--lora-targets nope: no linear layer.*q_proj"):
        make_adapter(model, tok, mode, task=get_task("sst2"), lora=LoRASpec(2, targets=("nope",)))
    with pytest.raises(UserError, match="--params .* with --lora"):
        make_adapter(model, tok, mode, task=get_task("sst2"), params="layers", lora=LoRASpec(2))
    la = make_adapter(model, tok, mode, task=get_task("sst2"), lora=LoRASpec(2, targets=("o_proj",)))
    assert la.select and all("o_proj.lora_" in n for n in la.select)
    assert not any(".lora_" in n for n, _ in model.named_parameters())   # the loaded model is not modified
    from transformers.pytorch_utils import Conv1D

    from ntkcheck.realmodels.lora import linear_module_names

    assert linear_module_names(torch.nn.Sequential(torch.nn.Linear(2, 2), Conv1D(3, 2), torch.nn.ReLU())) == ["0", "1"]


# ------------------------------------------------------------------ loading by Hugging Face id
def _fake_cache(root, repo, folder, revision="main"):
    """The hub cache layout: models--org--name/{refs/<rev>, snapshots/<hash>/<files>}."""
    d = root / f"models--{repo.replace('/', '--')}"
    snap = d / "snapshots" / "0123abcd"
    snap.mkdir(parents=True)
    for f in folder.iterdir():
        (snap / f.name).write_bytes(f.read_bytes())
    (d / "refs").mkdir()
    (d / "refs" / revision).write_text("0123abcd")
    return snap


def test_model_by_hub_id_from_the_local_cache(tiny4, tmp_path, monkeypatch, data_dir):
    from ntkcheck.realmodels.weights import resolve_model

    snap = _fake_cache(tmp_path / "hub", "tiny-org/tiny-llama", tiny4["llama"])
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    assert resolve_model("tiny-org/tiny-llama").resolve() == snap.resolve()
    assert resolve_model(str(tiny4["llama"])) == tiny4["llama"]
    with pytest.raises(UserError, match=r"'tiny-org/absent' is not a folder or file, and not a model id in the "
                                        r"local Hugging Face cache"):
        resolve_model("tiny-org/absent")
    env = dict(os.environ, HF_HUB_CACHE=str(tmp_path / "hub"), NTKCHECK_PROGRESS="0", HF_HUB_OFFLINE="1")
    run = subprocess.run([sys.executable, "-m", "ntkcheck", "lm", "solve", "--model", "tiny-org/tiny-llama",
                          "--data", str(data_dir), "--k", "2", "--seeds", "13", "--test-max", "4",
                          "--out", str(tmp_path / "runs")], capture_output=True, text=True, env=env)
    assert run.returncode == 0, run.stderr[-2000:]
    assert (tmp_path / "runs" / "lm_solve_sst2_k2_tiny-llama" / "result.json").exists()   # named by the id


@pytest.mark.parametrize("argv,message", [
    (["--tasks", "sst2,nosuch"], "nosuch"),
    (["--tasks", "sst2", "--lora", "2", "--no-finetune"], "--lora compares LoRA-FT with FT"),
    (["--tasks", "sst2", "--lora", "2", "--params", "layers"], "--params 'layers' with --lora"),
    (["--tasks", "sst2", "--spectrum-samples", "100000"], "--spectrum-samples 100000"),
    (["--tasks", "sst2", "--model", "nobody/nothing"], "'nobody/nothing' is not a folder or file"),
    (["--tasks", "sst2", "--sketch-dim", "1024"], "--sketch-dim 1024 with a spectrum of 100 samples"),
])
def test_reproduce_bad_input_is_one_line(tiny4, data_dir, tmp_path, argv, message):
    argv = ["--model", str(tiny4["gpt-neo"])] + argv if "--model" not in argv else argv
    env = dict(os.environ, HF_HUB_CACHE=str(tmp_path / "empty-hub"), NTKCHECK_PROGRESS="0")
    run = subprocess.run([sys.executable, "-m", "ntkcheck", "lm", "reproduce", "--data", str(data_dir),
                          "--k", "2", "--seeds", "13", "--out", str(tmp_path / "runs"), *argv],
                         capture_output=True, text=True, env=env)
    assert run.returncode == 2 and "Traceback" not in run.stderr
    lines = [ln for ln in run.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and message in lines[0], run.stderr
    assert not list((tmp_path / "runs").glob("lm_reproduce_*/points"))   # refused before any work
