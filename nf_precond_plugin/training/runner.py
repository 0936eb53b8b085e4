"""The training runner shared by the standalone tasks.

A task defines only its data (one epoch of (x, y) pairs), its model and its metric; the runner
owns everything else: the training step (``training.step.training_step``), timing of the optimizer
step and of the whole step, evaluation every k epochs, a rich progress bar with the live metric,
checkpoints and resume, and the run directory:

    config.yaml, metrics.csv, convergence.png, <task exports per optimizer>, summary.json (last)

Several optimizers can be compared in one run: each starts from the same initial weights and
sees the same minibatches (each epoch's order is drawn from a generator seeded by (seed, epoch)).

Under ``torchrun --nproc-per-node N`` every rank takes its 1/N of each global minibatch
(``training.distributed``); the global batches, their order, the probes and so the result are
those of one process, up to the rounding of the averages. Rank 0 alone evaluates, writes the run
directory and checkpoints and shows progress. A checkpoint holds the replicated state only, so a
run started on N processes resumes on any number.
"""

from __future__ import annotations

import copy
import csv
import json
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import torch
import yaml

from nf_precond_plugin.curvature import active_process_group, all_reduce_mean_
from nf_precond_plugin.errors import TrainingDiverged, UserInputError
from nf_precond_plugin.optim.factory import build_optimizer, check_data_parallel
from nf_precond_plugin.rundir import new_run_dir
from nf_precond_plugin.training.distributed import Ranks, current_ranks, from_main, local_shard, peers_watched
from nf_precond_plugin.training.step import NonFiniteLossError, training_step

if TYPE_CHECKING:
    from rich.console import Console

METRIC_FIELDS = ["optimizer", "epoch", "step", "wall_seconds", "optimizer_step_seconds", "loss"]


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
    device: str = "cpu"
    """The model and each minibatch live here; tasks keep their data on the CPU."""


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
    ranks = current_ranks()
    if ranks.world_size > 1:
        if settings.batch_size % ranks.world_size:
            raise UserInputError(
                f"--batch-size {settings.batch_size}: expected a multiple of the {ranks.world_size} processes, "
                "so that every rank takes an equal shard of each minibatch"
            )
        for name in settings.optimizers:
            try:
                check_data_parallel(name)
            except ValueError as error:
                raise UserInputError(f"--optimizer/--compare: {error}") from None


def run_task(task: Task, settings: RunSettings) -> dict[str, Any]:
    """Train ``task`` with each optimizer in turn and write the run directory. Returns the summary."""
    from rich.console import Console

    console = Console(stderr=True)
    _validate(settings)
    ranks = current_ranks()
    run_dir = _shared_run_dir(task, settings, ranks)
    if ranks.is_main:
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
    summary = {
        "task": task.name,
        "metric": task.metric,
        "optimizers": {name: results[name] for name in settings.optimizers},
        "run_dir": str(run_dir),
    }
    if not ranks.is_main:
        return summary
    _write_metrics(run_dir / "metrics.csv", histories, task.metric)

    from nf_precond_plugin.training.plots import convergence_plot

    plot = convergence_plot(
        histories, task.metric, run_dir / "convergence.png", title=f"{task.name}: {task.describe().get('source', '')}"
    )
    summary = {
        **summary,
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
            "processes": ranks.world_size,
        },
        "files": {"metrics": "metrics.csv", "plot": plot.name},
        "run_dir": str(run_dir),
    }
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))  # last: marks the run complete
    return summary


def _shared_run_dir(task: Task, settings: RunSettings, ranks: Ranks) -> Path:
    """Rank 0 opens (or checks) the run directory; every rank gets its path, or rank 0's error."""
    opened: tuple[str, str] = ("", "")
    if ranks.is_main:
        try:
            opened = ("ok", str(_open_run_dir(task, settings)))
        except UserInputError as error:
            opened = ("error", str(error))
    if ranks.world_size > 1:
        opened = from_main(opened)
    outcome, text = opened
    if outcome == "error":
        raise UserInputError(text)
    return Path(text)


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


@dataclass
class OptimizerRun:
    """One optimizer's training: its model, optimizer and everything a checkpoint restores."""

    name: str
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    checkpoint_path: Path
    history: list[dict[str, Any]] = field(default_factory=list)
    epoch: int = 0
    step: int = 0
    wall_seconds: float = 0.0
    optimizer_step_seconds: float = 0.0
    last_batch: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None


def build_run(task: Task, settings: RunSettings, name: str, initial_state: dict, run_dir: Path) -> OptimizerRun:
    """A model at the shared initial weights and a fresh optimizer over it."""
    model = task.build_model().to(settings.device)
    model.load_state_dict(initial_state)
    overrides = getattr(task, "optimizer_overrides", lambda _name: {})(name)
    optimizer = build_optimizer(name, model, settings.learning_rates[name], **overrides)
    return OptimizerRun(name, model, optimizer, run_dir / "checkpoints" / f"{name}.pt")


def resume_run(run: OptimizerRun) -> bool:
    """Restore ``run`` from its checkpoint if there is one; whether it did."""
    if not run.checkpoint_path.exists():
        return False
    checkpoint = torch.load(run.checkpoint_path, map_location="cpu", weights_only=False)
    run.model.load_state_dict(checkpoint["model"])
    run.optimizer.load_state_dict(checkpoint["optimizer"])
    torch.set_rng_state(checkpoint["torch_rng"])
    run.history, run.epoch, run.step = checkpoint["history"], checkpoint["epoch"], checkpoint["step"]
    run.wall_seconds, run.optimizer_step_seconds = checkpoint["wall_seconds"], checkpoint["optimizer_step_seconds"]
    return True


def save_checkpoint(run: OptimizerRun) -> None:
    """Write the checkpoint through a temporary file, so that a crash never leaves half of one."""
    partial = run.checkpoint_path.with_suffix(".tmp")
    torch.save(
        {
            "model": run.model.state_dict(),
            "optimizer": run.optimizer.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "history": run.history,
            "epoch": run.epoch,
            "step": run.step,
            "wall_seconds": run.wall_seconds,
            "optimizer_step_seconds": run.optimizer_step_seconds,
        },
        partial,
    )
    partial.replace(run.checkpoint_path)


def train_epoch(task: Task, settings: RunSettings, run: OptimizerRun) -> dict[str, Any]:
    """One epoch of minibatch steps (the data order is seeded by (seed, epoch)); returns its metrics row."""
    ranks = current_ranks()
    generator = torch.Generator().manual_seed(settings.seed * 1_000_003 + run.epoch)
    inputs, targets = task.epoch_data(run.epoch, generator)
    epoch_loss, batches = 0.0, 0
    for begin in range(0, inputs.shape[0] - settings.batch_size + 1, settings.batch_size):
        x = local_shard(inputs[begin : begin + settings.batch_size], ranks).to(settings.device)
        y = local_shard(targets[begin : begin + settings.batch_size], ranks).to(settings.device)

        def compute_loss(x: torch.Tensor = x, y: torch.Tensor = y) -> tuple[torch.Tensor, torch.Tensor]:
            prediction = run.model(x)
            return task.loss(prediction, y), prediction

        started = time.perf_counter()
        try:
            result = training_step([run.optimizer], compute_loss)
        except NonFiniteLossError as error:
            kept = run.checkpoint_path if run.checkpoint_path.exists() else "(none yet)"
            raise TrainingDiverged(
                f"{run.name}: {error} at epoch {run.epoch + 1}, step {run.step}; "
                f"the last good checkpoint is kept at {kept}"
            ) from None
        run.wall_seconds += time.perf_counter() - started
        run.optimizer_step_seconds += result.optimizer_seconds
        epoch_loss += float(result.loss)
        batches += 1
        run.step += 1
        run.last_batch = (x, y, result.aux.detach())
    if batches == 0:
        raise UserInputError(f"--batch-size {settings.batch_size} is larger than an epoch ({inputs.shape[0]} samples)")
    run.epoch += 1
    epoch_loss /= batches
    if ranks.world_size > 1:  # the global batch's loss, not rank 0's shard's
        mean = torch.tensor([epoch_loss], dtype=torch.float64, device=settings.device)
        all_reduce_mean_([mean], active_process_group())
        epoch_loss = float(mean)
    row = {
        "optimizer": run.name,
        "epoch": run.epoch,
        "step": run.step,
        "wall_seconds": run.wall_seconds,
        "optimizer_step_seconds": run.optimizer_step_seconds,
        "loss": epoch_loss,
    }
    if ranks.is_main and (run.epoch % settings.eval_every == 0 or run.epoch == settings.epochs):
        run.model.eval()
        row.update(task.evaluate(run.model, run.last_batch))
        run.model.train()
    return row


def _train_one(
    task: Task,
    settings: RunSettings,
    name: str,
    initial_state: dict,
    run_dir: Path,
    console: Console,
    on_epoch: Callable[[list[dict[str, Any]]], None],
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    main = current_ranks().is_main
    torch.manual_seed(settings.seed)  # the same probe seed (drawn by the optimizer) for every compared optimizer
    run = build_run(task, settings, name, initial_state, run_dir)
    if settings.resume is not None and resume_run(run):
        if main:
            console.print(f"[{name}] resumed from {run.checkpoint_path} at epoch {run.epoch}")

    columns = [
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[status]}"),
    ]
    with Progress(*columns, console=console, disable=not (settings.progress and main), transient=False) as progress:
        bar = progress.add_task(f"{task.name} · {name}", total=settings.epochs, completed=run.epoch, status="")
        while run.epoch < settings.epochs:
            kept = f"resume with --resume {run_dir}"
            with peers_watched(current_ranks(), kept):
                row = train_epoch(task, settings, run)
            run.history.append(row)
            if main:
                save_checkpoint(run)
                on_epoch(run.history)  # metrics.csv follows training live
            metric = row.get(task.metric)
            status = f"loss {row['loss']:.4g}" + (f"  {task.metric} {metric:.3f}" if metric is not None else "")
            progress.update(bar, advance=1, status=status)

    evaluated = [row for row in run.history if task.metric in row]
    final = evaluated[-1] if evaluated else {}
    exports = task.export(run.model, run_dir, name) if main else []
    result = {
        "lr": settings.learning_rates[name],
        "final": {k: v for k, v in final.items() if k != "optimizer"},
        "best": max((row[task.metric] for row in evaluated), default=None),
        "steps": run.step,
        "wall_seconds": run.wall_seconds,
        "optimizer_step_seconds": run.optimizer_step_seconds,
        "seconds_per_step": run.wall_seconds / max(run.step, 1),
        "exports": [p.name for p in exports],
        "checkpoint": str(run.checkpoint_path.relative_to(run_dir)),
    }
    return run.history, result


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
