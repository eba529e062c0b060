"""Sketched features of single examples kept on disk, so that every example is sketched once, ever.

A countsketched kernel (sketch.py) is a Gram product of per-example features,

    K_hat[i, a, j, b] = < S(x1_i)[a], S(x2_j)[b] >,   S(x)[a] = sum_M Pi_M^T phi(grad_M f_a(x))  (k' entries),

and S(x) depends on x alone (and on the parameters, the projection and phi), not on the other examples of its
call. Stored per example, the features make a kernel incremental in its examples: adding seeds (new columns
against every old row) or test sentences sketches only the new examples, and a run interrupted in the middle of
a kernel resumes without sketching its columns again. At SmolLM2-135M's 2^17 buckets an example costs 0.3-0.7 s
an output to sketch on two CPU cores and its features 0.7 MB an output (float32) to keep.

Layout: ``folder/<parameters digest>/<configuration digest>/<example digest>.pt``, one torch file per
example holding {group key: [C, k']} and a sha256 of its bytes. The parameters digest is the sha256 of every
parameter's name, shape, dtype and bytes (``params_digest``: about a second for 135M float32 parameters, once
per kernel function); the configuration digest names what else S(x) depends on (sketch dimension, sketch,
seed, kind and side of phi, eps, per-tensor weights, the selected tensors, dtype); the example digest is the
sha256 of the example's bytes after ``trim`` (the padding a batch adds is not part of an example). The store
is used only for calls at the kernel function's own parameters, unchanged since it was made (KernelFn). The
function f is not hashed (a closure has no stable digest): one folder belongs to one f, which the caller
names it by (``ntkcheck lm``: its kernel folder, keyed by the model, mode, prompt and label words).

Hand-rolled: the entries are rows of a batch computed together, looked up one by one by content; joblib's
Memory and diskcache cache whole calls by their arguments, which would miss every batch that mixes old and new
examples. Files are written atomically with a checksum (ntkcheck.store.save_checked_tensor); a file that fails to load or to match its
checksum is computed again. Disk is checked before it is spent: when a batch's features would leave less
than ``reserve`` bytes free, they are not kept (said once), and the kernel is computed all the same.
"""
from __future__ import annotations

import hashlib
import shutil
from pathlib import Path
from typing import Callable, Sequence

import torch

from ntkcheck.log import note
from ntkcheck.store import load_checked_tensor, save_checked_tensor

#: bytes a store leaves free on its disk
DISK_RESERVE = 2 * 2**30


def example_digest(x: torch.Tensor, trim: Callable[[torch.Tensor], torch.Tensor] | None = None) -> str:
    """sha256 of one example's bytes (x: [1, ...]), after ``trim``, with its shape and dtype."""
    if trim is not None:
        x = trim(x)
    x = x.detach().contiguous().cpu()
    h = hashlib.sha256(f"{tuple(x.shape)}|{x.dtype}|".encode())
    h.update(x.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:32]


def params_digest(params) -> str:
    """sha256 of {name: tensor}'s names, shapes, dtypes and bytes, in name order."""
    h = hashlib.sha256()
    for name in sorted(params):
        t = params[name].detach().contiguous().cpu()
        h.update(f"{name}|{tuple(t.shape)}|{t.dtype}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:32]


class FeatureStore:
    """One folder of per-example sketched features (module docstring)."""

    def __init__(self, folder: str | Path, reserve: int = DISK_RESERVE):
        self.folder = Path(folder)
        self.reserve = int(reserve)
        self.loaded = 0      # examples read back, and
        self.saved = 0       # written, by this object (for progress notes and tests)
        self._full_told = False

    def _path(self, config: str, digest: str) -> Path:
        return self.folder / config / f"{digest}.pt"

    def load(self, config: str, digest: str) -> dict[str, torch.Tensor] | None:
        """One example's {key: [C, k']}, or None where the folder does not hold it (or holds it damaged)."""
        path = self._path(config, digest)
        if not path.exists():
            return None
        try:
            blob = load_checked_tensor(path, "features")
        except Exception:   # unreadable, truncated or damaged: computed again, and overwritten
            return None
        self.loaded += 1
        return blob["features"]

    def save(self, config: str, digests: Sequence[str], features: Sequence[dict[str, torch.Tensor]]) -> bool:
        """Keeps each example's features; False (and nothing written) when the disk would drop below reserve."""
        if not digests:
            return True
        need = sum(v.numel() * v.element_size() for f in features for v in f.values())
        (self.folder / config).mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(self.folder).free
        if free - need < self.reserve:
            if not self._full_told:
                note(f"sketched features not kept in {self.folder}: {need / 2**30:.2f} GiB would leave "
                     f"{(free - need) / 2**30:.2f} GiB free (below {self.reserve / 2**30:.0f}); the kernel is "
                     f"computed all the same, and its examples are sketched again by a later run")
                self._full_told = True
            return False
        for d, f in zip(digests, features):
            f = {k: v.detach().contiguous().cpu().clone() for k, v in f.items()}
            save_checked_tensor(self._path(config, d), "features", f)
        self.saved += len(digests)
        return True
