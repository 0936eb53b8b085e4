"""A nerfstudio Trainer whose backward builds a graph on the steps a curvature optimizer asks for.

On those steps ``torch.autograd.grad(loss, params, create_graph=True)`` returns gradients that are
still functions of the parameters; the optimizer's ``step()`` differentiates g·v again to get the
Hessian-vector product Hv and then frees the graph. On every other step (and for Adam) the same
call runs without a graph, which costs what ``loss.backward()`` costs.
"""

from __future__ import annotations

import csv
import functools
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from nerfstudio.engine.trainer import TRAIN_INTERATION_OUTPUT, Trainer, TrainerConfig
from nerfstudio.utils import profiler

from nf_precond_plugin.errors import UserInputError
from nf_precond_plugin.nerf.optimizers import DecayToFractionSchedulerConfig
from nf_precond_plugin.optim.base import CurvatureOptimizer
from nf_precond_plugin.runtime import configure_entry_point


@dataclass
class CurvatureTrainerConfig(TrainerConfig):
    _target: type = field(default_factory=lambda: CurvatureTrainer)


def curvature_groups(config: TrainerConfig) -> list[str]:
    """Parameter groups whose optimizer takes Hessian-vector products."""
    return [
        name
        for name, entry in config.optimizers.items()
        if isinstance(entry["optimizer"]._target, type) and issubclass(entry["optimizer"]._target, CurvatureOptimizer)
    ]


def check_supported(config: TrainerConfig, world_size: int) -> None:
    """Refuse the settings the curvature optimizers cannot honour yet, naming the option."""
    groups = curvature_groups(config)
    if not groups:
        return
    optimizer = type(config.optimizers[groups[0]]["optimizer"]).__name__.replace("OptimizerConfig", "")
    devices = config.machine.num_devices * config.machine.num_machines
    if world_size > 1 or devices > 1:
        raise UserInputError(
            f"--machine.num-devices/--machine.num-machines: {optimizer} runs on one device only "
            f"(got {devices}); multi-device Hessian-vector products are not supported yet"
        )
    accumulated = {g: n for g, n in config.gradient_accumulation_steps.items() if g in groups and n != 1}
    if accumulated:
        raise UserInputError(
            f"--gradient-accumulation-steps {accumulated}: {optimizer} needs the whole loss's graph on one step; "
            "gradient accumulation is not supported for curvature optimizers"
        )
    if config.mixed_precision or config.use_grad_scaler:
        raise UserInputError(
            f"--mixed-precision/--use-grad-scaler: {optimizer} takes second derivatives in float32; "
            "turn mixed precision and the grad scaler off"
        )
    clipped = [g for g in groups if config.optimizers[g]["optimizer"].max_norm is not None]
    if clipped:
        raise UserInputError(
            f"--optimizers.{clipped[0]}.optimizer.max-norm: gradient clipping would edit the gradients "
            f"{optimizer} differentiates again; leave max_norm unset"
        )


def without_numpy_scalars(value: Any) -> Any:
    """``value`` with numpy scalars replaced by Python numbers, recursively.

    nerfstudio's exponential-decay scheduler computes learning rates with numpy, so they land in
    the optimizer's and scheduler's state as numpy.float64, which torch.load(weights_only=True) —
    the default since torch 2.6 — refuses to unpickle.
    """
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        return {key: without_numpy_scalars(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(without_numpy_scalars(item) for item in value)
    return value


class CurvatureTrainer(Trainer):
    config: CurvatureTrainerConfig

    PSNR_WINDOW = 50
    """Iterations averaged into the train PSNR of convergence.png (one batch's PSNR is noisy)."""

    def __init__(self, config: TrainerConfig, local_rank: int = 0, world_size: int = 1) -> None:
        try:
            check_supported(config, world_size)
        except UserInputError as error:
            raise SystemExit(f"error: {error}") from None
        # ns-train is nerfstudio's entry point, so the trainer is the first project code to run.
        configure_entry_point()
        for entry in config.optimizers.values():
            scheduler = entry.get("scheduler")
            if isinstance(scheduler, DecayToFractionSchedulerConfig) and scheduler.max_steps is None:
                scheduler.max_steps = config.max_num_iterations
        super().__init__(config, local_rank, world_size)
        self.history: list[dict[str, float]] = []
        # Losses stay on the device until a checkpoint writes them: float() every step would
        # synchronise a GPU on every iteration.
        self._pending_losses: list[torch.Tensor] = []
        self._train_seconds = 0.0

    def setup(self, test_mode="val") -> None:
        # Bad data (a missing LLFF path, a wrong poses file) surfaces here: one line, no traceback.
        try:
            super().setup(test_mode=test_mode)
        except UserInputError as error:
            raise SystemExit(f"error: {error}") from None

    def _curvature_optimizers(self) -> list[CurvatureOptimizer]:
        return [opt for opt in self.optimizers.optimizers.values() if isinstance(opt, CurvatureOptimizer)]

    def train_iteration(self, step: int) -> TRAIN_INTERATION_OUTPUT:
        start = time.perf_counter()
        loss, loss_dict, metrics_dict = self._train_iteration(step)
        self._train_seconds += time.perf_counter() - start
        # The final pass's colour MSE (with a PDF pass, the summed loss also holds the coarse one).
        self._pending_losses.append(loss_dict["rgb_loss"].detach() if "rgb_loss" in loss_dict else loss.detach())
        self.history.append({"iteration": step + 1, "wall_seconds": self._train_seconds})
        return loss, loss_dict, metrics_dict

    @profiler.time_function
    def _train_iteration(self, step: int) -> TRAIN_INTERATION_OUTPUT:
        curvature = self._curvature_optimizers()
        if not curvature and (self.mixed_precision or self.use_grad_scaler or self._accumulates()):
            return super().train_iteration(step)

        self.optimizers.zero_grad_all()
        _, loss_dict, metrics_dict = self.pipeline.get_train_loss_dict(step=step)
        loss = functools.reduce(torch.add, loss_dict.values())
        if not torch.isfinite(loss):
            raise SystemExit(
                f"error: the loss became {loss.item()} at step {step}; training stopped and the last checkpoint in "
                f"{self.checkpoint_dir} is kept (try a smaller --optimizers.fields.optimizer.lr)"
            )
        create_graph = any(opt.should_create_graph() for opt in curvature)
        params = [p for group in self.optimizers.parameters.values() for p in group if p.requires_grad]
        grads = torch.autograd.grad(loss, params, create_graph=create_graph, allow_unused=True)
        for param, grad in zip(params, grads):
            param.grad = grad
        self.optimizers.optimizer_step_all()

        if self.config.log_gradients:
            total = 0.0
            for tag, value in self.pipeline.model.named_parameters():
                if value.grad is not None:
                    metrics_dict[f"Gradients/{tag}"] = value.grad.norm()
                    total += metrics_dict[f"Gradients/{tag}"]
            metrics_dict["Gradients/Total"] = total
        self.optimizers.scheduler_step_all(step)
        # Logged, not differentiated again: the writers call float() on them.
        return loss.detach(), {k: v.detach() for k, v in loss_dict.items()}, metrics_dict

    def _accumulates(self) -> bool:
        return any(n != 1 for n in self.config.gradient_accumulation_steps.values())

    def save_checkpoint(self, step: int) -> None:
        """nerfstudio's checkpoint, written to a temporary file and renamed, so a crash never leaves half a file."""
        self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        path: Path = self.checkpoint_dir / f"step-{step:09d}.ckpt"
        state: dict[str, object] = {
            "step": int(step),
            "pipeline": getattr(self.pipeline, "module", self.pipeline).state_dict(),
            "optimizers": {k: v.state_dict() for k, v in self.optimizers.optimizers.items()},
            "schedulers": {k: v.state_dict() for k, v in self.optimizers.schedulers.items()},
            "scalers": self.grad_scaler.state_dict(),
        }
        # Outside nerfstudio_models/: nerfstudio picks the latest step by parsing every name there.
        partial = self.base_dir / f".{path.name}.partial"
        torch.save(without_numpy_scalars(state), partial)
        os.replace(partial, path)
        if self.config.save_only_latest_checkpoint:
            for old in self.checkpoint_dir.glob("*.ckpt"):
                if old != path:
                    old.unlink()
        self.write_convergence()

    def write_convergence(self) -> None:
        """convergence.csv and convergence.png in the run directory: train PSNR (windowed) vs iteration and time."""
        if not self.history:
            return
        if self._pending_losses:
            values = torch.stack(self._pending_losses).tolist()
            for row, value in zip(self.history[len(self.history) - len(values) :], values):
                row["loss"] = value
            self._pending_losses = []
        rows, window = [], []
        for row in self.history:
            window = (window + [row["loss"]])[-self.PSNR_WINDOW :]
            mean = sum(window) / len(window)
            psnr = -10.0 * math.log10(mean) if mean > 0 else float("inf")
            rows.append({**row, "train_psnr": psnr})
        self.base_dir.mkdir(parents=True, exist_ok=True)
        with open(self.base_dir / "convergence.csv", "w", newline="") as handle:
            writer_ = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer_.writeheader()
            writer_.writerows(rows)
        from nf_precond_plugin.training.plots import convergence_plot

        title = f"{self.config.method_name}: train PSNR, mean loss of the last {self.PSNR_WINDOW} batches"
        convergence_plot(
            {self.config.method_name: rows}, "train_psnr", self.base_dir / "convergence.png", title, "iteration"
        )
