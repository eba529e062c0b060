"""Check configs: typed sweep axes, overrides from the command line, JSON form.

A check's Config is a frozen dataclass whose defaults are the full sweep. A
field that is a sweep axis says so in its metadata, ``axis(kind, default)``:

    widths: tuple[int, ...] = axis("width", (64, 128, 256))
    seeds: int = axis("seeds", 6)

Kinds: "width" (network widths n), "seeds" (a number of seeds), "sample_size"
(N), "rank" (k). ``--widths`` and ``--seeds`` set every axis of their kind in
every check that has one; the run store's fingerprint leaves all axes out, so
changing one axis keeps the finished points of the others.
"""
from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import field
from typing import Any, Sequence

from ntkcheck.errors import UserError

AXIS_KINDS = ("width", "seeds", "sample_size", "rank")


def axis(kind: str, default: Any):
    """A dataclass field that is a sweep axis of ``kind`` (one of AXIS_KINDS)."""
    if kind not in AXIS_KINDS:
        raise ValueError(f"unknown axis kind {kind!r}; expected one of {AXIS_KINDS}")
    return field(default=default, metadata={"axis": kind})


def axes(config_cls_or_obj: Any, kind: str | None = None) -> tuple[str, ...]:
    """Names of the axis fields (of one kind, or all) of a Config class or instance."""
    return tuple(f.name for f in dataclasses.fields(config_cls_or_obj)
                 if "axis" in f.metadata and (kind is None or f.metadata["axis"] == kind))


def to_json(config: Any) -> dict:
    """{field: value} with tuples as lists and NaN as None."""
    def conv(v):
        if isinstance(v, tuple):
            return [conv(x) for x in v]
        if isinstance(v, float) and not math.isfinite(v):
            return None
        return v
    return {f.name: conv(getattr(config, f.name)) for f in dataclasses.fields(config)}


def without_axes(config: Any) -> dict:
    """The config's JSON form minus its sweep axes: what the run store's fingerprint hashes."""
    skip = set(axes(config))
    return {k: v for k, v in to_json(config).items() if k not in skip}


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


def with_overrides(config: Any, *, widths: Sequence[int] | None = None, seeds: int | None = None,
                   sets: Sequence[str] = ()) -> Any:
    """A copy of ``config`` with --widths on every width axis, --seeds on every seeds axis, and each
    ``--set key=value`` (types read from the dataclass). An option without an axis of its kind is
    left alone (the caller says so); a bad key or value is a UserError naming it."""
    hints = typing.get_type_hints(type(config))
    names = {f.name for f in dataclasses.fields(config)}
    changes: dict[str, Any] = {}
    if widths is not None:
        changes.update({name: tuple(widths) for name in axes(config, "width")})
    if seeds is not None:
        changes.update({name: int(seeds) for name in axes(config, "seeds")})
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
