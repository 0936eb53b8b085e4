"""What the CurvatureTrainer refuses in nerfstudio's trainer settings, each with the option named.

A Hessian-vector product differentiates the gradient again, so anything that edits the gradient
between backward and ``step()`` (clipping, loss scaling) would give a wrong H·v. Several devices
and gradient accumulation are supported: the trainer averages gradients over devices itself and
folds each micro-batch's H·v into the step's sum for one shared probe; accumulation then needs
one number of micro-batches for every parameter group, since one step covers them all.

Before a run starts (``CurvatureTrainerConfig.check_before_launch``, ahead of anything ns-train
prints or writes) the scene and every parameter group's optimizer are checked as well: a missing
``--data`` folder, or an optimizer setting its constructor refuses, is one line naming the option.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import torch
from nerfstudio.engine.trainer import TrainerConfig

from nf_precond_plugin.data.demo_scene import demo_scene_dir
from nf_precond_plugin.errors import UserInputError
from nf_precond_plugin.nerf.llff import LLFFDataParserConfig, check_llff_scene
from nf_precond_plugin.optim.base import CurvatureOptimizer

NOT_SETTINGS = ("_target", "max_norm", "rule")
"""Optimizer config fields that are not constructor arguments (max_norm: nerfstudio's clipping)."""


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


def check_data(config: TrainerConfig) -> None:
    """Refuse a ``--data`` path that does not exist (any dataparser) or is not an LLFF scene (ours).

    The LLFF dataparser's default, the embedded demo scene, is generated on first use: not refused."""
    datamanager = config.pipeline.datamanager
    parser = datamanager.dataparser
    given = config.data or getattr(datamanager, "data", None)
    path = Path(given if given is not None else getattr(parser, "data", Path())).expanduser()
    if isinstance(parser, LLFFDataParserConfig):
        if given is None and path.absolute() == demo_scene_dir().absolute() and not path.exists():
            return
        check_llff_scene(path, parser.downscale_factor)
    elif not path.exists():
        raise UserInputError(f"--data {path}: no such file or directory")


def _builds(optimizer) -> Exception | None:
    """The ValueError/TypeError its constructor raises on one dummy parameter, or None.

    The RNG is left as it was: a curvature optimizer may draw its probe seed from it."""
    with torch.random.fork_rng(devices=[]):
        try:
            optimizer.setup([torch.nn.Parameter(torch.zeros(1))])
        except (ValueError, TypeError) as error:
            return error
    return None


def _shown(value: object) -> str:
    """A value as it is typed on the command line (a tuple as its items)."""
    return " ".join(map(str, value)) if isinstance(value, (tuple, list)) else str(value)


def _culprit(optimizer, error: Exception) -> str | None:
    """The field whose value the constructor refused: the one set away from its default whose
    reset alone makes the optimizer build, else the first field the message names."""
    defaults = type(optimizer)()
    settings = [item.name for item in dataclasses.fields(optimizer) if item.name not in NOT_SETTINGS]
    for name in settings:
        if getattr(optimizer, name) == getattr(defaults, name):
            continue
        if _builds(dataclasses.replace(optimizer, **{name: getattr(defaults, name)})) is None:
            return name
    words = set(str(error).replace("=", " ").replace(":", " ").split())
    return next((name for name in settings if name in words), None)


def check_optimizers(config: TrainerConfig) -> None:
    """Build each parameter group's optimizer once on a dummy parameter: a setting its constructor
    refuses (or an lr that is not finite and > 0) is one line naming the option, before nerfstudio
    builds anything."""
    for group, entry in config.optimizers.items():
        optimizer = entry["optimizer"]
        option = f"--optimizers.{group}.optimizer"
        error = _builds(optimizer)
        if error is not None:
            name = _culprit(optimizer, error)
            target = getattr(optimizer._target, "__name__", str(optimizer._target))
            if name is None:
                raise UserInputError(f"{option}: {target} refuses its settings ({error})")
            flag = f"{option}.{name.replace('_', '-')} {_shown(getattr(optimizer, name))}"
            raise UserInputError(f"{flag}: {target} refuses it ({error})")
        lr = getattr(optimizer, "lr", None)
        if isinstance(lr, (int, float)) and not 0 < lr < math.inf:
            raise UserInputError(f"{option}.lr {lr}: expected a finite learning rate > 0")
