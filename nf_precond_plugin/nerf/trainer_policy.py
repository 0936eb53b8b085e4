"""What the curvature optimizers refuse in nerfstudio's trainer settings, each with the option named.

A Hessian-vector product differentiates the gradient again, so anything that edits or splits the
gradient between backward and ``step()`` (clipping, loss scaling, accumulation over several
backward passes, per-device gradients without a shared probe) would give a wrong H·v.
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
