"""Each check's --quick run, computed once per session and shared by that check's tests."""
import pytest

from ntkcheck.checks.registry import get
from ntkcheck.runner import run_check


@pytest.fixture(scope="session")
def quick_result(tmp_path_factory):
    """quick_result(name) -> Result of ``ntkcheck run name --quick`` into a fresh store (cached)."""
    cache = {}

    def run(name: str):
        if name not in cache:
            spec = get(name)
            cache[name] = run_check(spec, spec.default_config(quick=True), tmp_path_factory.mktemp(name))
        return cache[name]

    return run
