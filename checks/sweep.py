"""The one sweep loop: compute each point of a grid once, store it atomically, resume on rerun."""
from __future__ import annotations

import itertools
import os
import sys
from typing import Any, Callable, Mapping, Sequence

from tqdm.auto import tqdm

from ntkcheck.store import ResultStore

Row = dict[str, Any]


def grid(**axes: Sequence[Any]) -> list[dict[str, Any]]:
    """The Cartesian product of named axes, e.g. grid(width=[64, 128], seed=range(3))."""
    names = list(axes)
    return [dict(zip(names, values)) for values in itertools.product(*(list(axes[n]) for n in names))]


def sweep(store: ResultStore, points: Sequence[Mapping[str, Any]],
          compute: Callable[[dict[str, Any]], Row | list[Row]], desc: str = "") -> list[Row]:
    """Rows of every point: loaded when already finished, else computed, then saved atomically.

    ``compute(point)`` returns one row or a list of rows (flat dicts of scalars);
    each row gets the point's coordinates as columns. Points are visited in
    order, so an interrupted sweep resumes at the first unfinished one.
    """
    rows: list[Row] = []
    cached = {i: store.load_point(p) for i, p in enumerate(points)}
    todo = sum(v is None for v in cached.values())
    bar = tqdm(total=len(points), initial=len(points) - todo, desc=desc or store.name, unit="pt",
               disable=os.environ.get("NTKCHECK_PROGRESS", "1") == "0", file=sys.stderr, leave=False)
    try:
        for i, point in enumerate(points):
            point = dict(point)
            got = cached[i]
            if got is None:
                out = compute(point)
                got = [dict(point, **r) for r in (out if isinstance(out, list) else [out])]
                store.save_point(point, got)
                bar.update(1)
                bar.set_postfix_str(", ".join(f"{k}={v}" for k, v in point.items()))
            rows.extend(got)
    finally:
        bar.close()
    return rows


def select(rows: Sequence[Row], **where: Any) -> list[Row]:
    """Rows whose columns equal the given values."""
    return [r for r in rows if all(r.get(k) == v for k, v in where.items())]
