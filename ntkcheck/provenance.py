"""Provenance of a result: which code, libraries and machine produced it, and when."""
from __future__ import annotations

import platform
import subprocess
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

from ntkcheck import distributed


def git_revision() -> str:
    """The short commit of the checkout ntkcheck runs from, or 'unknown' (an installed wheel has none)."""
    try:
        here = Path(__file__).resolve().parent
        out = subprocess.run(["git", "-C", str(here), "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=5)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _version(dist: str) -> str | None:
    """A distribution's version without importing it (transformers takes seconds to import)."""
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def provenance(seconds: float, *, device: str = "cpu", world_size: int | None = None,
               started: str | None = None) -> dict:
    """The design.md provenance block: versions, git revision, device, world size, wall seconds, start time."""
    import ntkcheck

    return {"ntkcheck": ntkcheck.__version__, "git": git_revision(), "python": platform.python_version(),
            "torch": _version("torch"), "transformers": _version("transformers"), "device": str(device),
            "world_size": int(distributed.world_size() if world_size is None else world_size), "seconds": round(float(seconds), 3), "started": started or now_iso()}
