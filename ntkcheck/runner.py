"""Run registered checks into a run store: configs from CLI overrides, provenance, result.json."""
from __future__ import annotations

import dataclasses
import subprocess
import time
import typing
from pathlib import Path
from typing import Any, Sequence

import torch

import ntkcheck
from ntkcheck.errors import UserError
from ntkcheck.result import Result
from ntkcheck.store import CheckStore


def _git_revision() -> str:
    try:
        here = Path(__file__).resolve().parent
        out = subprocess.run(["git", "-C", str(here), "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=5)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def provenance(seconds: float, device: str = "cpu") -> dict:
    return {"ntkcheck": ntkcheck.__version__, "torch": torch.__version__, "git": _git_revision(),
            "seconds": round(seconds, 3), "device": device}


def config_to_json(config: Any) -> dict:
    def conv(v):
        if isinstance(v, tuple):
            return [conv(x) for x in v]
        if isinstance(v, float) and v != v:
            return None
        return v
    return {f.name: conv(getattr(config, f.name)) for f in dataclasses.fields(config)}


def _coerce(field_name: str, typ: Any, text: str) -> Any:
    origin = typing.get_origin(typ)
    args = typing.get_args(typ)
    if origin is typing.Union or str(origin) == "types.UnionType":
        non_none = [a for a in args if a is not type(None)]
        if text.lower() in ("none", "null"):
            return None
        return _coerce(field_name, non_none[0], text)
    if origin is tuple:
        inner = args[0] if args else str
        return tuple(_coerce(field_name, inner, t) for t in text.split(",") if t.strip())
    if typ is bool:
        low = text.lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off"):
            return False
        raise UserError(f"--set {field_name}={text!r}: expected true or false")
    if typ in (int, float):
        try:
            return typ(text)
        except ValueError:
            raise UserError(f"--set {field_name}={text!r}: expected {typ.__name__}") from None
    return text


def apply_overrides(config: Any, widths: Sequence[int] | None = None, seeds: int | None = None,
                    sets: Sequence[str] = ()) -> Any:
    """A copy of ``config`` with --widths, --seeds and --set key=value applied (types from the dataclass)."""
    hints = typing.get_type_hints(type(config))
    names = {f.name for f in dataclasses.fields(config)}
    changes: dict[str, Any] = {}
    if widths is not None:
        if "widths" not in names:
            raise UserError(f"{type(config).__module__.rsplit('.', 1)[-1]} has no width sweep; drop --widths")
        changes["widths"] = tuple(widths)
    if seeds is not None:
        if "seeds" not in names:
            raise UserError(f"{type(config).__module__.rsplit('.', 1)[-1]} has no seeds setting; drop --seeds")
        changes["seeds"] = int(seeds)
    for item in sets:
        if "=" not in item or not item.split("=", 1)[0].strip():
            raise UserError(f"malformed --set {item!r}: expected key=value")
        key, val = (s.strip() for s in item.split("=", 1))
        if key not in names:
            raise UserError(f"--set {key!r}: unknown setting; settings: {', '.join(sorted(names))}")
        changes[key] = _coerce(key, hints[key], val)
    try:
        return dataclasses.replace(config, **changes)
    except (ValueError, TypeError) as e:
        raise UserError(str(e)) from None


def run_check(spec, config, out: Path) -> Result:
    """Run one check into DIR/<name>/ and write its result.json."""
    store = CheckStore(out, spec.name)
    as_json = config_to_json(config)
    store.bind({k: v for k, v in as_json.items() if k not in spec.axes})
    t0 = time.time()
    result = spec.run(config, store)
    result.config = as_json
    result.provenance = provenance(time.time() - t0, str(getattr(config, "device", "cpu")))
    store.write_json("result.json", result.to_json())
    return result
