"""Shared test settings: deterministic hypothesis, no progress bars, float64 defaults stay explicit."""
import os

import pytest
from hypothesis import HealthCheck, settings

os.environ.setdefault("NTKCHECK_PROGRESS", "0")
os.environ.setdefault("MPLBACKEND", "Agg")

# Under pytest-xdist each worker takes an equal share of the cores for torch's threads (and its children's
# OpenMP), so that two workers on 2 cores do not run four threads; set before any test imports torch.
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    _threads = str(max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])))
    os.environ.setdefault("OMP_NUM_THREADS", _threads)
    os.environ.setdefault("MKL_NUM_THREADS", _threads)
    import torch

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))   # in case a plugin imported torch first

# Fixed seeds: hypothesis derandomized so a run is reproducible; no deadline (CPU timing varies).
settings.register_profile("ntkcheck", derandomize=True, deadline=None, max_examples=25,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ntkcheck"))


@pytest.fixture
def sketch_captures(monkeypatch) -> list[int]:
    """The number of examples of each countsketch capture (sketch._countsketch_structured) in this test, in
    call order: how tests see which side was sketched and which was reused."""
    from ntkcheck.models.kernels import sketch as sketch_mod

    seen: list[int] = []
    real = sketch_mod._countsketch_structured
    monkeypatch.setattr(sketch_mod, "_countsketch_structured",
                        lambda f_, p_, x_, *a, **kw: seen.append(x_.shape[0]) or real(f_, p_, x_, *a, **kw))
    return seen
