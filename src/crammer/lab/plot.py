"""The comparison's pictures: validation loss against elapsed time and against tokens seen, every variant
overlaid, the median over its seeds as the line and their min..max as a band."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from crammer.train.plot import plt, save_figure
from crammer.units import time_unit

if TYPE_CHECKING:
    from crammer.lab.compare import Member

GRID_POINTS = 100


def plot_validation(groups: dict[str, list[Member]], out_dir: Path) -> list[tuple[Path, str]]:
    """Two PNGs in `out_dir` (loss over elapsed time, loss over tokens); (path, caption) of each."""
    span = max(point[0] for group in groups.values() for m in group for point in m.curve)
    seconds_per_unit, unit = time_unit(span)
    written = []
    for name, axis, scale, label in (("val_loss_time", 0, seconds_per_unit, f"elapsed ({unit})"),
                                     ("val_loss_tokens", 1, 1.0, "tokens seen")):
        fig, ax = plt.subplots(figsize=(8, 4.5))
        for variant, group in groups.items():
            curves = [(np.array([p[axis] for p in m.curve], float) / scale, np.array([p[2] for p in m.curve]))
                      for m in group]
            xs, median, low, high = _median_band(curves)
            line, = ax.plot(xs, median, linewidth=1.5, marker="o" if len(xs) == 1 else None,
                            label=f"{variant} ({len(group)} seed{'s' if len(group) > 1 else ''})")
            if len(group) > 1:
                ax.fill_between(xs, low, high, color=line.get_color(), alpha=0.2, linewidth=0)
        ax.set_title("validation MLM loss (median over seeds, band: min..max)")
        ax.set_xlabel(label)
        ax.set_ylabel("loss (nats)")
        ax.grid(alpha=0.3)
        ax.legend()
        written.append((save_figure(fig, out_dir / f"{name}.png"), f"validation loss against {label}"))
    return written


def _median_band(curves: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, ...]:
    """Seeds evaluate at their own moments: each curve is interpolated onto a common grid over the span all
    of them cover, then the median, min and max are taken point by point."""
    if len(curves) == 1:
        xs, ys = curves[0]
        return xs, ys, ys, ys
    start, stop = max(xs[0] for xs, _ in curves), min(xs[-1] for xs, _ in curves)
    grid = np.linspace(start, stop, GRID_POINTS) if stop > start else np.array([stop])
    values = np.stack([np.interp(grid, xs, ys) for xs, ys in curves])
    return grid, np.median(values, axis=0), values.min(axis=0), values.max(axis=0)
