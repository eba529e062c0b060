"""The run store: DIR/<check>/{result.json, measurements.csv, *.png, points/}, written atomically.

Every finished sweep point is one JSON file written by write-to-temp, fsync,
rename, and carries a SHA-256 of its payload; a truncated or corrupt file is
detected on load, reported, and recomputed. Point files live under
points/<fingerprint>/, the fingerprint hashing the check's config without its
sweep axes (widths, seeds, ...), so widening a sweep reuses finished points
while changing any other setting recomputes.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any, Iterable, Mapping

from ntkcheck.errors import UserError


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so a reader sees either the old file or the whole new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=True)


def fingerprint(obj: Any) -> str:
    return hashlib.sha256(canonical_json(obj).encode()).hexdigest()[:12]


def point_key(point: Mapping[str, Any]) -> str:
    """A file-name-safe key for a sweep point, e.g. {'width': 64, 'seed': 0} -> 'seed=0_width=64'."""
    parts = []
    for k in sorted(point):
        v = str(point[k]).replace("/", "-").replace(" ", "")
        parts.append(f"{k}={v}")
    return "_".join(parts)


class CheckStore:
    """The folder of one check's run: points, measurements, plots and result."""

    def __init__(self, root: Path, check: str):
        self.check = check
        self.dir = Path(root) / check
        self.fingerprint = "default"

    def bind(self, config_without_axes: Mapping[str, Any]) -> None:
        """Scope point files to this configuration (sweep axes excluded)."""
        self.fingerprint = fingerprint(dict(config_without_axes))

    @property
    def points_dir(self) -> Path:
        return self.dir / "points" / self.fingerprint

    def _point_path(self, point: Mapping[str, Any]) -> Path:
        return self.points_dir / f"{point_key(point)}.json"

    def load_point(self, point: Mapping[str, Any]) -> list[dict] | None:
        """The rows of a finished point, or None if absent, truncated or corrupt (then it is removed)."""
        path = self._point_path(point)
        if not path.exists():
            return None
        try:
            blob = json.loads(path.read_text("utf-8"))
            rows = blob["rows"]
            ok = blob["sha256"] == hashlib.sha256(canonical_json(rows).encode()).hexdigest()
            ok = ok and blob["point"] == json.loads(canonical_json(dict(point)))
        except (ValueError, KeyError, TypeError, UnicodeDecodeError):
            ok = False
        if not ok:
            warnings.warn(f"corrupt point file {path}; recomputing it", RuntimeWarning, stacklevel=2)
            path.unlink(missing_ok=True)
            return None
        return rows

    def save_point(self, point: Mapping[str, Any], rows: list[dict]) -> None:
        rows = json.loads(canonical_json(rows))  # plain JSON types only
        blob = {"point": json.loads(canonical_json(dict(point))), "rows": rows,
                "sha256": hashlib.sha256(canonical_json(rows).encode()).hexdigest()}
        atomic_write_text(self._point_path(point), json.dumps(blob, sort_keys=True))

    def write_measurements(self, rows: Iterable[Mapping[str, Any]], name: str = "measurements.csv") -> Path:
        rows = list(rows)
        cols: list[str] = []
        for r in rows:
            cols += [k for k in r if k not in cols]
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n")
        w.writeheader()
        for r in rows:
            w.writerow(dict(r))
        path = self.dir / name
        atomic_write_text(path, buf.getvalue())
        return path

    def write_json(self, name: str, obj: Any) -> Path:
        path = self.dir / name
        atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, allow_nan=False, default=str) + "\n")
        return path

    def path(self, name: str) -> Path:
        """Path for an artifact (plot, extra table) inside this check's folder."""
        self.dir.mkdir(parents=True, exist_ok=True)
        return self.dir / name


def ensure_writable(out: Path) -> Path:
    """Create ``out`` if needed and prove it can be written, else raise UserError naming it."""
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".ntkcheck-write-probe"
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise UserError(f"--out {str(out)!r} cannot be written: {e.strerror or e}") from None
    return out
