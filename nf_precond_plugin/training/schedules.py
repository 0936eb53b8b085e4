"""The learning-rate schedule of a run: one choice for every optimizer, applied by torch's LambdaLR.

At optimizer step k (0-based) of a run of N steps, with W warm-up steps, the lr is
lr · w(k) · f(k):

    w(k) = min(1, (k + 1) / W)                    linear warm-up (W = 0: none)
    constant        f(k) = 1
    inverse-time    f(k) = 1 / (1 + k / T)        halved after T steps (T: one epoch by default)
    exponential     f(k) = e^(k / N · ln ρ)       from 1 to the end fraction ρ at step N
    cosine          f(k) = ρ + (1 − ρ) · ½ (1 + cos(π · min(1, (k − W) / (N − W))))   after the warm-up
    schedule-free   f(k) = 1, and the weights are averaged (``optim.schedule_free``)

Inverse-time is the decay ESGD used to carry inside its update (lr / (1 + (t − 1)/T) at 1-based
step t); as a schedule it applies to any optimizer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Protocol, get_args, runtime_checkable

import torch

ScheduleName = Literal["constant", "inverse-time", "exponential", "cosine", "schedule-free"]
SCHEDULES: tuple[str, ...] = get_args(ScheduleName)


@dataclass(frozen=True)
class Schedule:
    """A run's schedule in steps (the CLIs state it in epochs and convert)."""

    name: ScheduleName
    total_steps: int
    """N: the run's optimizer steps."""
    warmup_steps: int = 0
    """W: linear warm-up from lr/W to lr over the first W steps."""
    decay_steps: int = 1
    """T of inverse-time decay."""
    end_fraction: float = 0.1
    """ρ: the lr at the end of the run (after N steps) ÷ the initial lr (exponential and cosine)."""

    def __post_init__(self) -> None:
        if self.name not in SCHEDULES:
            raise ValueError(f"Invalid schedule: {self.name!r} (expected one of {', '.join(SCHEDULES)})")
        if self.total_steps < 1:
            raise ValueError(f"Invalid total_steps: {self.total_steps} (expected at least 1)")
        if not 0 <= self.warmup_steps <= self.total_steps:
            raise ValueError(f"Invalid warmup_steps: {self.warmup_steps} (expected 0 <= W <= {self.total_steps})")
        if self.decay_steps < 1:
            raise ValueError(f"Invalid decay_steps: {self.decay_steps} (expected at least 1)")
        # (not math.ulp(0.0) as a bound: a process that flushes subnormals compares it as 0)
        if not 0.0 <= self.end_fraction <= 1.0 or (self.name != "cosine" and self.end_fraction == 0.0):
            raise ValueError(
                f"Invalid end_fraction: {self.end_fraction} (expected {'0 <=' if self.name == 'cosine' else '0 <'} "
                "fraction <= 1)"
            )

    @property
    def averages_weights(self) -> bool:
        return ScheduleChoice(self.name).averages_weights

    def factor(self, step: int) -> float:
        """w(k) · f(k) at 0-based step k (the module docstring's closed forms)."""
        warmup = min(1.0, (step + 1) / self.warmup_steps) if self.warmup_steps else 1.0
        if self.name == "inverse-time":
            return warmup * (1.0 / (1.0 + step / self.decay_steps))
        if self.name == "exponential":
            return warmup * math.exp(step / self.total_steps * math.log(self.end_fraction))
        if self.name == "cosine":
            span = max(self.total_steps - self.warmup_steps, 1)
            progress = min(1.0, max(0, step - self.warmup_steps) / span)
            return warmup * (self.end_fraction + (1.0 - self.end_fraction) * 0.5 * (1.0 + math.cos(math.pi * progress)))
        return warmup


def lr_scheduler(optimizer: torch.optim.Optimizer, schedule: Schedule) -> torch.optim.lr_scheduler.LambdaLR:
    """torch's LambdaLR over ``optimizer`` following ``schedule``; call its ``step()`` after each
    ``optimizer.step()``. Its ``state_dict()`` holds the step count, so a run resumes on schedule."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, schedule.factor)


@dataclass(frozen=True)
class ScheduleChoice:
    """A schedule as a user states it, in epochs (``--schedule``, ``--warmup-epochs``,
    ``--decay-epochs``, ``--decay-end``); ``in_steps`` turns it into a run's ``Schedule``."""

    name: ScheduleName
    warmup_epochs: float = 0.0
    decay_epochs: float = 1.0
    """T of inverse-time decay, in epochs."""
    end_fraction: float = 0.1
    """ρ of exponential and cosine decay."""

    @property
    def averages_weights(self) -> bool:
        return self.name == "schedule-free"

    def in_steps(self, steps_per_epoch: int, epochs: int) -> Schedule:
        return Schedule(
            self.name,
            total_steps=max(steps_per_epoch * epochs, 1),
            warmup_steps=round(self.warmup_epochs * steps_per_epoch),
            decay_steps=max(round(self.decay_epochs * steps_per_epoch), 1),
            end_fraction=self.end_fraction,
        )


@runtime_checkable
class AveragesWeights(Protocol):
    """An optimizer that trains at one point and evaluates at an average (schedule-free):
    ``eval()`` before evaluating, checkpointing or exporting, ``train()`` before training."""

    def train(self) -> None: ...

    def eval(self) -> None: ...
