"""Fine-tuning, behavior, spectrum and task vectors on a tiny model: they run, resume and write the store."""
import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from ntkcheck.realmodels.experiment import LMConfig, iter_sessions
from ntkcheck.realmodels.finetune import FTConfig

pytestmark = pytest.mark.hf

FT = FTConfig(optimizers=("sgd", "adam"), lrs_sgd=(0.5,), lrs_adam=(0.05,), batch_sizes=(2,), steps=6, eval_every=3)


def _cfg(tiny_models, separable_dir, tmp_path, **kw):
    base = dict(model=str(tiny_models["gpt-neo"]), task="sst2", data=str(separable_dir), k=2, seeds=(13,),
                test_max=None, out=str(tmp_path), params=r"h\.1\.")
    base.update(kw)
    return LMConfig(**base)


def test_finetune_learns_and_resumes(tiny_models, separable_dir, tmp_path):
    from ntkcheck.realmodels.finetune import load_params, run_finetune, test_predictions

    sess = next(iter_sessions(_cfg(tiny_models, separable_dir, tmp_path), "lm_finetune"))
    best = run_finetune(sess, FT)
    assert set(best) == {("sgd", 13), ("adam", 13)}
    test = sess.index[13]["test"]
    for b in best.values():
        assert b["test"] == 100.0 and b["steps"] == 6
        theta = load_params(__import__("pathlib").Path(b["params_path"]), sess.adapter.trainable)
        assert any(not torch.equal(theta[k], sess.adapter.params[k]) for k in theta)  # it moved
        assert set(theta) == set(sess.adapter.select)                                # only what --params chose
        # the point keeps theta_FT's test predictions (100%: the labels); a point without them is evaluated
        pred = sess.adapter.outputs(sess.x_rows[test], theta).argmax(-1).tolist()
        assert b["test_pred"] == pred == sess.labels[test].tolist()
        older = {k: v for k, v in b.items() if k != "test_pred"}
        assert test_predictions(sess, older, 13) == test_predictions(sess, b, 13) == pred
    assert run_finetune(sess, FT) == best  # second call loads every point


def test_finetune_cmd_table_result_and_best_csv(tiny_models, data_dir, tmp_path):
    """`lm finetune` end to end: Table 2 rows per optimizer, result.json measurements whose interval covers
    seeds and test sentences (metrics.bootstrap_stat over the stored test predictions), best.csv without them."""
    import csv

    from ntkcheck.realmodels.measure import finetune_cmd
    from ntkcheck.realmodels.metrics import bootstrap_stat

    cfg = LMConfig(model=str(tiny_models["gpt-neo"]), task="sst2", data=str(data_dir), k=2, seeds=(13, 21),
                   test_max=40, out=str(tmp_path), params=r"h\.1\.")
    res = finetune_cmd(cfg, FT)
    assert "| 2 | SGD-FT |" in res["table"] and "Adam-FT" in res["table"]
    sess = next(iter_sessions(cfg, "lm_finetune"))
    y = sess.labels[sess.index[13]["test"]].numpy()
    for opt in ("sgd", "adam"):
        preds = [res["best"][(opt, s)]["test_pred"] for s in (13, 21)]
        c = res["result"].claim(f"sst2.ft_{opt}.test")
        value, ci = bootstrap_stat({"m": preds}, y, "acc", lambda v: v["m"])
        assert c.measured == pytest.approx(np.mean([res["best"][(opt, s)]["test"] for s in (13, 21)]))
        assert (c.measured, *c.ci) == pytest.approx((value, *ci)) and ci[0] < ci[1]
    with open(tmp_path / "lm_finetune_sst2_k2_gpt-neo" / "best.csv") as fh:
        header = next(csv.reader(fh))
    assert "test" in header and "test_pred" not in header
    # details.json keeps each best point's dev curve (which evaluation the dev set chose, and by how much)
    import json
    best = json.loads((tmp_path / "lm_finetune_sst2_k2_gpt-neo" / "details.json").read_text())["best"]
    assert len(best) == 4 and all("test_pred" not in r and [s for s, _ in r["dev_curve"]] == [3, 6] for r in best)


def test_every_command_shares_the_fine_tuning_points(tiny_models, data_dir, tmp_path, monkeypatch):
    """What `lm finetune` trained, `lm behavior` and `lm taskvec` read from the same folder without training
    again; a seed `lm finetune` did not train is trained once, by the first command that needs it, into that
    folder."""
    from ntkcheck.realmodels import finetune
    from ntkcheck.realmodels.measure import behavior_cmd, finetune_cmd

    cfg = LMConfig(model=str(tiny_models["gpt-neo"]), task="sst2", data=str(data_dir), k=2, seeds=(13,),
                   test_max=8, out=str(tmp_path), params=r"h\.1\.")
    trained = finetune_cmd(cfg, FT)["best"]
    real, calls = finetune.fine_tune, []
    monkeypatch.setattr(finetune, "fine_tune", lambda *a, **k: calls.append(k["seed"]) or real(*a, **k))
    rows = behavior_cmd(cfg, FT, distance_samples=0)["rows"]
    assert calls == []
    assert {(r["optimizer"], r["ft"]) for r in rows} == {(o, trained[(o, 13)]["test"]) for o in ("sgd", "adam")}
    behavior_cmd(replace(cfg, seeds=(13, 21)), FT, distance_samples=0)
    assert calls == [21, 21]   # seed 21, once per optimizer
    assert finetune_cmd(replace(cfg, seeds=(13, 21)), FT)["best"][("adam", 21)]["test"] is not None
    assert calls == [21, 21]
    points = list((tmp_path / "lm_finetune_sst2_k2_gpt-neo" / "points").glob("*/*.json"))
    assert len(points) == 4 and not list((tmp_path / "lm_behavior_sst2_k2_gpt-neo").glob("points/*/params"))


def test_a_countsketched_run_reads_what_the_exact_run_stored(tiny_models, data_dir, tmp_path, monkeypatch):
    """--sketch-dim changes the kernels only: after an exact `lm behavior`, a countsketched `lm behavior` and `lm
    reproduce` without a kernel distance train nothing and measure no behavior point again (they read the
    fine-tunings and the linearized models of the exact run, the same numbers); with a kernel distance a
    countsketched run measures its own points, from the same fine-tunings."""
    from ntkcheck.realmodels import finetune, measure
    from ntkcheck.realmodels.measure import behavior_cmd
    from ntkcheck.realmodels.reproduce import ReproduceOptions, reproduce

    cfg = LMConfig(model=str(tiny_models["gpt-neo"]), task="sst2", data=str(data_dir), k=2, seeds=(13,),
                   test_max=8, out=str(tmp_path), params=r"h\.1\.")
    exact = behavior_cmd(cfg, FT, distance_samples=0)["rows"]
    real_ft, real_chi, trained, measured = finetune.fine_tune, measure.output_derivative, [], []
    monkeypatch.setattr(finetune, "fine_tune", lambda *a, **k: trained.append(k["seed"]) or real_ft(*a, **k))
    monkeypatch.setattr(measure, "output_derivative", lambda *a: measured.append(1) or real_chi(*a))
    sketched = replace(cfg, sketch_dim=64)
    rows = behavior_cmd(sketched, FT, distance_samples=0)["rows"]
    assert trained == [] and measured == []
    assert [(r["optimizer"], r["lin"], r["ft"], r["lin_pred"]) for r in rows] == \
        [(r["optimizer"], r["lin"], r["ft"], r["lin_pred"]) for r in exact]
    run = reproduce(sketched, ReproduceOptions(tasks=("sst2",), finetune=FT, spectrum_samples=0, distance_samples=0,
                                               task_vectors=False))
    assert trained == [] and measured == []
    assert run["dir"].endswith("_cs64")   # its result in its own folder; the points in the shared ones
    assert np.asarray(run["per_task"]["sst2"]["preds"]["lin_sgd"]).tolist() == \
        [r["lin_pred"] for r in exact if r["optimizer"] == "sgd"]
    assert [r["lin"] for r in run["per_task"]["sst2"]["behavior"]] == [r["lin"] for r in exact]
    with_distance = behavior_cmd(sketched, FT, distance_samples=2)["rows"]
    assert trained == [] and len(measured) == 2   # one point per optimizer, sketched kernel distance
    assert [r["lin"] for r in with_distance] == [r["lin"] for r in exact]
    assert not (tmp_path / "lm_finetune_sst2_k2_gpt-neo_cs64").exists()
    assert not list((tmp_path / "lm_behavior_sst2_k2_gpt-neo_cs64").glob("points/*"))


def test_fine_tunings_stored_under_a_kernel_dtype_and_method_serve_every_kernel_setting(tiny_models, data_dir,
                                                                                        tmp_path, monkeypatch):
    """Fine-tuning and the behavior measured without a kernel read no kernel setting. Points that earlier code
    bound to the kernel dtype and method (moved here to those bindings) are read by a run with another dtype and
    method: nothing is trained or measured again, the numbers are the same, and the parameters are linked, not
    copied."""
    import os

    from ntkcheck.realmodels import finetune, measure
    from ntkcheck.realmodels.finetune import ft_schedule
    from ntkcheck.realmodels.measure import behavior_cmd
    from ntkcheck.store import ResultStore

    cfg = LMConfig(model=str(tiny_models["gpt-neo"]), task="sst2", data=str(data_dir), k=2, seeds=(13,),
                   test_max=8, out=str(tmp_path), params=r"h\.1\.", kernel_dtype="float64")
    first = behavior_cmd(cfg, FT, distance_samples=0)["rows"]
    sess = next(iter_sessions(cfg, "lm_behavior"))
    steps, every = ft_schedule(sess, FT)
    legacy = sess.formerly(sess.finetune_fields()) | {"kernel_dtype": "float64", "method": "auto"}   # before 12-06
    for store, binding, version in ((sess.finetune_store(), {"finetune": legacy, "steps": steps, "every": every}, 1),
                                    (sess.behavior_store(), {"behavior": legacy, "distance_samples": 0}, 2)):
        (now,) = (store.dir / "points").iterdir()
        former = ResultStore(tmp_path, store.name)
        former.bind(binding, version)
        now.rename(former.points_dir)
    real_ft, real_chi, trained, measured = finetune.fine_tune, measure.output_derivative, [], []
    monkeypatch.setattr(finetune, "fine_tune", lambda *a, **k: trained.append(k["seed"]) or real_ft(*a, **k))
    monkeypatch.setattr(measure, "output_derivative", lambda *a: measured.append(1) or real_chi(*a))
    rows = behavior_cmd(replace(cfg, kernel_dtype="float32", method="jacobian"), FT, distance_samples=0)["rows"]
    assert trained == [] and measured == []
    assert [(r["optimizer"], r["lin"], r["ft"], r["lin_pred"]) for r in rows] == \
        [(r["optimizer"], r["lin"], r["ft"], r["lin_pred"]) for r in first]
    params = sorted((tmp_path / sess.finetune_store().name / "points").glob("*/params/*.pt"))
    assert len(params) == 4 and len({os.stat(q).st_ino for q in params}) == 2   # sgd and adam, each linked


def test_finetune_of_a_seed_does_not_depend_on_the_other_seeds(tiny_models, data_dir, tmp_path):
    """A seed's fine-tuning is the same whichever seeds share its session: the session pads every row to its
    longest (31 tokens here against 24 for seed 13 alone), and training batches are trimmed to their own longest
    row, so the trained tensors and the test outputs agree bitwise (TREC, real questions of unequal length)."""
    from ntkcheck.realmodels.finetune import fine_tune

    got = []
    for seeds in ((13,), (13, 21, 42)):
        cfg = LMConfig(model=str(tiny_models["gpt-neo"]), task="trec", data=str(data_dir), k=4, seeds=seeds,
                       test_max=50, out=str(tmp_path / "-".join(map(str, seeds))))
        sess = next(iter_sessions(cfg, "lm_finetune"))
        ix, y = sess.index[13], sess.labels
        best, log = fine_tune(sess.adapter, sess.x_rows[ix["train"]], y[ix["train"]], sess.x_rows[ix["dev"]],
                              y[ix["dev"]], optimizer="sgd", lr=0.5, batch_size=4, steps=12, eval_every=4, seed=13)
        got.append((sess.x_rows.shape[-1], best, log, sess.adapter.outputs(sess.x_rows[ix["test"]], best)))
    (t1, p1, log1, out1), (t3, p3, log3, out3) = got
    assert t1 < t3                                   # the two sessions pad differently
    assert log1 == log3
    # the log's dev curve has every evaluation, and the choice is the first of its best
    steps, devs = zip(*log1["dev_curve"])
    assert steps == (4, 8, 12) and log1["dev"] == max(devs) and log1["best_step"] == steps[devs.index(max(devs))]
    assert all(torch.equal(p1[k], p3[k]) for k in p1) and torch.equal(out1, out3)
    assert any(not torch.equal(p1[k], sess.adapter.params[k]) for k in p1)   # it trained


def test_behavior_chi_and_distance(tiny_models, separable_dir, tmp_path):
    from ntkcheck.realmodels.measure import behavior_cmd, output_derivative

    chi = output_derivative(torch.tensor([[0.0, 0.0], [2.0, 0.0]]), torch.tensor([0, 1]))
    torch.testing.assert_close(chi.abs().amax(-1), torch.tensor([0.5, 1 / (1 + np.exp(-2.0))],
                                                                dtype=torch.float64))
    res = behavior_cmd(_cfg(tiny_models, separable_dir, tmp_path), FT, distance_samples=2)
    for opt in ("sgd", "adam"):
        s = res["summary"][opt]
        assert s["ft"]["mean"] == 100.0 and 0 <= s["chi_mean"]["mean"] <= 1
        assert np.isfinite(s["kernel_distance"]["mean"]) and s["kernel_distance"]["mean"] > 0
        assert 0 <= s["lin"]["mean"] <= 100
    assert "Adam-FT" in res["table"] and (tmp_path / "lm_behavior_sst2_k2_gpt-neo" / "measurements.csv").exists()
    assert res["result"].claim("adam.kernel_distance").source == "[KV] Table 6"


def test_behavior_without_distance_and_its_intervals(tiny_models, separable_dir, tmp_path, monkeypatch):
    """--distance-samples 0 computes no kernel (the rows carry no distance, the table says "not measured"); the
    test metrics' intervals are the bootstrap over seeds and test sentences, and the table says how many seeds
    +-3 needs for each of zero-shot, Lin. and FT."""
    from ntkcheck.models import kernels
    from ntkcheck.realmodels.measure import behavior_cmd
    from ntkcheck.realmodels.metrics import bootstrap_stat

    calls = []
    monkeypatch.setattr(kernels, "kernel_distance", lambda *a, **k: calls.append(1))
    cfg = _cfg(tiny_models, separable_dir, tmp_path, seeds=(13, 21))
    res = behavior_cmd(cfg, FT, distance_samples=0)
    assert calls == [] and all("kernel_distance" not in r and "kernel" not in r for r in res["rows"])
    assert set(res["summary"]["sgd"]) == {"zero_shot", "lin", "ft", "lin_gain_fraction", "chi_mean"}
    assert "not measured" in res["table"] and "Lin. (SGD-FT)" in res["table"] and "Lin. (Adam-FT)" in res["table"]
    with pytest.raises(KeyError):
        res["result"].claim("sgd.kernel_distance")
    sess = next(iter_sessions(cfg, "lm_behavior"))
    y = sess.test_labels()
    sel = [r for r in res["rows"] if r["optimizer"] == "sgd"]
    value, ci = bootstrap_stat({"m": [r["lin_pred"] for r in sel]}, y, "acc", lambda v: v["m"])
    lin = res["result"].claim("sgd.lin")
    assert lin.measured == pytest.approx(value) and tuple(lin.ci) == pytest.approx(ci)
    assert "over seeds and test sentences" in lin.name
    assert value == pytest.approx(np.mean([r["lin"] for r in sel]))
    details = json.loads((tmp_path / "lm_behavior_sst2_k2_gpt-neo" / "details.json").read_text())
    assert set(details["seeds_needed"]) == {"zero_shot", "lin_sgd", "ft_sgd", "lin_adam", "ft_adam"}
    assert details["seeds_needed"]["lin_sgd"]["seeds"] == 2


def test_behavior_points_are_named_by_the_fine_tuning_they_measure(tiny_models, separable_dir, tmp_path,
                                                                   monkeypatch):
    """Adding Adam to an SGD-only grid computes Adam's behavior point only, and the SGD point read back is the
    one stored; a grid point the dev set chooses instead (another lr) is a new point."""
    from dataclasses import replace

    from ntkcheck.models import kernels
    from ntkcheck.realmodels.measure import behavior_cmd

    calls = []
    real = kernels.kernel_distance
    monkeypatch.setattr(kernels, "kernel_distance", lambda *a, **k: calls.append(1) or real(*a, **k))
    cfg = _cfg(tiny_models, separable_dir, tmp_path)
    sgd = behavior_cmd(cfg, replace(FT, optimizers=("sgd",)), distance_samples=2)
    assert len(calls) == 2   # one point: the elementwise and the Frobenius distance
    both = behavior_cmd(cfg, FT, distance_samples=2)
    assert len(calls) == 4   # Adam's point only
    assert both["summary"]["sgd"] == sgd["summary"]["sgd"]
    behavior_cmd(cfg, replace(FT, optimizers=("sgd",), lrs_sgd=(0.25,)), distance_samples=2)   # another lr
    assert len(calls) == 6


def test_spectrum_beta(tiny_models, data_dir, tmp_path):
    from ntkcheck.realmodels.measure import spectrum_cmd

    cfg = _cfg(tiny_models, data_dir, tmp_path, seeds=(13, 21), params=r"h\.1\.mlp")
    res = spectrum_cmd(cfg, samples=6, reduce="trace")
    assert len(res["rows"]) == 2 and all(np.isfinite(r["beta"]) and r["n_eigs"] == 6 for r in res["rows"])
    out = tmp_path / "lm_spectrum_sst2_k2_gpt-neo"
    assert (out / "spectrum.png").exists()
    assert json.loads((out / "details.json").read_text())["summary"]["beta_mean"] == res["summary"]["beta_mean"]
    beta = json.loads((out / "result.json").read_text())["claims"][0]
    assert beta["id"] == "sst2.beta" and beta["measured"] == pytest.approx(res["summary"]["beta_mean"])
    assert beta["predicted"] is None and beta["state"] == "measured"


def test_task_vectors(tiny_models, data_dir, tmp_path):
    from ntkcheck.realmodels.measure import taskvec_cmd

    cfg = _cfg(tiny_models, data_dir, tmp_path, k=1, test_max=4)
    ft = FTConfig(optimizers=("sgd",), lrs_sgd=(0.1,), batch_sizes=(2,), steps=2, eval_every=2)
    res = taskvec_cmd(cfg, ft, ["sst2", "subj"])
    cos = res["cosine"]
    assert cos.shape == (2, 2) and np.allclose(np.diag(cos), 1.0) and abs(cos[0, 1]) <= 1 + 1e-9
    assert {r["task"] for r in res["rows"]} == {"sst2", "subj"}
    out = tmp_path / "lm_taskvec_sst2-subj_k1_gpt-neo"
    assert (out / "cosine.png").exists()
    assert res["result"].claim("cos.sst2.subj").measured == pytest.approx(cos[0, 1])


def test_task_vectors_check_every_prompt_before_training(tiny_models, data_dir, tmp_path, monkeypatch):
    """A task whose prompt the model cannot read (here subj with [MASK] first, on a causal LM) is a UserError
    before the tasks before it are fine-tuned: a session saw SST-2, SST-5 and Subj trained for 14 minutes,
    then TREC's template refused."""
    from dataclasses import replace

    import ntkcheck.realmodels.finetune as finetune
    from ntkcheck.errors import UserError
    from ntkcheck.realmodels.measure import taskvec_cmd
    from ntkcheck.realmodels.tasks import TASKS

    monkeypatch.setitem(TASKS, "subj", replace(TASKS["subj"], template="[MASK] : <S1>", causal_template=None))
    monkeypatch.setattr(finetune, "run_finetune", lambda *a, **k: pytest.fail("trained before every prompt was read"))
    cfg = _cfg(tiny_models, data_dir, tmp_path, k=1, test_max=4)
    ft = FTConfig(optimizers=("sgd",), lrs_sgd=(0.1,), batch_sizes=(2,), steps=2, eval_every=2)
    with pytest.raises(UserError, match=r"template '\[MASK\] : <S1>': a causal LM predicts"):
        taskvec_cmd(cfg, ft, ["sst2", "subj"])
