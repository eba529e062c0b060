"""The one sweep loop: compute each point of a grid once, store it atomically, resume on rerun.

Several processes on one run store split the work: a point is computed only by
the process holding its lock (ntkcheck.store), a process that finds a point
locked moves on and later reads the other process's result, and a lock left by
a killed process is taken over.
"""
from __future__ import annotations

import itertools
from typing import Any, Callable, Mapping, Sequence

from ntkcheck.log import progress_bar
from ntkcheck.store import ResultStore, cooperate

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
    order, so an interrupted sweep resumes at the first unfinished one; a point
    locked by another live process is skipped and its result read once it lands.
    """
    points = [dict(p) for p in points]
    done: dict[int, list[Row]] = {}
    for i, p in enumerate(points):
        got = store.load_point(p)
        if got is not None:
            done[i] = got
    bar = progress_bar(total=len(points), initial=len(done), desc=desc or store.name, unit="pt")

    def computed(i: int) -> list[Row]:
        out = compute(dict(points[i]))
        got = [dict(points[i], **r) for r in (out if isinstance(out, list) else [out])]
        store.save_point(points[i], got)
        return got

    def arrived(i: int, got: list[Row]) -> None:
        done[i] = got
        bar.update(1)
        bar.set_postfix_str(", ".join(f"{k}={v}" for k, v in points[i].items()))

    try:
        # processes on one store (and torchrun's ranks) split the points through their lock files
        cooperate([i for i in range(len(points)) if i not in done], load=lambda i: store.load_point(points[i]),
                  lock=lambda i: store.lock_path(points[i]), compute=computed, arrived=arrived,
                  what=f"point(s) of {store.name}")
    finally:
        bar.close()
    return [r for i in range(len(points)) for r in done[i]]


def select(rows: Sequence[Row], **where: Any) -> list[Row]:
    """Rows whose columns equal the given values."""
    return [r for r in rows if all(r.get(k) == v for k, v in where.items())]
