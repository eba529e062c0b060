"""Each check's --quick run, computed once per session and shared by that check's tests (or, when the
set-up's `ntkcheck run --quick --out runs/quick` was made by this very code, read from there); toy check
modules that worker processes can import by name."""
import contextlib
import importlib
import json
import os
import sys
from pathlib import Path

import pytest

from ntkcheck.checks import run_check

REPO = Path(__file__).resolve().parents[2]


def reusable_quick_result(name: str, root: Path):
    """The Result in root/<name>/result.json if the README's set-up wrote it with this code: its provenance's
    source digest (provenance.source_digest) and torch version equal this process's, and its config is the
    check's default quick config; else None (then the test runs the check itself). The set-up's run is the
    same computation the fixture would repeat (`ntkcheck run --jobs 2` gives the one-process results,
    tests/checks/test_workers.py), so the tests check the verdicts that run reported."""
    from ntkcheck.checks.config import to_json
    from ntkcheck.checks.registry import get
    from ntkcheck.provenance import _version, source_digest
    from ntkcheck.result import Result

    path = Path(root) / name / "result.json"
    try:
        result = Result.from_json(json.loads(path.read_text("utf-8")), str(path))
    except Exception:   # absent, partly written or not a result: run the check
        return None
    prov = result.provenance
    quick = json.loads(json.dumps(to_json(get(name).default_config(True))))
    same = (prov.get("source") == source_digest() and prov.get("torch") == _version("torch")
            and result.config == quick and result.name == name and result.kind == "check")
    return result if same else None


@pytest.fixture(scope="session")
def reusable_quick():
    """reusable_quick_result, for the tests of the reuse rule itself."""
    return reusable_quick_result


@pytest.fixture(scope="session")
def quick_result(tmp_path_factory):
    """quick_result(name) -> Result of ``ntkcheck run name --quick``: the set-up's (reusable_quick_result, in
    $NTKCHECK_QUICK_RESULTS, default runs/quick) or one computed into a fresh store (cached)."""
    cache = {}
    root = Path(os.environ.get("NTKCHECK_QUICK_RESULTS", REPO / "runs" / "quick"))

    def run(name: str):
        if name not in cache:
            cache[name] = (reusable_quick_result(name, root)
                           or run_check(name, out=tmp_path_factory.mktemp(name), quick=True))
        return cache[name]

    return run


@contextlib.contextmanager
def _importable_module(folder, name: str, source: str):
    """``source`` written to folder/<name>.py and imported, with folder on sys.path (spawned worker processes
    inherit it, and import a CheckSpec by module and name as they do real checks); removed afterwards."""
    (folder / f"{name}.py").write_text(source)
    sys.path.insert(0, str(folder))
    try:
        yield importlib.import_module(name)
    finally:
        sys.path.remove(str(folder))
        sys.modules.pop(name, None)


@pytest.fixture(scope="session")
def importable_module():
    """importable_module(folder, name, source): a context manager yielding the imported toy module."""
    return _importable_module
