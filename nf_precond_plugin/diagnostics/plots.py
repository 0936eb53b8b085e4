"""Matplotlib figures for the diagnostics (Agg backend: no display needed)."""

from __future__ import annotations

from pathlib import Path


def bar_plot(values: dict[str, float], title: str, ylabel: str, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 3.5), dpi=120)
    names = list(values)
    bars = ax.bar(names, [values[n] for n in names], color=["#4c72b0"] * (len(names) - 1) + ["#dd8452"])
    ax.bar_label(bars, fmt="%.3f", fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.tick_params(axis="x", labelsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
