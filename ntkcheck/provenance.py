"""Provenance of a result: which code, libraries and machine produced it, and when."""
from __future__ import annotations

import functools
import hashlib
import importlib.util
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


PACKAGES = ("ntkcheck", "ntkcheck.checks", "ntkcheck.models", "ntkcheck.realmodels", "ntkcheck.theory")


def source_digest(roots=None) -> str:
    """sha256 (16 hex digits) of every .py file of the ntkcheck packages (``roots``: folders, default the
    packages' own, which an editable install maps to separate folders), by path relative to its root and
    content: the exact code that made a result, where git's revision misses uncommitted edits and an
    installed wheel has none. Files are read, nothing is imported; the packages' own digest is computed
    once a process (the code it runs was read at its start)."""
    if roots is None:
        return _own_digest()
    return _digest_of([Path(r).resolve() for r in roots])


@functools.cache
def _own_digest() -> str:
    return _digest_of([Path(loc).resolve() for name in PACKAGES
                       for loc in (importlib.util.find_spec(name).submodule_search_locations or ())])


def _digest_of(roots: list[Path]) -> str:
    h, seen = hashlib.sha256(), set()
    for root in roots:
        for f in sorted(root.rglob("*.py")):
            if f.resolve() in seen or "__pycache__" in f.parts:
                continue
            seen.add(f.resolve())
            h.update(f"{root.name}/{f.relative_to(root).as_posix()}\0".encode())
            h.update(f.read_bytes() + b"\0")
    return h.hexdigest()[:16]


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
    """The design.md provenance block: versions, git revision, source digest, device, world size, wall seconds,
    start time."""
    import ntkcheck

    return {"ntkcheck": ntkcheck.__version__, "git": git_revision(), "source": source_digest(),
            "python": platform.python_version(),
            "torch": _version("torch"), "transformers": _version("transformers"), "device": str(device),
            "world_size": int(distributed.world_size() if world_size is None else world_size), "seconds": round(float(seconds), 3), "started": started or now_iso()}
