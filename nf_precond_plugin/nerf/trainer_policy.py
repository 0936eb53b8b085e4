"""What the CurvatureTrainer refuses in nerfstudio's trainer settings, each with the option named.

A Hessian-vector product differentiates the gradient again, so anything that edits the gradient
between backward and ``step()`` (clipping, loss scaling) would give a wrong H·v. Several devices
and gradient accumulation are supported: the trainer averages gradients over devices itself and
folds each micro-batch's H·v into the step's sum for one shared probe; accumulation then needs
one number of micro-batches for every parameter group, since one step covers them all.
"""

from __future__ import annotations

from nerfstudio.engine.trainer import TrainerConfig

from nf_precond_plugin.errors import UserInputError
from nf_precond_plugin.optim.base import CurvatureOptimizer


def curvature_groups(config: TrainerConfig) -> list[str]:
    """Parameter groups whose optimizer takes Hessian-vector products."""
    return [
        name
        for name, entry in config.optimizers.items()
        if isinstance(entry["optimizer"]._target, type) and issubclass(entry["optimizer"]._target, CurvatureOptimizer)
    ]


def accumulation_steps(config: TrainerConfig) -> int | None:
    """The one number of micro-batches every parameter group accumulates, or None if they differ."""
    counts = {config.gradient_accumulation_steps.get(group, 1) for group in config.optimizers}
    return counts.pop() if len(counts) == 1 else None


def check_launchable(config: TrainerConfig) -> None:
    """Refuse device counts nerfstudio's launcher would only fail on later, in every process."""
    devices = config.machine.num_devices
    if devices * config.machine.num_machines <= 1:
        return
    if config.machine.device_type != "cuda":
        raise UserInputError(
            f"--machine.num-devices {devices}: nerfstudio's launcher runs several devices on CUDA only "
            f"(got --machine.device-type {config.machine.device_type}); train on one device"
        )
    import torch

    if devices > torch.cuda.device_count():
        raise UserInputError(
            f"--machine.num-devices {devices}: this machine has {torch.cuda.device_count()} CUDA device(s)"
        )


def check_supported(config: TrainerConfig, world_size: int) -> None:
    """Refuse the settings the trainer cannot honour, naming the option."""
    groups = curvature_groups(config)
    devices = max(world_size, config.machine.num_devices * config.machine.num_machines)
    if devices > 1 and (config.mixed_precision or config.use_grad_scaler):
        raise UserInputError(
            f"--mixed-precision/--use-grad-scaler: the CurvatureTrainer averages gradients over the {devices} "
            "devices itself, in float32; turn mixed precision and the grad scaler off"
        )
    if accumulation_steps(config) is None and (groups or devices > 1):
        raise UserInputError(
            f"--gradient-accumulation-steps {dict(config.gradient_accumulation_steps)}: every parameter group "
            f"({', '.join(config.optimizers)}) must accumulate the same number of micro-batches, since one step "
            "averages and preconditions them all"
        )
    if not groups:
        return
    optimizer = type(config.optimizers[groups[0]]["optimizer"]).__name__.replace("OptimizerConfig", "")
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
