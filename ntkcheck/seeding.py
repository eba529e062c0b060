"""Randomness through explicit generators only: nothing here touches a global RNG.

Every random draw in ntkcheck comes from a generator built from an integer
seed (or a tuple of integers, hashed by numpy's SeedSequence), so a sweep
point's numbers depend only on its coordinates.
"""
from __future__ import annotations

import numpy as np
import torch


def generator(seed: int, device: str | torch.device = "cpu") -> torch.Generator:
    """A torch.Generator seeded with ``seed`` (on ``device``)."""
    return torch.Generator(device=device).manual_seed(int(seed))


def rng(*key: int) -> np.random.Generator:
    """A numpy Generator keyed by one or more integers, e.g. rng(seed, width)."""
    return np.random.default_rng([int(k) for k in key])


def derive(*key: int) -> int:
    """A 63-bit integer seed from several integers (stable across runs and platforms)."""
    return int(np.random.SeedSequence([int(k) for k in key]).generate_state(1, np.uint64)[0] >> np.uint64(1))
