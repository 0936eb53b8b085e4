"""The training runner shared by the standalone tasks.

A task defines only its data (one epoch of (x, y) pairs), its model and its metric; the runner
owns everything else: the optimizer-loop contract

    opt.zero_grad(set_to_none=True)
    loss.backward(create_graph=needs_create_graph(opt))
    opt.step()

timing of the optimizer step and of the whole step, evaluation every k epochs, a rich progress
bar with the live metric, checkpoints and resume, and the run directory:

    config.yaml, metrics.csv, convergence.png, <task exports per optimizer>, summary.json (last)

Several optimizers can be compared in one run: each starts from the same initial weights and
sees the same minibatches (each epoch's order is drawn from a generator seeded by (seed, epoch)).
"""

from __future__ import annotations

import copy
import csv
import json
import math
import platform
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
import yaml

from nf_precond_plugin.errors import UserInputError
from nf_precond_plugin.optim.factory import build_optimizer, needs_create_graph
from nf_precond_plugin.rundir import new_run_dir

METRIC_FIELDS = ["optimizer", "epoch", "step", "wall_seconds", "optimizer_step_seconds", "loss"]


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


class Task(Protocol):
    name: str
    metric: str  # the headline metric key returned by evaluate(), higher is better

    def build_model(self) -> torch.nn.Module: ...

    def epoch_data(self, epoch: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """All (inputs, targets) of one epoch, already in training order."""

    def loss(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor: ...

    def evaluate(
        self, model: torch.nn.Module, last_batch: tuple[torch.Tensor, torch.Tensor] | None
    ) -> dict[str, float]:
        """Metrics; must contain ``self.metric``."""

    def export(self, model: torch.nn.Module, run_dir: Path, tag: str) -> list[Path]:
        """Pictures/meshes of the result, named with ``tag`` (the optimizer)."""

    def describe(self) -> dict[str, Any]:
        """Where the data came from and what was chosen, for summary.json."""

    # Optional: ``optimizer_overrides(name) -> dict`` of constructor arguments for that optimizer.


@dataclass
class RunSettings:
    optimizers: Sequence[str]
    learning_rates: dict[str, float]
    epochs: int
    batch_size: int
    eval_every: int = 1
    seed: int = 0
    output_dir: Path = Path("outputs")
    resume: Path | None = None
    config: dict[str, Any] = field(default_factory=dict)  # the CLI config, saved as config.yaml
    progress: bool = True


def _validate(settings: RunSettings) -> None:
    for name, value in (
        ("--epochs", settings.epochs),
        ("--batch-size", settings.batch_size),
        ("--eval-every", settings.eval_every),
    ):
        if value < 1:
            raise UserInputError(f"{name}: expected a positive integer, got {value}")
    for name, lr in settings.learning_rates.items():
        if not lr > 0:
            raise UserInputError(f"--lr for {name}: expected a learning rate > 0, got {lr}")


def run_task(task: Task, settings: RunSettings) -> dict[str, Any]:
    """Train ``task`` with each optimizer in turn and write the run directory. Returns the summary."""
    from rich.console import Console

    console = Console(stderr=True)
    _validate(settings)
    run_dir = _open_run_dir(task, settings)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(_plain(settings.config), sort_keys=False))
    (run_dir / "checkpoints").mkdir(exist_ok=True)

    torch.manual_seed(settings.seed)
    initial_state = copy.deepcopy(task.build_model().state_dict())
    histories: dict[str, list[dict[str, Any]]] = {}
    results: dict[str, dict[str, Any]] = {}
    for name in settings.optimizers:

        def write_progress(history: list[dict[str, Any]], name: str = name) -> None:
            _write_metrics(run_dir / "metrics.csv", {**histories, name: history}, task.metric)

        histories[name], results[name] = _train_one(
            task, settings, name, initial_state, run_dir, console, write_progress
        )
    _write_metrics(run_dir / "metrics.csv", histories, task.metric)

    from nf_precond_plugin.training.plots import convergence_plot

    plot = convergence_plot(
        histories, task.metric, run_dir / "convergence.png", title=f"{task.name}: {task.describe().get('source', '')}"
    )
    summary = {
        "task": task.name,
        "metric": task.metric,
        "optimizers": {name: results[name] for name in settings.optimizers},
        "data": task.describe(),
        "config": _plain(settings.config),
        "seed": settings.seed,
        "epochs": settings.epochs,
        "batch_size": settings.batch_size,
        "environment": {
            "torch": torch.__version__,
            "python": platform.python_version(),
            "machine": platform.machine(),
            "threads": torch.get_num_threads(),
        },
        "files": {"metrics": "metrics.csv", "plot": plot.name},
        "run_dir": str(run_dir),
    }
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))  # last: marks the run complete
    return summary


def _open_run_dir(task: Task, settings: RunSettings) -> Path:
    if settings.resume is None:
        return new_run_dir(settings.output_dir, f"{task.name}-{'-'.join(settings.optimizers)}")
    run_dir = Path(settings.resume)
    if not (run_dir / "checkpoints").is_dir():
        raise UserInputError(f"--resume {run_dir}: not a run directory with checkpoints/")
    if (run_dir / "summary.json").exists():
        raise UserInputError(
            f"--resume {run_dir}: this run is already complete (summary.json exists); start a new run instead"
        )
    return run_dir


def _train_one(task, settings, name, initial_state, run_dir, console, on_epoch):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    model = task.build_model()
    model.load_state_dict(initial_state)
    overrides = getattr(task, "optimizer_overrides", lambda _name: {})(name)
    optimizer = build_optimizer(name, model, settings.learning_rates[name], **overrides)
    checkpoint_path = run_dir / "checkpoints" / f"{name}.pt"
    history: list[dict[str, Any]] = []
    start_epoch, step, wall, opt_seconds = 0, 0, 0.0, 0.0
    if settings.resume is not None and checkpoint_path.exists():
        checkpoint = torch.load(checkpoint_path, weights_only=False)
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        torch.set_rng_state(checkpoint["torch_rng"])
        history, start_epoch, step = checkpoint["history"], checkpoint["epoch"], checkpoint["step"]
        wall, opt_seconds = checkpoint["wall_seconds"], checkpoint["optimizer_step_seconds"]
        console.print(f"[{name}] resumed from {checkpoint_path} at epoch {start_epoch}")
    else:
        torch.manual_seed(settings.seed)  # the same probe stream for every compared optimizer

    last_batch = None
    columns = [
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[status]}"),
    ]
    with Progress(*columns, console=console, disable=not settings.progress, transient=False) as progress:
        bar = progress.add_task(f"{task.name} · {name}", total=settings.epochs, completed=start_epoch, status="")
        for epoch in range(start_epoch, settings.epochs):
            generator = torch.Generator().manual_seed(settings.seed * 1_000_003 + epoch)
            inputs, targets = task.epoch_data(epoch, generator)
            epoch_loss, batches = 0.0, 0
            for begin in range(0, inputs.shape[0] - settings.batch_size + 1, settings.batch_size):
                x, y = inputs[begin : begin + settings.batch_size], targets[begin : begin + settings.batch_size]
                step_start = time.perf_counter()
                optimizer.zero_grad(set_to_none=True)
                prediction = model(x)
                loss = task.loss(prediction, y)
                if not math.isfinite(loss.item()):
                    raise TrainingDiverged(
                        f"{name}: the loss became {loss.item()} at epoch {epoch + 1}, step {step}; "
                        f"the last good checkpoint is kept at {checkpoint_path if checkpoint_path.exists() else '(none yet)'}"
                    )
                loss.backward(create_graph=needs_create_graph(optimizer))
                opt_start = time.perf_counter()
                optimizer.step()
                now = time.perf_counter()
                opt_seconds += now - opt_start
                wall += now - step_start
                epoch_loss += loss.item()
                batches += 1
                step += 1
                last_batch = (x, y, prediction.detach())
            if batches == 0:
                raise UserInputError(
                    f"--batch-size {settings.batch_size} is larger than an epoch ({inputs.shape[0]} samples)"
                )
            row = {
                "optimizer": name,
                "epoch": epoch + 1,
                "step": step,
                "wall_seconds": wall,
                "optimizer_step_seconds": opt_seconds,
                "loss": epoch_loss / batches,
            }
            if (epoch + 1) % settings.eval_every == 0 or epoch + 1 == settings.epochs:
                model.eval()
                row.update(task.evaluate(model, last_batch))
                model.train()
            history.append(row)
            torch.save(
                {
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "torch_rng": torch.get_rng_state(),
                    "history": history,
                    "epoch": epoch + 1,
                    "step": step,
                    "wall_seconds": wall,
                    "optimizer_step_seconds": opt_seconds,
                },
                checkpoint_path.with_suffix(".tmp"),
            )
            checkpoint_path.with_suffix(".tmp").replace(checkpoint_path)  # never a half-written checkpoint
            on_epoch(history)  # metrics.csv follows training live
            metric = row.get(task.metric)
            status = f"loss {row['loss']:.4g}" + (f"  {task.metric} {metric:.3f}" if metric is not None else "")
            progress.update(bar, advance=1, status=status)

    evaluated = [row for row in history if task.metric in row]
    final = evaluated[-1] if evaluated else {}
    exports = task.export(model, run_dir, name)
    result = {
        "lr": settings.learning_rates[name],
        "final": {k: v for k, v in final.items() if k != "optimizer"},
        "best": max((row[task.metric] for row in evaluated), default=None),
        "steps": step,
        "wall_seconds": wall,
        "optimizer_step_seconds": opt_seconds,
        "seconds_per_step": wall / max(step, 1),
        "exports": [p.name for p in exports],
        "checkpoint": str(checkpoint_path.relative_to(run_dir)),
    }
    return history, result


def _write_metrics(path: Path, histories: dict[str, list[dict[str, Any]]], metric: str) -> None:
    extra = sorted({key for rows in histories.values() for row in rows for key in row} - set(METRIC_FIELDS) - {metric})
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=METRIC_FIELDS + [metric] + extra)
        writer.writeheader()
        for rows in histories.values():
            writer.writerows(rows)


def _plain(value: Any) -> Any:
    """YAML/JSON-safe copy: paths become strings, tuples lists."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value
