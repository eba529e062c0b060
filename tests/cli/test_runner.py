"""The run store and CLI: atomic resumable points, corrupt-file detection, result.json, bad input."""
import json

import pytest

from ntkcheck.checks.config import with_overrides
from ntkcheck.checks.fit import fit_exponent, ratio_ci
from ntkcheck.checks.sweep import grid, sweep
from ntkcheck.cli import main
from ntkcheck.result import Result, claim, measurement
from ntkcheck.store import ResultStore

SMALL = ["--widths", "16", "32", "64", "--seeds", "2", "--set", "archs=mlp", "--set", "optimizers=sgd"]


class Interrupt(Exception):
    pass


def test_interrupted_sweep_resumes_without_recomputing(tmp_path):
    store = ResultStore(tmp_path, "demo")
    points = grid(width=[8, 16, 32, 64], seed=range(2))
    calls = []

    def compute(pt, fail_at=None):
        if fail_at is not None and len(calls) == fail_at:
            raise Interrupt
        calls.append(dict(pt))
        return {"value": pt["width"] * 10 + pt["seed"]}

    with pytest.raises(Interrupt):
        sweep(store, points, lambda pt: compute(pt, fail_at=3))
    assert len(calls) == 3
    rows = sweep(store, points, compute)
    assert len(calls) == len(points)                      # only the 5 unfinished points ran
    assert [c["width"] for c in calls[3:]] == [16, 32, 32, 64, 64]
    assert [r["value"] for r in rows] == [p["width"] * 10 + p["seed"] for p in points]
    rows_again = sweep(store, points, compute)
    assert len(calls) == len(points) and rows_again == rows


@pytest.mark.parametrize("damage", ["truncate", "tamper", "garbage"])
def test_corrupt_point_is_detected_and_recomputed(tmp_path, damage, capsys):
    store = ResultStore(tmp_path, "demo")
    points = grid(width=[8, 16], seed=[0])
    sweep(store, points, lambda pt: {"value": float(pt["width"])})
    path = next(store.points_dir.glob("seed=0_width=8.json"))
    text = path.read_text()
    if damage == "truncate":
        path.write_text(text[: len(text) // 2])
    elif damage == "tamper":
        path.write_text(text.replace('"value":8.0', '"value":9.0').replace('"value": 8.0', '"value": 9.0'))
    else:
        path.write_bytes(b"\x00\xff not json")
    calls = []
    rows = sweep(store, points, lambda pt: calls.append(pt) or {"value": float(pt["width"])})
    err = capsys.readouterr().err.splitlines()
    assert err == [f"ntkcheck: recomputing {path}: unreadable or checksum mismatch"]   # one line, ntkcheck's own
    assert [c["width"] for c in calls] == [8]
    assert [r["value"] for r in rows] == [8.0, 16.0]


def test_no_temp_files_left_behind(tmp_path):
    store = ResultStore(tmp_path, "demo")
    sweep(store, grid(width=[8], seed=[0, 1]), lambda pt: {"v": 1})
    assert not [p for p in store.dir.rglob("*") if p.name.endswith(".tmp")]


def test_claim_relations_bands_and_verdict():
    def c(p, m, rel, tol=0.0, **kw):
        return claim("x", "x", predicted=p, measured=m, relation=rel, tolerance=tol, **kw)

    assert c(-0.5, -0.45, "==", 0.1).holds and not c(-0.5, -0.3, "==", 0.1).holds
    assert c(-0.5, -0.9, "<=", 0.1).holds and not c(-0.5, -0.3, "<=", 0.1).holds
    assert c(0.0, 0.4, ">", 0.25).holds and not c(0.0, 0.25, ">", 0.25).holds   # strict
    assert c(1.0, 0.96, ">=", 0.05).holds and not c(1.0, 0.94, ">=", 0.05).holds
    assert not c(0.0, float("nan"), "<=", 1.0).holds
    ok = c(-0.5, -0.45, "==", 0.1)
    assert (ok.relation, ok.predicted, ok.tolerance, ok.state) == ("==", -0.5, 0.1, "holds")
    r = Result("x", [ok, claim("c", "c", predicted=0, measured=0.5, relation=">", tolerance=0.1, control=True)])
    assert r.verdict == "pass"
    r.claims.append(claim("bad", "bad", predicted=0, measured=1, relation="==", tolerance=0.1))
    assert r.verdict == "fail"
    assert Result("m", [measurement("acc", "accuracy", 0.8)]).verdict == "measured"
    assert Result("empty", []).verdict == "measured"
    with pytest.raises(ValueError, match="'~'"):
        claim("x", "x", predicted=0, measured=0, relation="~")
    with pytest.raises(ValueError, match="duplicate claim ids"):
        Result("d", [ok, ok]).to_json()


def test_result_json_round_trip_and_nan_is_null():
    r = Result("x", [claim("a.b", "a", predicted=-0.5, measured=float("nan"), relation="<=", tolerance=0.1,
                           source="[ES] Lemma 1"), measurement("m", "m", 3.0)], kind="lm", config={"k": 16})
    obj = json.loads(json.dumps(r.to_json(), allow_nan=False))
    assert obj["claims"][0]["measured"] is None and obj["claims"][0]["source"] == "[ES] Lemma 1"
    back = Result.from_json(obj)
    assert [c.id for c in back.claims] == ["a.b", "m"] and back.kind == "lm" and back.verdict == "fail"
    assert back.claims[1].relation is None and back.claims[1].state == "measured"


def test_exponent_fit_recovers_power_law_and_ci_covers():
    import numpy as np

    rng = np.random.default_rng(0)
    x = np.repeat([64, 128, 256, 512, 1024], 6)
    seeds = np.tile(np.arange(6), 5)
    y = 3.0 * x**-0.5 * np.exp(0.05 * rng.standard_normal(len(x)))
    fit = fit_exponent(x, y, seeds)
    assert fit.slope == pytest.approx(-0.5, abs=0.03)
    assert fit.ci[0] < -0.5 < fit.ci[1] and fit.ci[1] - fit.ci[0] < 0.1
    exact = fit_exponent([1, 2, 4, 8], [5, 10, 20, 40])
    assert exact.slope == pytest.approx(1.0, abs=1e-12)


def test_ratio_ci_is_the_ratio_of_sums_and_ignores_a_near_zero_denominator():
    import numpy as np

    r, (lo, hi) = ratio_ci([2.0, 4.0, 6.0], [1.0, 2.0, 3.0])
    assert r == 2.0 and lo == pytest.approx(2.0, abs=1e-12) and hi == pytest.approx(2.0, abs=1e-12)
    # effects 1 - O(remainder) with one seed's effect near zero (the task_arithmetic negation case):
    # its own ratio is 0.87, the mean of ratios 0.97 with a wide interval, the ratio of sums 0.995
    num, den = [0.028, 0.221, 1.915, 3.536, 0.541], [0.032, 0.221, 1.922, 3.555, 0.542]
    r, (lo, hi) = ratio_ci(num, den)
    assert r == pytest.approx(sum(num) / sum(den), rel=1e-12) and lo <= r <= hi and 0.98 < lo and hi < 1.0
    assert np.mean(np.divide(num, den)) < 0.975
    assert all(np.isnan(v) for v in (ratio_ci([], [])[0], *ratio_ci([1.0], [1.0])[1], ratio_ci([1.0], [0.0])[0]))


def test_cli_run_writes_contract_and_reruns_fast(tmp_path, capsys):
    out = tmp_path / "runs"
    assert main(["run", "tp_scaling", "--quick", "--out", str(out), *SMALL]) == 0
    result = json.loads((out / "tp_scaling" / "result.json").read_text())
    assert set(result) == {"name", "kind", "version", "verdict", "config", "claims", "provenance"}
    assert result["name"] == "tp_scaling" and result["kind"] == "check"
    assert result["verdict"] in ("pass", "fail", "inconclusive")
    assert result["config"]["widths"] == [16, 32, 64] and result["config"]["seeds"] == 2
    assert set(result["claims"][0]) == {"id", "name", "relation", "predicted", "tolerance", "measured", "ci",
                                        "state", "control", "source"}
    assert set(result["provenance"]) == {"ntkcheck", "git", "source", "python", "torch", "transformers", "device",
                                         "world_size", "seconds", "started"}
    assert (out / "tp_scaling" / "measurements.csv").read_text().startswith("arch,")
    assert (out / "tp_scaling" / "coordinate_check.png").stat().st_size > 1000
    assert "| tp_scaling |" in (out / "report.md").read_text()
    points = sorted((out / "tp_scaling" / "points").rglob("*.json"))
    mtimes = [p.stat().st_mtime_ns for p in points]
    assert main(["run", "tp_scaling", "--quick", "--out", str(out), *SMALL]) == 0
    assert [p.stat().st_mtime_ns for p in points] == mtimes  # nothing recomputed
    assert json.loads((out / "tp_scaling" / "result.json").read_text())["claims"] == result["claims"]
    # widening the sweep reuses finished points and computes only the new width
    assert main(["run", "tp_scaling", "--quick", "--out", str(out), *SMALL[:4], "128", *SMALL[4:]]) == 0
    assert [p.stat().st_mtime_ns for p in points] == mtimes
    assert len(list((out / "tp_scaling" / "points").rglob("*.json"))) > len(points)


def test_cli_run_jobs_runs_checks_in_processes_and_reports_each(tmp_path, capsys):
    """`ntkcheck run --jobs 2` with two quick checks: each result written and passing, each shown once
    when it finishes, one report over both (the results equal one process's: tests/checks/test_workers.py)."""
    out = tmp_path / "runs"
    assert main(["run", "signgd_kernel", "jl_subspace", "--quick", "--jobs", "2", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "running 2 checks in 2 processes" in text
    for name in ("signgd_kernel", "jl_subspace"):
        assert text.count(f"== {name}:") == 1
        assert json.loads((out / name / "result.json").read_text())["verdict"] == "pass"
        assert f"| {name} |" in (out / "report.md").read_text()


@pytest.mark.parametrize("argv, fragment", [
    (["run", "nosuchcheck"], "'nosuchcheck'"),
    (["run", "tp_scaling", "--widths", "0"], "'0'"),
    (["run", "tp_scaling", "--widths", "-8"], "'-8'"),
    (["run", "tp_scaling", "--widths", "3.5"], "'3.5'"),
    (["run", "tp_scaling", "--widths", "abc"], "'abc'"),
    (["run", "tp_scaling", "--set", "nonsense"], "'nonsense'"),
    (["run", "tp_scaling", "--set", "=3"], "'=3'"),
    (["run", "tp_scaling", "--set", "steps=two"], "'two'"),
    (["run", "tp_scaling", "--set", "nosuchkey=1"], "'nosuchkey'"),
    (["run", "tp_scaling", "--seeds", "0"], "'0'"),
    (["run", "tp_scaling", "--set", "params=XYZ"], "'XYZ'"),
    (["frobnicate"], "frobnicate"),
])
def test_bad_input_is_one_line_and_exit_2(argv, fragment, capsys, tmp_path):
    assert main([*argv, "--out", str(tmp_path)] if argv[0] == "run" else argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("ntkcheck: error:") and fragment in err


def test_unwritable_out_is_one_line_and_exit_2(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    assert main(["run", "tp_scaling", "--out", str(blocker / "sub")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(blocker / "sub") in err


def test_list_and_report(tmp_path, capsys):
    assert main(["list"]) == 0
    assert "tp_scaling" in capsys.readouterr().out
    assert main(["report", str(tmp_path / "missing")]) == 2
    assert main(["report", str(tmp_path)]) == 0
    assert "No results" in (tmp_path / "report.md").read_text()


def test_widths_reach_every_width_axis_and_skip_checks_without_one(capsys):
    from ntkcheck.checks import get

    lin = with_overrides(get("linearization").default_config(quick=True), widths=[16, 32], seeds=2)
    assert lin.widths == (16, 32) and lin.attn_widths == (16, 32) and lin.seeds == 2
    es = with_overrides(get("early_stopping").default_config(quick=True), widths=[16, 32], seeds=2)
    assert es.sample_sizes == get("early_stopping").default_config(quick=True).sample_sizes
    assert es.seeds == 2 and es.mlp_seeds == 2


def test_changing_one_width_axis_keeps_the_other_axis_points(tmp_path):
    out = tmp_path / "runs"
    base = ["run", "tp_scaling", "--quick", "--out", str(out), "--seeds", "2", "--set", "optimizers=sgd",
            "--set", "params=NTK", "--set", "widths=16,32"]
    assert main([*base, "--set", "attn_widths=16,32"]) == 0
    mlp = sorted((out / "tp_scaling" / "points").rglob("arch=mlp*.json"))
    mtimes = [p.stat().st_mtime_ns for p in mlp]
    assert main([*base, "--set", "attn_widths=16,32,64"]) == 0
    assert sorted((out / "tp_scaling" / "points").rglob("arch=mlp*.json")) == mlp
    assert [p.stat().st_mtime_ns for p in mlp] == mtimes      # MLP points kept


def test_report_covers_checks_and_lm_measurements_alike(tmp_path, capsys):
    store = ResultStore(tmp_path, "lm_solve_sst2_k16_tiny")
    store.write_result(Result("lm_solve_sst2_k16_tiny", [measurement("sst2.zero_shot", "zero-shot accuracy", 51.0),
                                                          claim("sst2.k_sgd_beats_zero_shot", "K(SGD) > zero-shot",
                                                                predicted=51.0, measured=78.1, relation=">")],
                              kind="lm"))
    ResultStore(tmp_path, "tp_scaling").write_result(
        Result("tp_scaling", [claim("a", "slope", predicted=-0.5, measured=-0.48, relation="==", tolerance=0.15)]))
    assert main(["report", str(tmp_path)]) == 0
    text = (tmp_path / "report.md").read_text()
    assert "| tp_scaling | check | **pass** | 1/1 |" in text
    assert "| lm_solve_sst2_k16_tiny | lm | **pass** | 1/1 |" in text and "zero-shot accuracy" in text


@pytest.mark.parametrize("content", ["{}", '{"name": "x", "kind": "check"}', "not json",
                                     '{"name": "x", "kind": "check", "claims": [{"name": "c"}]}'])
def test_report_on_a_bad_result_file_is_one_line(tmp_path, capsys, content):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "result.json").write_text(content)
    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "result.json" in err and "Traceback" not in err


def test_report_on_a_file_says_so(tmp_path, capsys):
    f = tmp_path / "result.json"
    f.write_text("{}")
    assert main(["report", str(f)]) == 2
    assert "is a file" in capsys.readouterr().err


def test_no_command_prints_the_commands_and_version(capsys):
    assert main([]) == 0
    out = capsys.readouterr().out
    assert all(c in out for c in ("run", "report", "coord", "list"))
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.startswith("ntkcheck ")
