"""The training runner shared by the standalone tasks.

A task defines only its data (one epoch of (x, y) pairs), its model and its metric; the runner
owns everything else: the training step (``training.step.training_step``), timing of the optimizer
step and of the whole step, evaluation every k epochs, a rich progress bar with the live metric,
checkpoints and resume (``training.run_checkpoints``), and the run directory (``training.reports``):

    config.yaml, metrics.csv, convergence.png, <task exports per optimizer>, checkpoints/, summary.json (last)

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
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from nf_precond_plugin.curvature import active_process_group, all_reduce_mean_
from nf_precond_plugin.errors import RunInterrupted, TrainingDiverged, UserInputError
from nf_precond_plugin.optim.factory import build_optimizer, check_data_parallel, optimizer_spec, without_momentum
from nf_precond_plugin.optim.schedule_free import ScheduleFree
from nf_precond_plugin.rundir import new_run_dir
from nf_precond_plugin.training.distributed import Ranks, current_ranks, from_main, local_shard, peers_watched
from nf_precond_plugin.training.reports import (
    optimizer_result,
    short_summary,
    write_config,
    write_metrics,
    write_reports,
)
from nf_precond_plugin.training.run import OptimizerRun, RunSettings, Task
from nf_precond_plugin.training.run_checkpoints import resume_run, save_checkpoint
from nf_precond_plugin.training.schedules import AveragesWeights, ScheduleChoice, lr_scheduler
from nf_precond_plugin.training.step import NonFiniteLossError, training_step

if TYPE_CHECKING:
    from rich.console import Console


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
    if settings.batch_size > task.samples_per_epoch:
        raise UserInputError(
            f"--batch-size {settings.batch_size}: larger than an epoch ({task.samples_per_epoch} samples); "
            f"expected at most {task.samples_per_epoch}"
        )
    ranks = current_ranks()
    run_dir = _shared_run_dir(task, settings, ranks)
    if ranks.is_main and settings.resume is None:  # a resumed run keeps the record it was started with
        write_config(run_dir, settings.config)
        (run_dir / "checkpoints").mkdir(exist_ok=True)

    torch.manual_seed(settings.seed)
    initial_state = copy.deepcopy(task.build_model().state_dict())
    histories: dict[str, list[dict[str, Any]]] = {}
    results: dict[str, dict[str, Any]] = {}
    try:
        for name in settings.optimizers:

            def write_progress(history: list[dict[str, Any]], name: str = name) -> None:
                write_metrics(run_dir / "metrics.csv", {**histories, name: history}, task.metric)

            histories[name], results[name] = _train_one(
                task, settings, name, initial_state, run_dir, console, write_progress
            )
    except KeyboardInterrupt:
        kept = sorted(path.name for path in (run_dir / "checkpoints").glob("*.pt"))
        where = f"kept {run_dir} (checkpoints: {', '.join(kept)})" if kept else f"{run_dir} has no checkpoint yet"
        how = f"resume with: {settings.resume_command(run_dir)}" if settings.resume_command else "start it again"
        raise RunInterrupted(f"{where}; {how}") from None
    if not ranks.is_main:
        return short_summary(task, settings, results, run_dir)
    return write_reports(task, settings, histories, results, run_dir, ranks)


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


def schedule_of(settings: RunSettings, name: str) -> ScheduleChoice:
    """The run's schedule for optimizer ``name``: the one asked for, else the registry's default."""
    return settings.schedules.get(name) or ScheduleChoice(optimizer_spec(name).schedule)


def constructor_arguments(task: Task, optimizer_args: dict[str, dict[str, Any]], name: str) -> dict[str, Any]:
    """The constructor arguments of optimizer ``name`` in a run: the task's (its optional
    ``optimizer_overrides``), then the user's (``--optimizer-arg``), which win."""
    return {**getattr(task, "optimizer_overrides", lambda _name: {})(name), **optimizer_args.get(name, {})}


def build_scheduled_optimizer(
    name: str, model: torch.nn.Module, lr: float, averages_weights: bool, overrides: dict[str, Any]
) -> torch.optim.Optimizer:
    """``build_optimizer``, wrapped in ``ScheduleFree`` for a schedule that averages the weights
    (with the optimizer's own momentum off, unless ``overrides`` set betas), except for an
    optimizer that averages by itself."""
    wrap = averages_weights and not issubclass(optimizer_spec(name).constructor(), AveragesWeights)
    optimizer = build_optimizer(name, model, lr, **{**(without_momentum(name) if wrap else {}), **overrides})
    return ScheduleFree(optimizer) if wrap else optimizer


def build_run(task: Task, settings: RunSettings, name: str, initial_state: dict, run_dir: Path) -> OptimizerRun:
    """A model at the shared initial weights, a fresh optimizer over it, and its lr schedule."""
    model = task.build_model().to(settings.device)
    model.load_state_dict(initial_state)
    choice = schedule_of(settings, name)
    schedule = choice.in_steps(task.samples_per_epoch // settings.batch_size, settings.epochs)
    overrides = constructor_arguments(task, settings.optimizer_args, name)
    optimizer = build_scheduled_optimizer(
        name, model, settings.learning_rates[name], schedule.averages_weights, overrides
    )
    run = OptimizerRun(name, model, optimizer, run_dir / "checkpoints" / f"{name}.pt", schedule=choice)
    run.scheduler = lr_scheduler(optimizer, schedule)
    return run


def train_epoch(task: Task, settings: RunSettings, run: OptimizerRun) -> dict[str, Any]:
    """One epoch of minibatch steps (the data order is seeded by (seed, epoch)); returns its metrics row."""
    ranks = current_ranks()
    averaging = isinstance(run.optimizer, AveragesWeights)
    if averaging:
        run.optimizer.train()  # the training point; epochs end (and checkpoints hold) the average
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
        if run.scheduler is not None:
            run.scheduler.step()
        run.wall_seconds += time.perf_counter() - started
        run.optimizer_step_seconds += result.optimizer_seconds
        epoch_loss += float(result.loss)
        batches += 1
        run.step += 1
        run.last_batch = (x, y, result.aux.detach())
    if batches == 0:
        raise UserInputError(f"--batch-size {settings.batch_size} is larger than an epoch ({inputs.shape[0]} samples)")
    run.epoch += 1
    if averaging:
        run.optimizer.eval()  # evaluation, the checkpoint and the exports see the averaged weights
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
        "lr": float(run.optimizer.param_groups[0]["lr"]),  # for the next epoch's first step
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
            kept = f"resume with: {settings.resume_command(run_dir) if settings.resume_command else run_dir}"
            with peers_watched(current_ranks(), kept):
                row = train_epoch(task, settings, run)
            run.history.append(row)
            if main:
                save_checkpoint(run)
                on_epoch(run.history)  # metrics.csv follows training live
            metric = row.get(task.metric)
            status = f"loss {row['loss']:.4g}" + (f"  {task.metric} {metric:.3f}" if metric is not None else "")
            progress.update(bar, advance=1, status=status)

    exports = task.export(run.model, run_dir, name) if main else []
    return run.history, optimizer_result(task, settings, run, exports, run_dir)
