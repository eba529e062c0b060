"""The run store: DIR/<name>/{result.json, measurements.csv, *.png, points/}, written atomically.

Processes on one folder cooperate: a process computes a point only while it
holds the point's lock file (created with O_EXCL, holding host, pid and start
time), so two runs on one --out split the remaining points. A lock whose
process is gone (same host, pid not alive) or that is older than
NTKCHECK_LOCK_STALE_SECONDS (default one day; for locks from other hosts, whose
pids cannot be checked) is stale and taken over.

One folder per result, a check's or an LM measurement's. Every finished sweep
point is one JSON file written by write-to-temp, fsync, rename, and carries a
SHA-256 of its payload; a truncated or corrupt file is detected on load,
reported, and recomputed. Point files live under points/<fingerprint>/, the
fingerprint hashing the measurement's version and its config without its sweep
axes (widths, seeds, ...), so widening a sweep reuses finished points while
changing any other setting, or the code's version, recomputes. A binding that
drops a setting its points never depended on names the former bindings
(``bind(formerly=...)``), and their points are adopted, not recomputed.
"""
from __future__ import annotations

import csv
import glob
import hashlib
import io
import json
import math
import os
import shutil
import socket
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence, TypeVar

from ntkcheck.errors import UserError
from ntkcheck.log import note

T = TypeVar("T")
V = TypeVar("V")


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


def tensor_sha256(payload) -> str:
    """sha256 (hex) of a tensor's bytes, or of a {key: tensor} mapping's keys and bytes in key order: the
    checksum save_checked_tensor stores beside its payload."""
    import torch

    h = hashlib.sha256()
    if isinstance(payload, torch.Tensor):
        payload = {None: payload}
    for key in sorted(payload, key=lambda k: "" if k is None else k):
        if key is not None:
            h.update(key.encode())
        h.update(payload[key].detach().contiguous().cpu().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def save_checked_tensor(path: Path, field: str, payload, **extra: Any) -> None:
    """Write {field: payload, "sha": tensor_sha256(payload), **extra} as one torch file, atomically; payload
    is a tensor or a {key: tensor} mapping. load_checked_tensor reads it back. Hand-rolled: torch.save has no
    checksum, and safetensors keeps no nested metadata (row digests, example ids)."""
    import torch

    buf = io.BytesIO()
    torch.save({field: payload, "sha": tensor_sha256(payload), **extra}, buf)
    atomic_write_bytes(path, buf.getvalue())


def load_checked_tensor(path: Path, field: str) -> dict:
    """The dict save_checked_tensor wrote at ``path``, its ``field`` verified against the stored sha256;
    raises ValueError on a checksum mismatch (torch or pickle errors on an unreadable file)."""
    import torch

    blob = torch.load(path, map_location="cpu", weights_only=True)
    if tensor_sha256(blob[field]) != blob["sha"]:
        raise ValueError("checksum mismatch")
    return blob


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


class ResultStore:
    """The folder DIR/<name>/ of one result: points, measurements, plots and result.json."""

    def __init__(self, root: Path, name: str):
        self.name = name
        self.dir = Path(root) / name
        self.fingerprint = "default"
        self.former: list[str] = []
        self._adopted_from: set[str] = set()

    def bind(self, config_without_axes: Mapping[str, Any], version: int = 1, *,
             formerly: Iterable[Mapping[str, Any]] = ()) -> None:
        """Scope point files to this configuration (sweep axes excluded) and code version.

        ``formerly``: configurations under which earlier code bound the same points (a binding that held a
        setting the points never depended on). load_point adopts a point it finds under one of them (adopt)."""
        fp = lambda c: fingerprint({"config": dict(c), "version": int(version)})  # noqa: E731
        self.fingerprint = fp(config_without_axes)
        self.former = [f for f in dict.fromkeys(fp(c) for c in formerly) if f != self.fingerprint]

    @property
    def points_dir(self) -> Path:
        return self.dir / "points" / self.fingerprint

    def _point_path(self, point: Mapping[str, Any]) -> Path:
        return self.points_dir / f"{point_key(point)}.json"

    def load_point(self, point: Mapping[str, Any]) -> list[dict] | None:
        """The rows of a finished point, or None if absent, truncated or corrupt (then it is removed). A point
        absent here but stored under a former binding (bind's ``formerly``) is adopted first."""
        path = self._point_path(point)
        if not path.exists():
            self.adopt(point)
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
            note(f"recomputing {path}: unreadable or checksum mismatch")
            path.unlink(missing_ok=True)
            return None
        return rows

    def adopt(self, point: Mapping[str, Any]) -> bool:
        """Bring ``point`` from the first former binding that has it into this one: its rows file and the
        files named after it in the former folder's subfolders (a point's artifacts, e.g. params/<key>.pt),
        artifacts first, so a rows file never appears before its artifacts. Hard links where the file system
        allows (no copy of a large artifact), copies elsewhere; a file another process adopted meanwhile is
        kept. The former files stay, for code that still reads them. Returns whether a point was adopted."""
        key = point_key(point)
        for former in self.former:
            src_dir = self.dir / "points" / former
            rows = src_dir / f"{key}.json"
            if not rows.exists():
                continue
            # <sub>/<key>.<ext> exactly: the key may hold glob characters, and "seed=1" must not take "seed=1.5.pt"
            artifacts = [q for q in src_dir.glob(f"*/{glob.escape(key)}.*") if q.is_file() and q.stem == key]
            for src in artifacts + [rows]:
                dst = self.points_dir / src.relative_to(src_dir)
                dst.parent.mkdir(parents=True, exist_ok=True)
                try:
                    os.link(src, dst)
                except FileExistsError:
                    pass
                except OSError:
                    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
                    shutil.copy2(src, tmp)
                    os.replace(tmp, dst)
            if former not in self._adopted_from:   # one note per former binding, not one per point
                self._adopted_from.add(former)
                note(f"{self.name}: reading points stored under their earlier binding points/{former}")
            return True
        return False

    def drop_point(self, point: Mapping[str, Any]) -> None:
        """Forget a finished point (its rows file), so the next sweep computes it again."""
        self._point_path(point).unlink(missing_ok=True)

    def lock_path(self, point: Mapping[str, Any]) -> Path:
        """The lock file a process holds while it computes ``point`` (try_lock, cooperate)."""
        return self._point_path(point).with_suffix(".lock")

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
        atomic_write_text(path, json.dumps(_plain(obj), indent=2, sort_keys=False, allow_nan=False) + "\n")
        return path

    def write_result(self, result) -> Path:
        """DIR/<name>/result.json from a ntkcheck.result.Result."""
        return self.write_json("result.json", result.to_json())

    def path(self, name: str) -> Path:
        """Path for an artifact (plot, extra table) inside this check's folder."""
        self.dir.mkdir(parents=True, exist_ok=True)
        return self.dir / name


def _lock_info() -> dict:
    return {"host": socket.gethostname(), "pid": os.getpid(), "started": time.time()}


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def _stale(path: Path) -> bool:
    """A lock is stale when its process is gone (same host) or it is older than the stale limit."""
    limit = float(os.environ.get("NTKCHECK_LOCK_STALE_SECONDS", 86400))
    try:
        age = time.time() - path.stat().st_mtime
        info = json.loads(path.read_text("utf-8"))
    except FileNotFoundError:
        return False          # released meanwhile: try again
    except (OSError, ValueError):
        return age > 5.0      # unreadable: being written now, or its writer died while writing it
    if age > limit:
        return True
    if info.get("host") == socket.gethostname():
        return not _pid_alive(int(info.get("pid", -1)))
    return False


def try_lock(path: Path) -> bool:
    """Create the lock file ``path`` for this process; take over a stale one. True when this process holds it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            if not _stale(path):
                return False
            # only one process wins the rename of a stale lock; the others see it gone and retry
            grave = path.with_name(f"{path.name}.stale.{os.getpid()}")
            try:
                os.replace(path, grave)
                grave.unlink(missing_ok=True)
                note(f"taking over the stale lock {path}")
            except FileNotFoundError:
                pass
            continue
        with os.fdopen(fd, "w") as fh:
            json.dump(_lock_info(), fh)
        return True
    return False


def unlock(path: Path) -> None:
    """Remove this process's lock file (a lock another process took over is left alone)."""
    try:
        info = json.loads(path.read_text("utf-8"))
        if info.get("pid") == os.getpid() and info.get("host") == socket.gethostname():
            path.unlink(missing_ok=True)
    except (OSError, ValueError):
        pass


#: seconds between looks at units another process is computing
POLL_SECONDS = 0.5


def cooperate(units: Sequence[T], *, load: Callable[[T], V | None], lock: Callable[[T], Path],
              compute: Callable[[T], V], arrived: Callable[[T, V], None], what: str) -> None:
    """Every unit of ``units`` computed once over all the processes that work on one folder.

    A unit is computed only by the process holding its lock file ``lock(u)`` (try_lock), after ``load(u)``,
    its finished value or None, says again that nobody finished it meanwhile; ``compute(u)`` computes it,
    saves it where load finds it and returns it. A unit locked by another live process is waited for (one
    note naming ``what``, then a look every POLL_SECONDS) and read once it lands; a lock whose process died
    is taken over. Under torchrun ranks start on disjoint shares and then help with the rest
    (distributed.take_order). ``arrived(u, value)`` is called once a unit, in the order values arrive.
    Hand-rolled: the units are files in a run folder that processes of separate launches (and machines) share,
    which no work queue of torch.distributed or multiprocessing spans."""
    from ntkcheck import distributed

    pending, told = distributed.take_order(list(units)), False
    while pending:
        waiting = []
        for u in pending:
            got = load(u)
            if got is None and try_lock(lock(u)):
                try:
                    got = load(u)                     # finished by another process meanwhile?
                    if got is None:
                        got = compute(u)
                finally:
                    unlock(lock(u))
            if got is None:
                waiting.append(u)
                continue
            arrived(u, got)
        if waiting:
            if not told:
                note(f"{len(waiting)} {what} are being computed by another process; waiting")
                told = True
            time.sleep(POLL_SECONDS)
        pending = waiting



def _plain(v: Any) -> Any:
    """Strict JSON of ``v``: non-finite floats become null (JSON has no NaN), numpy scalars and arrays
    plain numbers and lists, tuples lists, mapping keys strings, anything else its str()."""
    if isinstance(v, Mapping):
        return {str(k): _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if hasattr(v, "tolist") and not isinstance(v, (str, bytes)):  # numpy scalars and arrays, 0-d tensors
        return _plain(v.tolist())
    if isinstance(v, bool) or v is None or isinstance(v, (int, str)):
        return v
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    return str(v)


def ensure_writable(out: Path) -> Path:
    """Create ``out`` if needed and prove it can be written, else raise UserError naming it."""
    if not str(out).strip():
        raise UserError(f"--out {str(out)!r} is empty; give a folder for the results")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {str(out)!r} is a file, not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".ntkcheck-write-probe.{os.getpid()}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise UserError(f"--out {str(out)!r} cannot be written: {e.strerror or e}") from None
    return out
