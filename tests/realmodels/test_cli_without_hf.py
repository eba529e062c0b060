"""`ntkcheck --help` and the lm parser work without transformers; lm commands then fail in one line."""
import sys

import pytest

from ntkcheck.cli import main


@pytest.fixture
def no_transformers(monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)  # import transformers -> ImportError


def test_help_without_transformers(no_transformers, capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0 and "lm" in capsys.readouterr().out
    assert main(["lm", "solve", "--model", "x"]) == 2
    assert capsys.readouterr().err.strip() == "ntkcheck: error: ntkcheck lm needs transformers: pip install 'ntkcheck[hf]'"
    assert main(["lm", "tasks"]) == 0
    out = capsys.readouterr().out
    assert "sst2" in out and "qqp" in out


def test_bad_flags_are_one_line(no_transformers, capsys):
    assert main(["lm", "solve", "--model", "x", "--k", "zero"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("ntkcheck: error: argument --k") and "'zero'" in err and "\n" not in err
    assert main(["lm", "solve", "--model", "x", "--kinds", "sgd,bogus"]) == 2
    assert "'bogus'" in capsys.readouterr().err
    assert main(["lm", "reproduce", "--model", "x", "--tasks", "sst2", "--halfwidth", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--halfwidth" in err and "'0'" in err and "\n" not in err
