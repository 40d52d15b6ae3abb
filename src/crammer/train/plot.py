"""`cram plot RUN_DIR`: the pictures a person checks on a day-long run, as PNG files.

Reads RUN_DIR/metrics.jsonl (also mid-run) and writes one PNG per quantity into RUN_DIR/plots:
training and validation loss, validation accuracy, learning rate, batch size, throughput (+ MFU) and, on a
GPU, utilisation, memory, temperature and power. The x axis is elapsed budget time, in seconds, minutes or
hours by the run's length (`crammer.units.time_unit`).
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display needed
import matplotlib.pyplot as plt  # noqa: E402

from crammer.errors import CrammerError  # noqa: E402
from crammer.io import atomic_path  # noqa: E402
from crammer.runfiles import METRICS_FILE, read_metrics  # noqa: E402
from crammer.units import time_unit  # noqa: E402

# file name -> (title, [(metric key, label, scale)])
PLOTS: dict[str, tuple[str, list[tuple[str, str, float]]]] = {
    "loss": ("MLM loss", [("loss", "training", 1.0), ("val_loss", "validation (held-out documents)", 1.0)]),
    "val_accuracy": ("validation MLM accuracy (%)", [("val_accuracy", "masked-token top-1 %", 100.0)]),
    "lr": ("learning rate", [("lr", "lr", 1.0)]),
    "batch_size": ("global batch (sequences)", [("batch_size", "batch size", 1.0)]),
    "throughput": ("training throughput (tokens/s)", [("tokens_per_s", "tokens/s", 1.0)]),
    "mfu": ("model FLOPs utilisation (%)", [("mfu", "MFU %", 100.0)]),
    "gpu_util": ("GPU utilisation (%)", [("gpu_util", "util %", 1.0)]),
    "gpu_memory": ("GPU memory (GB)", [("gpu_mem_used_gb", "used (NVML)", 1.0),
                                       ("cuda_max_allocated_gb", "max allocated (torch)", 1.0),
                                       ("gpu_mem_total_gb", "total", 1.0)]),
    "gpu_temperature": ("GPU temperature (°C)", [("gpu_temp_c", "°C", 1.0)]),
    "gpu_power": ("GPU power (W)", [("gpu_power_w", "W", 1.0)]),
}


def plot_run(run_dir: str | Path, out_dir: str | Path | None = None) -> list[Path]:
    """Write the PNGs for which the run has data; return their paths."""
    run_dir = Path(run_dir)
    records = read_metrics(run_dir)
    if not records:
        raise CrammerError(f"{run_dir / METRICS_FILE}: no records yet")
    out = Path(out_dir) if out_dir else run_dir / "plots"
    seconds_per_unit, unit = time_unit(max(r.get("elapsed_s", 0.0) for r in records))
    written = []
    for name, (title, series) in PLOTS.items():
        lines = []
        for key, label, scale in series:
            points = [(r["elapsed_s"] / seconds_per_unit, r[key] * scale) for r in records if r.get(key) is not None]
            if points:
                lines.append((label, points))
        if not lines:
            continue
        fig, ax = plt.subplots(figsize=(8, 4))
        for label, points in lines:
            xs, ys = zip(*points)
            ax.plot(xs, ys, label=label, linewidth=1)
        ax.set_title(title)
        ax.set_xlabel(f"elapsed ({unit})")
        if len(series) == 1:
            ax.set_ylabel(series[0][1])  # the unit: tokens/s, %, W, ...
        ax.grid(alpha=0.3)
        if len(lines) > 1:
            ax.legend()
        written.append(save_figure(fig, out / f"{name}.png"))
    return written


def save_figure(fig: plt.Figure, path: Path) -> Path:
    """Write `fig` as a PNG atomically (a report being built never embeds half a file) and close it."""
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return path
