"""What a standalone run is made of: the task protocol, the run's settings, one optimizer's run.

The runner (``runner.py``), its checkpoints (``run_checkpoints.py``) and its reports
(``reports.py``) all work on these; this module imports none of them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from nf_precond_plugin.training.schedules import ScheduleChoice


class Task(Protocol):
    name: str
    metric: str  # the headline metric key returned by evaluate(), higher is better
    samples_per_epoch: int  # what epoch_data returns: an epoch is samples_per_epoch // batch_size steps

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

    # Optional: ``optimizer_overrides(name) -> dict`` of constructor arguments for that optimizer
    # (``RunSettings.optimizer_args`` override them).


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
    resume_command: Callable[[Path], str] | None = None
    """The shell line that resumes a run directory (printed when the run is interrupted)."""
    schedules: dict[str, ScheduleChoice] = field(default_factory=dict)
    """The lr schedule per optimizer name; absent: the optimizer's default (the registry's)."""
    optimizer_args: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Constructor arguments per optimizer name, from the CLI's --optimizer-arg; they override the
    task's ``optimizer_overrides``."""


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
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None
    schedule: ScheduleChoice | None = None
