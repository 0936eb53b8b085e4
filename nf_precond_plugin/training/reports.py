"""What a runner's run directory reports: config.yaml, metrics.csv, convergence.png, summary.json.

metrics.csv follows training live (rewritten after every epoch); summary.json is written last and
so marks the run complete. Only rank 0 writes any of them.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import platform
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import yaml

if TYPE_CHECKING:
    from nf_precond_plugin.training.distributed import Ranks
    from nf_precond_plugin.training.run import OptimizerRun, RunSettings, Task

METRIC_FIELDS = ["optimizer", "epoch", "step", "wall_seconds", "optimizer_step_seconds", "loss"]
"""metrics.csv's first columns; then the task's metric, then any other key of the rows, sorted."""


def write_config(run_dir: Path, config: dict[str, Any]) -> None:
    (run_dir / "config.yaml").write_text(yaml.safe_dump(plain(config), sort_keys=False))


def write_metrics(path: Path, histories: dict[str, list[dict[str, Any]]], metric: str) -> None:
    """Every optimizer's rows, one per epoch, in the order the optimizers ran."""
    extra = sorted({key for rows in histories.values() for row in rows for key in row} - set(METRIC_FIELDS) - {metric})
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=METRIC_FIELDS + [metric] + extra)
        writer.writeheader()
        for rows in histories.values():
            writer.writerows(rows)


def optimizer_result(
    task: Task, settings: RunSettings, run: OptimizerRun, exports: list[Path], run_dir: Path
) -> dict[str, Any]:
    """One optimizer's entry of summary.json: its last and best metric, steps, timings, files."""
    evaluated = [row for row in run.history if task.metric in row]
    final = evaluated[-1] if evaluated else {}
    return {
        "lr": settings.learning_rates[run.name],
        "schedule": dataclasses.asdict(run.schedule) if run.schedule is not None else None,
        "final": {k: v for k, v in final.items() if k != "optimizer"},
        "best": max((row[task.metric] for row in evaluated), default=None),
        "steps": run.step,
        "wall_seconds": run.wall_seconds,
        "optimizer_step_seconds": run.optimizer_step_seconds,
        "seconds_per_step": run.wall_seconds / max(run.step, 1),
        "exports": [p.name for p in exports],
        "checkpoint": str(run.checkpoint_path.relative_to(run_dir)),
    }


def short_summary(task: Task, settings: RunSettings, results: dict[str, dict[str, Any]], run_dir: Path) -> dict:
    """The summary every rank returns: the task and each optimizer's result."""
    return {
        "task": task.name,
        "metric": task.metric,
        "optimizers": {name: results[name] for name in settings.optimizers},
        "run_dir": str(run_dir),
    }


def write_reports(
    task: Task,
    settings: RunSettings,
    histories: dict[str, list[dict[str, Any]]],
    results: dict[str, dict[str, Any]],
    run_dir: Path,
    ranks: Ranks,
) -> dict[str, Any]:
    """metrics.csv, the convergence plot and, last, summary.json (rank 0); returns the summary."""
    from nf_precond_plugin.training.plots import convergence_plot

    write_metrics(run_dir / "metrics.csv", histories, task.metric)
    plot = convergence_plot(
        histories, task.metric, run_dir / "convergence.png", title=f"{task.name}: {task.describe().get('source', '')}"
    )
    summary = {
        **short_summary(task, settings, results, run_dir),
        "data": task.describe(),
        "config": plain(settings.config),
        "seed": settings.seed,
        "epochs": settings.epochs,
        "batch_size": settings.batch_size,
        "environment": {
            "torch": torch.__version__,
            "python": platform.python_version(),
            "machine": platform.machine(),
            "threads": torch.get_num_threads(),
            "processes": ranks.world_size,
        },
        "files": {"metrics": "metrics.csv", "plot": plot.name},
        "run_dir": str(run_dir),
    }
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))  # last: marks the run complete
    return summary


def plain(value: Any) -> Any:
    """YAML/JSON-safe copy: paths become strings, tuples lists."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value
