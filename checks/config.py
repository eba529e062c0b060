"""Check configs: typed sweep axes, validated settings, overrides from the command line, JSON form.

A check's Config is a frozen dataclass deriving from CheckConfig, whose defaults
are the full sweep. A field that is a sweep axis says so in its metadata,
``axis(kind, default)``:

    widths: tuple[int, ...] = axis("width", (64, 128, 256))
    seeds: int = axis("seeds", 6)

Kinds: "width" (network widths n), "seeds" (a number of seeds), "sample_size"
(N), "rank" (k). ``--widths`` and ``--seeds`` set every axis of their kind in
every check that has one; the run store's fingerprint leaves all axes out, so
changing one axis keeps the finished points of the others.

Every field is validated when the config is built (``validate``), by its type
unless its metadata (``setting(default, ge=, gt=, le=, lt=, choices=)``) says
otherwise: an int is >= 1, a float finite and >= 0, a tuple non-empty with each
entry so (and, for ints, no entry twice), a str one of its choices when it has
some. A bad value is a ValueError naming the field and the value, which the
command line reports in one line.
"""
from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import field
from typing import Any, Mapping, Sequence

from ntkcheck.errors import UserError

AXIS_KINDS = ("width", "seeds", "sample_size", "rank")


def axis(kind: str, default: Any):
    """A dataclass field that is a sweep axis of ``kind`` (one of AXIS_KINDS)."""
    if kind not in AXIS_KINDS:
        raise ValueError(f"unknown axis kind {kind!r}; expected one of {AXIS_KINDS}")
    return field(default=default, metadata={"axis": kind})


def setting(default: Any, *, ge: float | None = None, gt: float | None = None, le: float | None = None,
            lt: float | None = None, choices: Sequence[str] | None = None):
    """A dataclass field with its own bounds (each entry of a tuple) or choices, replacing the type's defaults."""
    meta = {k: v for k, v in (("ge", ge), ("gt", gt), ("le", le), ("lt", lt)) if v is not None}
    if choices is not None:
        meta["choices"] = tuple(choices)
    return field(default=default, metadata=meta)


def _check_scalar(name: str, value: Any, typ: type, meta: Mapping[str, Any]) -> None:
    shown = f"{name}={value!r}"
    if typ is bool:
        if not isinstance(value, bool):
            raise ValueError(f"{shown}: expected true or false")
        return
    if typ is str:
        if not isinstance(value, str):
            raise ValueError(f"{shown}: expected text")
        if "choices" in meta and value not in meta["choices"]:
            raise ValueError(f"{shown}: expected one of {', '.join(meta['choices'])}")
        return
    if typ is int and (not isinstance(value, int) or isinstance(value, bool)):
        raise ValueError(f"{shown}: expected an integer")
    if typ is float and (not isinstance(value, (int, float)) or isinstance(value, bool)):
        raise ValueError(f"{shown}: expected a number")
    v = float(value)
    if not math.isfinite(v):
        raise ValueError(f"{shown}: expected a finite number")
    bounds = {k: meta[k] for k in ("ge", "gt", "le", "lt") if k in meta}
    if not bounds:
        bounds = {"ge": 1} if typ is int else {"ge": 0.0}
    for key, limit in bounds.items():
        ok = {"ge": v >= limit, "gt": v > limit, "le": v <= limit, "lt": v < limit}[key]
        if not ok:
            word = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<"}[key]
            raise ValueError(f"{shown}: must be {word} {limit:g}")


def validate(config: Any) -> None:
    """Check every field of a Config against its type and metadata (see the module docstring)."""
    hints = typing.get_type_hints(type(config))
    for f in dataclasses.fields(config):
        value, typ, meta = getattr(config, f.name), hints[f.name], f.metadata
        if typing.get_origin(typ) is tuple:
            args = [a for a in typing.get_args(typ) if a is not Ellipsis]
            inner = args[0] if args else str
            if not isinstance(value, tuple) or not value:
                raise ValueError(f"{f.name}={value!r}: expected a non-empty list")
            if typing.get_args(typ)[-1] is not Ellipsis and len(value) != len(typing.get_args(typ)):
                raise ValueError(f"{f.name}={value!r}: expected {len(typing.get_args(typ))} values")
            for v in value:
                _check_scalar(f.name, v, inner, meta)
            if inner is int or inner is str:
                dup = sorted({v for v in value if value.count(v) > 1})
                if dup:
                    raise ValueError(f"{f.name}={value!r}: {dup[0]!r} appears twice")
        elif typ in (int, float, str, bool):
            _check_scalar(f.name, value, typ, meta)


@dataclasses.dataclass(frozen=True)
class CheckConfig:
    """Base of every check's Config: validates every field when built (subclasses' __post_init__ call super).

    ``seed_base`` moves the run to other seeds (``--seed-base N``): the same sweep on draws disjoint from
    every other base's, so a verdict can be checked not to depend on the draw. Checks take their seeds
    from ``seed_range``.
    """

    seed_base: int = setting(0, ge=0)

    def __post_init__(self):
        validate(self)

    def seed_range(self, n: int | None = None) -> range:
        """The run's seeds: n consecutive seeds from seed_base * n (n defaults to the ``seeds`` field), so
        base 0 is 0..n-1 and the bases' seed sets are disjoint (base b and b+1 share no draw)."""
        n = getattr(self, "seeds") if n is None else n
        return range(self.seed_base * n, (self.seed_base + 1) * n)


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
                   seed_base: int | None = None, sets: Sequence[str] = ()) -> Any:
    """A copy of ``config`` with --widths on every width axis, --seeds on every seeds axis, --seed-base,
    and each ``--set key=value`` (types read from the dataclass). An option without an axis of its kind
    is left alone (the caller says so); a bad key or value is a UserError naming it."""
    hints = typing.get_type_hints(type(config))
    names = {f.name for f in dataclasses.fields(config)}
    changes: dict[str, Any] = {}
    if widths is not None:
        changes.update({name: tuple(widths) for name in axes(config, "width")})
    if seeds is not None:
        changes.update({name: int(seeds) for name in axes(config, "seeds")})
    if seed_base is not None:
        changes["seed_base"] = int(seed_base)
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
