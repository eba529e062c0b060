"""Each check's --quick run, computed once per session and shared by that check's tests."""
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
