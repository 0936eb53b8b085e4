"""A nerfstudio Trainer whose backward builds a graph on the steps a curvature optimizer asks for.

Each iteration is the project's training step (``training.step.training_step``) over every
optimizer of the pipeline: on H·v steps ``loss.backward(create_graph=True)`` leaves gradients that
are still functions of the parameters, and the optimizer's ``step()`` differentiates g·v again to
get Hv, then frees the graph. On every other step (and for Adam) the same backward runs without a
graph, which costs what nerfstudio's own ``loss.backward()`` costs.

Several devices (``--machine.num-devices N``): the pipeline is not wrapped in DDP; each device
traces its own rays (nerfstudio seeds each rank apart), and before every update the gradients are
averaged over the devices (and, on H·v steps, the curvature optimizers' H·v for the probe they
share). Only rank 0 writes checkpoints. Gradient accumulation (``--gradient-accumulation-steps``):
nerfstudio's step counts micro-batches; each one's loss is divided by their number K, so an
update sees their mean as one K-times larger batch would, and its H·v is folded in as it comes.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from nerfstudio.engine.trainer import TRAIN_INTERATION_OUTPUT, Trainer, TrainerConfig
from nerfstudio.utils import profiler
from nerfstudio.utils.decorators import check_main_thread

from nf_precond_plugin.checkpoints import keep_only, save_atomically
from nf_precond_plugin.errors import TrainingDiverged, reported_as_one_line
from nf_precond_plugin.nerf.convergence import ConvergenceLog
from nf_precond_plugin.nerf.optimizers import DecayToFractionSchedulerConfig
from nf_precond_plugin.nerf.trainer_policy import accumulation_steps, check_launchable, check_supported
from nf_precond_plugin.optim.base import CurvatureOptimizer
from nf_precond_plugin.runtime import configure_entry_point
from nf_precond_plugin.training.step import NonFiniteLossError, training_step

PROG = "ns-train"


@dataclass
class CurvatureTrainerConfig(TrainerConfig):
    _target: type = field(default_factory=lambda: CurvatureTrainer)

    def save_config(self) -> None:
        # ns-train saves the config just before it launches the processes: refuse here, once,
        # rather than in every spawned process (or in nerfstudio's own assert).
        with reported_as_one_line(PROG):
            check_launchable(self)
            check_supported(self, world_size=1)
        super().save_config()


class CurvatureTrainer(Trainer):
    config: CurvatureTrainerConfig

    def __init__(self, config: TrainerConfig, local_rank: int = 0, world_size: int = 1) -> None:
        with reported_as_one_line(PROG):
            check_supported(config, world_size)
        # ns-train is nerfstudio's entry point, so the trainer is the first project code to run.
        configure_entry_point()
        for entry in config.optimizers.values():
            scheduler = entry.get("scheduler")
            if isinstance(scheduler, DecayToFractionSchedulerConfig) and scheduler.max_steps is None:
                scheduler.max_steps = config.max_num_iterations
        if config.machine.device_type == "cuda" and world_size > 1:
            # nccl collectives run on the current device; nerfstudio's launcher only moves the model
            torch.cuda.set_device(local_rank)
        super().__init__(config, local_rank, world_size)
        self.convergence = ConvergenceLog()
        self._train_seconds = 0.0
        self._micro_batches = accumulation_steps(config)  # None: groups differ (nerfstudio's loop, Adam only)
        self._last_update_step: int | None = None
        self._save_deferred = False

    def setup(self, test_mode="val") -> None:
        # Bad data (a missing LLFF path, a wrong poses file) surfaces here: one line, no traceback.
        with reported_as_one_line(PROG):
            super().setup(test_mode=test_mode)

    def train(self) -> None:
        # nerfstudio's trainer writes dataparser_transforms.json on every rank with a non-exist_ok
        # mkdir; ns-train made the directory before spawning, other launchers race on it.
        self.base_dir.mkdir(parents=True, exist_ok=True)
        with reported_as_one_line(PROG):
            super().train()
            if self._save_deferred and self._last_update_step is not None:
                # The run ended inside an accumulation cycle: save the state of its last update.
                # (Resuming from it, the lr schedule is ahead by the unfinished micro-batches.)
                self._save_deferred = False
                self._write_checkpoint(self._last_update_step)

    def _curvature_optimizers(self) -> list[CurvatureOptimizer]:
        return [opt for opt in self.optimizers.optimizers.values() if isinstance(opt, CurvatureOptimizer)]

    def train_iteration(self, step: int) -> TRAIN_INTERATION_OUTPUT:
        start = time.perf_counter()
        loss, loss_dict, metrics_dict = self._train_iteration(step)
        self._train_seconds += time.perf_counter() - start
        # The final pass's colour MSE (with a PDF pass, the summed loss also holds the coarse one).
        self.convergence.record(step + 1, self._train_seconds, loss_dict.get("rgb_loss", loss))
        return loss, loss_dict, metrics_dict

    @profiler.time_function
    def _train_iteration(self, step: int) -> TRAIN_INTERATION_OUTPUT:
        micro_batches = self._micro_batches
        if self.world_size == 1 and not self._curvature_optimizers():
            if self.mixed_precision or self.use_grad_scaler or micro_batches is None:
                return super().train_iteration(step)  # nerfstudio's own loop handles what Adam may use

        def compute_loss() -> tuple[torch.Tensor, tuple[dict, dict]]:
            _, loss_dict, metrics_dict = self.pipeline.get_train_loss_dict(step=step)
            return functools.reduce(torch.add, loss_dict.values()), (loss_dict, metrics_dict)

        params = [p for group in self.optimizers.parameters.values() for p in group if p.requires_grad]
        try:
            result = training_step(
                list(self.optimizers.optimizers.values()),
                compute_loss,
                inputs=params,
                apply_step=self.optimizers.optimizer_step_all,  # nerfstudio's, with its max_norm clipping
                micro_batch=(step % micro_batches, micro_batches),
            )
        except NonFiniteLossError as error:
            raise TrainingDiverged(
                f"{error} at step {step}; the last checkpoint in {self.checkpoint_dir} is kept "
                "(try a smaller --optimizers.fields.optimizer.lr)"
            ) from None
        loss_dict, metrics_dict = result.aux

        if self.config.log_gradients:
            total = 0.0
            for tag, value in self.pipeline.model.named_parameters():
                if value.grad is not None:
                    metrics_dict[f"Gradients/{tag}"] = value.grad.norm()
                    total += metrics_dict[f"Gradients/{tag}"]
            metrics_dict["Gradients/Total"] = total
        self.optimizers.scheduler_step_all(step)
        if result.stepped:
            self._last_update_step = step
            if self._save_deferred:
                self._save_deferred = False
                self._write_checkpoint(step)
        # Logged, not differentiated again: the writers call float() on them.
        return result.loss, {k: v.detach() for k, v in loss_dict.items()}, metrics_dict

    @check_main_thread
    def save_checkpoint(self, step: int) -> None:
        """nerfstudio's checkpoint, written atomically and loadable with ``weights_only``.

        Inside an accumulation cycle the checkpoint waits for the cycle's update: resumed at
        ``step + 1``, a run must start a fresh cycle, not finish a half-summed one.
        """
        micro_batches = self._micro_batches or 1
        if micro_batches > 1 and step % micro_batches != micro_batches - 1:
            self._save_deferred = True
            return
        self._write_checkpoint(step)

    @check_main_thread
    def _write_checkpoint(self, step: int) -> None:
        self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        path: Path = self.checkpoint_dir / f"step-{step:09d}.ckpt"
        state = {
            "step": int(step),
            "pipeline": getattr(self.pipeline, "module", self.pipeline).state_dict(),
            "optimizers": {k: v.state_dict() for k, v in self.optimizers.optimizers.items()},
            "schedulers": {k: v.state_dict() for k, v in self.optimizers.schedulers.items()},
            "scalers": self.grad_scaler.state_dict(),
        }
        save_atomically(state, path, scratch_dir=self.base_dir)
        if self.config.save_only_latest_checkpoint:
            keep_only(path)
        self.convergence.write(self.base_dir, self.config.method_name)
