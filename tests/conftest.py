"""Shared test settings: deterministic hypothesis, no progress bars, float64 defaults stay explicit."""
import os

from hypothesis import HealthCheck, settings

os.environ.setdefault("NTKCHECK_PROGRESS", "0")
os.environ.setdefault("MPLBACKEND", "Agg")

# Fixed seeds: hypothesis derandomized so a run is reproducible; no deadline (CPU timing varies).
settings.register_profile("ntkcheck", derandomize=True, deadline=None, max_examples=25,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ntkcheck"))
