"""Convergence plots: the metric against epochs and against wall-clock seconds, optimizers overlaid."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def convergence_plot(
    histories: dict[str, list[dict[str, Any]]], metric: str, path: Path, title: str = "", step_key: str = "epoch"
) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (by_epoch, by_time) = plt.subplots(1, 2, figsize=(11, 4), dpi=120)
    for name, rows in histories.items():
        rows = [row for row in rows if metric in row]
        by_epoch.plot(
            [r[step_key] for r in rows], [r[metric] for r in rows], marker="o" if len(rows) < 30 else None, label=name
        )
        by_time.plot([r["wall_seconds"] for r in rows], [r[metric] for r in rows], label=name)
    label = metric.upper() if len(metric) <= 4 else metric
    by_epoch.set(xlabel=step_key, ylabel=label, title=f"per {step_key}")
    by_time.set(xlabel="training seconds (forward + backward + optimizer)", ylabel=label, title="per second")
    if len(histories) > 1:
        # The optimizers ran one after another: a change in the machine's load between them shows
        # here as a speed difference. benchmarks/step_time.py interleaves steps to measure cost.
        by_time.text(
            0.5,
            -0.28,
            "measured one optimizer after another: load changes between runs skew this panel",
            transform=by_time.transAxes,
            ha="center",
            fontsize=7,
            color="0.35",
        )
    for ax in (by_epoch, by_time):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
