"""The one sweep loop: compute each point of a grid once, store it atomically, resume on rerun.

Several processes on one run store split the work: a point is computed only by
the process holding its lock (ntkcheck.store), a process that finds a point
locked moves on and later reads the other process's result, and a lock left by
a killed process is taken over.
"""
from __future__ import annotations

import itertools
import time
from typing import Any, Callable, Mapping, Sequence

from ntkcheck import distributed
from ntkcheck.log import note, progress_bar
from ntkcheck.store import ResultStore

Row = dict[str, Any]
#: seconds between looks at points another process is computing
POLL_SECONDS = 0.5


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
    # under torchrun, ranks start on disjoint points and then help with the rest (ntkcheck.distributed)
    pending = distributed.take_order([i for i in range(len(points)) if i not in done])
    bar = progress_bar(total=len(points), initial=len(done), desc=desc or store.name, unit="pt")
    told = False
    try:
        while pending:
            waiting = []
            for i in pending:
                point = points[i]
                got = store.load_point(point)
                if got is None and store.try_lock_point(point):
                    try:
                        got = store.load_point(point)      # finished by another process meanwhile?
                        if got is None:
                            out = compute(dict(point))
                            got = [dict(point, **r) for r in (out if isinstance(out, list) else [out])]
                            store.save_point(point, got)
                    finally:
                        store.unlock_point(point)
                if got is None:
                    waiting.append(i)
                    continue
                done[i] = got
                bar.update(1)
                bar.set_postfix_str(", ".join(f"{k}={v}" for k, v in point.items()))
            if waiting:
                if not told:
                    note(f"{len(waiting)} point(s) of {store.name} are being computed by another process; waiting")
                    told = True
                time.sleep(POLL_SECONDS)
            pending = waiting
    finally:
        bar.close()
    return [r for i in range(len(points)) for r in done[i]]


def select(rows: Sequence[Row], **where: Any) -> list[Row]:
    """Rows whose columns equal the given values."""
    return [r for r in rows if all(r.get(k) == v for k, v in where.items())]
