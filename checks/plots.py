"""Shared log-log plotting (matplotlib imported lazily; the caller's backend is never switched).

A panel is a dict {title, ylabel, xlabel?, series}; a series is (label, x, y) or
(label, x, y, predicted_slope). With a predicted slope the panel also draws the
prediction: the line y = C x^s with s the predicted slope and C the intercept
that fits the data best for that slope (exp of the mean of log y - s log x), dashed,
in the series' colour, so the data can be read against the theory.
"""
from __future__ import annotations

import os
import textwrap
from pathlib import Path
from typing import Sequence

import numpy as np

from ntkcheck import distributed


def figure(rows: int, cols: int, size: tuple[float, float]):
    """A figure that never touches pyplot's global state (and so never switches the caller's backend)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size)
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, cols, squeeze=False)
    return fig, axes


def loglog_panels(path: Path, panels: Sequence[dict], suptitle: str = "", xlabel: str = "width n") -> Path:
    """One log-log panel per dict; y averaged per x (geometric mean) with a min/max band over repeats."""
    k = len(panels)
    cols = min(k, 3)
    rows = (k + cols - 1) // cols
    fig, axes = figure(rows, cols, (4.6 * cols, 3.8 * rows + 0.6))
    for ax, panel in zip(axes.flat, panels):
        for series in panel["series"]:
            label, xs, ys = series[:3]
            predicted = series[3] if len(series) > 3 else None
            xs, ys = np.asarray(xs, float), np.asarray(ys, float)
            ok = np.isfinite(ys) & (ys > 0) & np.isfinite(xs) & (xs > 0)
            xs, ys = xs[ok], ys[ok]
            if len(xs) == 0:
                continue
            ux = np.unique(xs)
            mean = np.array([np.exp(np.log(ys[xs == u]).mean()) for u in ux])
            lo = np.array([ys[xs == u].min() for u in ux])
            hi = np.array([ys[xs == u].max() for u in ux])
            (line,) = ax.plot(ux, mean, marker="o", ms=3, label=label)
            ax.fill_between(ux, lo, hi, color=line.get_color(), alpha=0.2)
            if predicted is not None and len(ux) >= 2:
                c = float(np.mean(np.log(ys) - predicted * np.log(xs)))
                ax.plot(ux, np.exp(c) * ux ** predicted, ls="--", lw=1, color=line.get_color(),
                        label=f"predicted slope {float(predicted) + 0.0:+.2g}")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_title("\n".join(textwrap.wrap(panel.get("title", ""), 48)), fontsize=8)
        ax.set_xlabel(panel.get("xlabel", xlabel), fontsize=8)
        ax.set_ylabel(panel.get("ylabel") or "value", fontsize=8)
        ax.grid(True, which="both", alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=6)
        else:  # every value zero, negative or not finite (a run under a fault, a quantity that vanished)
            ax.text(0.5, 0.5, "no positive finite values", ha="center", va="center", fontsize=7,
                    transform=ax.transAxes)
    for ax in list(axes.flat)[k:]:
        ax.axis("off")
    if suptitle:
        lines = textwrap.wrap(suptitle, 110)
        fig.suptitle("\n".join(lines), fontsize=10)
        # keep the suptitle's lines clear of the first row's titles
        top = 1.0 - (0.3 + 0.2 * len(lines)) / fig.get_size_inches()[1]
        fig.tight_layout(rect=(0, 0, 1, top))
    else:
        fig.tight_layout()
    return save_figure(fig, path)


def save_figure(fig, path: Path, dpi: int = 110) -> Path:
    """Write ``fig`` to ``path`` atomically (a temporary file, then a rename)."""
    path = Path(path)
    if not distributed.is_main():   # under torchrun rank 0 draws; the others' figures are the same
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.png")
    fig.savefig(tmp, dpi=dpi)
    tmp.replace(path)
    return path
