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

The user's mistakes are one line (``ns-train: error: …``) before anything is printed or written:
ns-train calls ``print_to_terminal`` first, then ``save_config``, and both run the launch checks
(scene, optimizer settings, devices). Ctrl-C during training is one line too, naming the last
checkpoint kept and the ns-train command that resumes from it (``--load-dir``).
"""

from __future__ import annotations

import functools
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path

import torch
from nerfstudio.engine.trainer import TRAIN_INTERATION_OUTPUT, Trainer, TrainerConfig
from nerfstudio.utils import profiler
from nerfstudio.utils.decorators import check_main_thread

from nf_precond_plugin.checkpoints import keep_only, save_atomically
from nf_precond_plugin.commands import printed_command
from nf_precond_plugin.errors import RunInterrupted, TrainingDiverged, reported_as_one_line
from nf_precond_plugin.nerf.convergence import ConvergenceLog
from nf_precond_plugin.nerf.optimizers import DecayToFractionSchedulerConfig, resolve_esgd_rules
from nf_precond_plugin.nerf.trainer_policy import (
    accumulation_steps,
    check_data,
    check_launchable,
    check_optimizers,
    check_supported,
)
from nf_precond_plugin.optim.base import CurvatureOptimizer
from nf_precond_plugin.runtime import configure_entry_point
from nf_precond_plugin.training.step import NonFiniteLossError, training_step

PROG = "ns-train"

_CALLER_REPORTS: ContextVar[bool] = ContextVar("nf_precond_caller_reports", default=False)


@contextmanager
def errors_raised() -> Iterator[None]:
    """Inside this block the trainer's hooks raise the user's mistakes (``UserInputError``, …)
    instead of reporting them as ``ns-train``'s one line: for a caller that is its own command
    (``nf-precond advise nerf``) and reports them under its own name."""
    token = _CALLER_REPORTS.set(True)
    try:
        yield
    finally:
        _CALLER_REPORTS.reset(token)


@contextmanager
def _reported() -> Iterator[None]:
    """ns-train's one-line report, unless a caller reports (``errors_raised``)."""
    if _CALLER_REPORTS.get():
        yield
    else:
        with reported_as_one_line(PROG):
            yield


RESUME_DROPS = ("--load-dir", "--load-checkpoint", "--timestamp")
"""Options of the interrupted command the resume command leaves out: it loads the kept checkpoint
and writes a new run directory."""


def _without_options(args: Sequence[str], names: Sequence[str]) -> list[str]:
    """``args`` without ``--name value`` and ``--name=value`` for each of ``names``."""
    kept: list[str] = []
    skip = False
    for arg in args:
        if skip:
            skip = False
        elif arg in names:
            skip = True
        elif not any(arg.startswith(f"{name}=") for name in names):
            kept.append(arg)
    return kept


def resume_command(config: TrainerConfig, checkpoint_dir: Path, argv: Sequence[str] | None = None) -> str:
    """The ns-train command that continues ``config``'s run from the newest checkpoint in ``checkpoint_dir``.

    Run from ns-train, it is the user's own command with ``--load-dir`` (every option they gave,
    so the field has the checkpoint's shape); otherwise the method and its ``--data``."""
    argv = list(sys.argv if argv is None else argv)
    if len(argv) > 1 and Path(argv[0]).name == PROG and argv[1] == config.method_name:
        rest = _without_options(argv[2:], RESUME_DROPS)
    else:
        data = config.data or config.pipeline.datamanager.data
        rest = [] if data is None else ["--data", str(data)]
    return printed_command(PROG, config.method_name, "--load-dir", checkpoint_dir, *rest)


def latest_checkpoint(checkpoint_dir: Path) -> Path | None:
    """The newest ``step-*.ckpt`` in ``checkpoint_dir`` (by step), or None."""
    found = sorted(checkpoint_dir.glob("step-*.ckpt"), key=lambda path: int(path.stem.split("-")[-1]))
    return found[-1] if found else None


@dataclass
class CurvatureTrainerConfig(TrainerConfig):
    _target: type = field(default_factory=lambda: CurvatureTrainer)

    def check_before_launch(self) -> None:
        """Refuse, in one line, what would fail later: the scene, an optimizer setting, the devices.
        Idempotent: ns-train runs it from print_to_terminal and again from save_config."""
        resolve_esgd_rules(self.optimizers)  # the saved config shows the rule's values
        with _reported():
            check_data(self)
            check_optimizers(self)
            check_launchable(self)
            check_supported(self, world_size=1)

    def print_to_terminal(self) -> None:
        # ns-train's first call on the config: refuse before its 160 lines of config are printed.
        self.check_before_launch()
        super().print_to_terminal()

    def save_config(self) -> None:
        # ns-train saves the config just before it launches the processes: refuse here too (for
        # callers that skip print_to_terminal), once, rather than in every spawned process.
        self.check_before_launch()
        super().save_config()


class CurvatureTrainer(Trainer):
    config: CurvatureTrainerConfig

    def __init__(self, config: TrainerConfig, local_rank: int = 0, world_size: int = 1) -> None:
        resolve_esgd_rules(config.optimizers)  # before nerfstudio's schedulers read the lr
        with _reported():
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
        with _reported():
            try:
                super().setup(test_mode=test_mode)
            except KeyboardInterrupt as stop:
                raise RunInterrupted(self._interrupted(stop, before_training=True)) from None

    def train(self) -> None:
        # nerfstudio's trainer writes dataparser_transforms.json on every rank with a non-exist_ok
        # mkdir; ns-train made the directory before spawning, other launchers race on it.
        self.base_dir.mkdir(parents=True, exist_ok=True)
        with _reported():
            try:
                super().train()
                if self._save_deferred and self._last_update_step is not None:
                    # The run ended inside an accumulation cycle: save the state of its last update.
                    # (Resuming from it, the lr schedule is ahead by the unfinished micro-batches.)
                    self._save_deferred = False
                    self._write_checkpoint(self._last_update_step)
            except KeyboardInterrupt as stop:
                self.shutdown()  # the viewer's server, if any, would keep the process alive
                raise RunInterrupted(self._interrupted(stop)) from None

    def _interrupted(self, stop: KeyboardInterrupt, before_training: bool = False) -> str:
        """What Ctrl-C leaves: the newest checkpoint and the command that resumes from it, or that
        nothing was kept and the run directory can go."""
        if isinstance(stop, RunInterrupted):
            return str(stop)
        where = "before training started" if before_training else f"at step {getattr(self, 'step', self._start_step)}"
        latest = latest_checkpoint(self.checkpoint_dir) if self.checkpoint_dir.is_dir() else None
        if latest is not None:
            return f"{where}; kept {latest}; resume with: {resume_command(self.config, self.checkpoint_dir)}"
        leftover = (
            f"the run directory {self.base_dir} can be deleted" if self.base_dir.exists() else "nothing was written"
        )
        loaded_from = self.config.load_dir
        if loaded_from is not None and latest_checkpoint(Path(loaded_from)) is not None:
            # A resumed run stopped before its own first checkpoint: the one it started from is still there.
            again = resume_command(self.config, Path(loaded_from))
            return f"{where}, before this run's first checkpoint: nothing new ({leftover}); resume with: {again}"
        if not before_training:
            where += ", before the first checkpoint"
        return f"{where}: nothing was kept; {leftover}"

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
