"""Shared log-log plotting (matplotlib imported lazily, Agg backend)."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np


def loglog_panels(path: Path, panels: Sequence[dict], suptitle: str = "", xlabel: str = "width n") -> Path:
    """One log-log panel per dict {title, series: [(label, x, y)], ylabel?}; y averaged per x with min/max band.

    Each series' x, y may repeat x values (one per seed): the line is the
    geometric mean over repeats, the band spans min to max.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = len(panels)
    cols = min(k, 3)
    rows = (k + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.4 * rows), squeeze=False)
    for ax, panel in zip(axes.flat, panels):
        for label, xs, ys in panel["series"]:
            xs, ys = np.asarray(xs, float), np.asarray(ys, float)
            ok = np.isfinite(ys) & (ys > 0)
            xs, ys = xs[ok], ys[ok]
            if len(xs) == 0:
                continue
            ux = np.unique(xs)
            mean = np.array([np.exp(np.log(ys[xs == u]).mean()) for u in ux])
            lo = np.array([ys[xs == u].min() for u in ux])
            hi = np.array([ys[xs == u].max() for u in ux])
            (line,) = ax.plot(ux, mean, marker="o", ms=3, label=label)
            ax.fill_between(ux, lo, hi, color=line.get_color(), alpha=0.2)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_title(panel.get("title", ""), fontsize=9)
        ax.set_xlabel(panel.get("xlabel", xlabel))
        ax.set_ylabel(panel.get("ylabel", ""))
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[k:]:
        ax.axis("off")
    if suptitle:
        fig.suptitle(suptitle, fontsize=10)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)
    return path
