"""Each check's --quick run, computed once per session and shared by that check's tests; toy check
modules that worker processes can import by name."""
import contextlib
import importlib
import sys

import pytest

from ntkcheck.checks import run_check


@pytest.fixture(scope="session")
def quick_result(tmp_path_factory):
    """quick_result(name) -> Result of ``ntkcheck run name --quick`` into a fresh store (cached)."""
    cache = {}

    def run(name: str):
        if name not in cache:
            cache[name] = run_check(name, out=tmp_path_factory.mktemp(name), quick=True)
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
