"""Bad input never reaches a traceback: one line `ntkcheck: error: ...`, exit 2, nothing written outside --out.

A hypothesis property generates command lines of `run`, `report`, `coord` and `lm` with one bad value
(numbers, names, paths, regular expressions, device strings, empty values, duplicates); the cases a new
user hit are named tests below it.
"""
from __future__ import annotations

import contextlib
import io
import os
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ntkcheck.cli import main

REPO = Path(__file__).resolve().parents[2]
DATA = next((p for p in (REPO.parent / "shared" / "data", REPO / ".." / "shared" / "data")
             if (p / "stsa.binary.train").exists()), None)


def run_cli(argv, cwd: Path) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of ntkcheck argv run in-process with the working folder ``cwd``."""
    out, err = io.StringIO(), io.StringIO()
    old = os.getcwd()
    os.chdir(cwd)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(argv)
            except SystemExit as e:  # argparse's own --help / --version only
                code = e.code
    finally:
        os.chdir(old)
    return code, out.getvalue(), err.getvalue()


def assert_one_line_error(code, err, fragment=None):
    assert code == 2, err
    lines = err.strip().splitlines()
    assert lines and lines[-1].startswith("ntkcheck: error: "), err
    assert len([line for line in lines if line.startswith("ntkcheck: error")]) == 1, err
    assert "Traceback" not in err
    if fragment is not None:
        assert fragment in lines[-1], lines[-1]


# ---------------------------------------------------------------- generated command lines
BAD_INTS = ["0", "-3", "x", "1.5", "", "nan", "1e9"]
RUN_BAD = ([["--widths", v] for v in ("0", "-8", "3.5", "abc", ",", "64,64", "1e9")]
           + [["--widths", "64", "64"]]
           + [["--seeds", v] for v in ("0", "-1", "x", "1.5", "")]
           + [["--set", v] for v in ("nonsense", "=3", "steps=two", "nosuchkey=1", "steps=-5", "activation=bogus",
                                     "widths=", "widths=64,64", "seeds=0", "seeds=1", "lr_sgd=-1", "lr_sgd=nan",
                                     "archs=bogus", "params=XYZ", "optimizers=", "layernorm=maybe",
                                     "tolerance=inf", "depth=0")]
           + [["--out", ""]])
LM_BAD = ([["--device", v] for v in ("tpu7", "cuda:x", "gpu", "")]
          + [["--method", "bogus"]]
          + [["--memory-gb", v] for v in ("-1", "0", "nan", "x", "inf")]
          + [["--k", v] for v in ("0", "-3", "x")]
          + [["--seeds", v] for v in ("", "x", "1.5")]
          + [["--test-max", "-1"], ["--block", "0"], ["--max-length", "2"], ["--mode", "bogus"]]
          + [["--params", v] for v in ("(", "[a-")]
          + [["--task", "bogus"], ["--kinds", "bogus"], ["--kinds", ""], ["--kernel-dtype", "float8"]]
          + [["--data", "{tmp}/no_data_here"], ["--model", "{tmp}/no_model_here"], ["--out", ""]])
LM_COMMANDS = ["kernel", "solve", "finetune", "behavior", "spectrum", "taskvec"]


def _lm_base(cmd: str, tmp: Path) -> list[str]:
    base = ["lm", cmd, "--model", str(tmp), "--task", "sst2", "--data", str(DATA), "--out", str(tmp / "out")]
    return base + (["--tasks", "sst2,subj"] if cmd == "taskvec" else [])


@settings(max_examples=60, deadline=None)
@given(which=st.sampled_from(["run", "lm", "report", "coord"]), i=st.integers(0, 10_000),
       check=st.sampled_from(["tp_scaling", "signgd_kernel", "linearization", "natural_task", "jl_subspace",
                              "early_stopping", "task_arithmetic"]),
       lm_cmd=st.sampled_from(LM_COMMANDS))
def test_generated_bad_command_lines_are_one_line_exit_2(which, i, check, lm_cmd):
    if which == "lm" and DATA is None:
        pytest.skip("shared data not found")
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        (tmp / "cwd").mkdir()
        if which == "run":
            bad = RUN_BAD[i % len(RUN_BAD)]   # a --set key the check lacks is bad input too
            argv = ["run", check, "--quick", "--out", str(tmp / "out"), *bad]
        elif which == "lm":
            bad = [v.format(tmp=tmp) for v in LM_BAD[i % len(LM_BAD)]]
            argv = _lm_base(lm_cmd, tmp) + bad
        elif which == "report":
            (tmp / "afile").write_text("x")
            argv = ["report", [str(tmp / "missing"), str(tmp / "afile"), ""][i % 3]]
        else:
            bad = [["--widths", "64", "64"], ["--widths", "0"], ["--steps", "0"], ["--lr", "-1"], ["--lr", "nan"],
                   ["--seeds", "0"], ["--optimizer", "rmsprop"], ["--tolerance", "-1"]][i % 8]
            argv = ["coord", f"{tmp}/nope.py:f" if i % 9 == 0 else "torch.nn:Linear", "--out", str(tmp / "out"),
                    *bad]
        code, _, err = run_cli(argv, tmp / "cwd")
        assert_one_line_error(code, err)
        assert not list((tmp / "cwd").iterdir())                   # nothing written outside --out
        written = [p for p in tmp.iterdir() if p.name not in ("cwd", "out", "afile")]
        assert not written, written


# ---------------------------------------------------------------- the cases a new user hit
def test_unknown_activation_and_arch(tmp_path):
    for argv, frag in ((["run", "signgd_kernel", "--set", "activation=bogus"], "activation='bogus'"),
                       (["run", "tp_scaling", "--set", "archs=bogus"], "archs='bogus'")):
        code, _, err = run_cli([*argv, "--quick", "--out", str(tmp_path / "o")], tmp_path)
        assert_one_line_error(code, err, frag)


@pytest.mark.parametrize("content, frag", [("{}", "not an ntkcheck result"),
                                           ('{"name": "x", "kind": "check", "claims": [{"name": "c", '
                                            '"predicted": 0, "measured": 1, "holds": true}]}', "lacks")])
def test_report_on_malformed_results(tmp_path, content, frag):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "result.json").write_text(content)
    code, _, err = run_cli(["report", str(tmp_path)], tmp_path)
    assert_one_line_error(code, err, frag)


@pytest.mark.skipif(DATA is None, reason="shared data not found")
@pytest.mark.parametrize("flag, value, frag", [("--device", "tpu7", "'tpu7'"), ("--method", "bogus", "'bogus'"),
                                               ("--memory-gb", "-1", "'-1'")])
def test_lm_options_checked_before_loading(tmp_path, flag, value, frag):
    code, _, err = run_cli(_lm_base("kernel", tmp_path) + [flag, value], tmp_path)
    assert_one_line_error(code, err, frag)


def test_duplicate_widths_negative_steps_and_empty_out(tmp_path):
    code, _, err = run_cli(["run", "tp_scaling", "--quick", "--widths", "64", "64", "--out", str(tmp_path / "o")],
                           tmp_path)
    assert_one_line_error(code, err, "width 64 is given twice")
    code, _, err = run_cli(["run", "linearization", "--quick", "--set", "pt_steps=-5", "--out", str(tmp_path / "o")],
                           tmp_path)
    assert_one_line_error(code, err, "pt_steps=-5: must be >= 0")
    code, _, err = run_cli(["run", "tp_scaling", "--quick", "--out", ""], tmp_path)
    assert_one_line_error(code, err, "--out '' is empty")
    assert not (tmp_path / "o").exists() or not list((tmp_path / "o").rglob("*.json"))


@pytest.mark.skipif(DATA is None, reason="shared data not found")
def test_taskvec_unknown_task_fails_before_any_model_is_loaded(tmp_path, monkeypatch):
    import ntkcheck.realmodels.adapters as adapters

    monkeypatch.setattr(adapters, "load_pretrained", lambda *a, **k: pytest.fail("a model was loaded"))
    code, _, err = run_cli(["lm", "taskvec", "--model", str(tmp_path), "--data", str(DATA), "--tasks", "sst2,bogus",
                            "--out", str(tmp_path / "o")], tmp_path)
    assert_one_line_error(code, err, "unknown task 'bogus'")
    code, _, err = run_cli(["lm", "solve", "--model", str(tmp_path), "--data", str(tmp_path), "--task", "sst2",
                            "--out", str(tmp_path / "o")], tmp_path)
    assert_one_line_error(code, err, "no data for task 'sst2'")


@pytest.mark.parametrize("widths", [["1048576", "2097152"], ["65536", "131072"]])
def test_huge_widths_are_refused_before_allocating(tmp_path, widths):
    code, _, err = run_cli(["run", "task_arithmetic", "--quick", "--widths", *widths, "--out", str(tmp_path / "o")],
                           tmp_path)
    assert_one_line_error(code, err, "needs about")
    assert "bytes) are available" in err and not list((tmp_path / "o").rglob("*.json"))


def test_1e9_width_is_not_an_integer(tmp_path):
    code, _, err = run_cli(["run", "tp_scaling", "--widths", "1e9", "--out", str(tmp_path / "o")], tmp_path)
    assert_one_line_error(code, err, "'1e9'")


def test_report_on_a_file_and_internal_errors_leave_a_log(tmp_path, monkeypatch):
    f = tmp_path / "r.json"
    f.write_text("{}")
    code, _, err = run_cli(["report", str(f)], tmp_path)
    assert_one_line_error(code, err, "is a file")
    import ntkcheck.report as report

    monkeypatch.setattr(report, "render_report", lambda out: 1 / 0)
    code, _, err = run_cli(["report", str(tmp_path)], tmp_path)
    assert code == 1 and err.count("\n") == 1 and "internal error: ZeroDivisionError" in err
    log = Path(err.split("traceback in ")[1].split(";")[0])
    assert "Traceback" in log.read_text() and "ZeroDivisionError" in log.read_text()
    log.unlink()


def test_device_out_of_memory_is_one_line_with_a_hint(tmp_path, monkeypatch):
    """torch's OutOfMemoryError (a GPU's) is bad input with what to lower, not an internal error."""
    import torch

    import ntkcheck.report as report

    def oom(out):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(report, "render_report", oom)
    code, _, err = run_cli(["report", str(tmp_path)], tmp_path)
    assert_one_line_error(code, err, "out of memory on the device")
    assert "--block" in err and "--model-dtype bfloat16" in err


def test_progress_bars_follow_tqdm_disable(monkeypatch):
    from ntkcheck.log import progress_bar, progress_enabled

    monkeypatch.setenv("NTKCHECK_PROGRESS", "1")
    monkeypatch.setenv("TQDM_DISABLE", "1")
    assert not progress_enabled() and progress_bar(total=3).disable
    monkeypatch.setenv("TQDM_DISABLE", "0")
    assert progress_enabled()
    monkeypatch.setenv("NTKCHECK_PROGRESS", "0")
    assert not progress_enabled()


def test_a_note_during_a_progress_bar_stands_on_its_own_line(monkeypatch, capsys):
    """The bar is cleared before the note and drawn again after it: the note's line starts after the bar's
    clearing carriage return and ends with a newline, and no bar text shares it."""
    from ntkcheck.log import note, progress_bar

    monkeypatch.setenv("NTKCHECK_PROGRESS", "1")
    monkeypatch.setenv("TQDM_DISABLE", "0")
    bar = progress_bar(total=3, desc="kernel sgd", mininterval=0)
    bar.update(1)
    note("sgd_0-4: 8 of 16 entries copied from other cached blocks")
    bar.update(1)
    bar.close()
    err = capsys.readouterr().err
    lines = [seg for line in err.split("\n") for seg in line.split("\r")]
    assert "ntkcheck: sgd_0-4: 8 of 16 entries copied from other cached blocks" in lines
    assert err.index("kernel sgd") < err.index("ntkcheck:") < err.rindex("kernel sgd")   # drawn before and after


def test_result_json_of_a_bad_run_is_never_half_written(tmp_path):
    """A run stopped by bad input writes no result.json (nothing to mix into a report)."""
    code, _, _ = run_cli(["run", "tp_scaling", "--quick", "--set", "steps=-1", "--out", str(tmp_path / "o")], tmp_path)
    assert code == 2 and not (tmp_path / "o" / "tp_scaling" / "result.json").exists()
