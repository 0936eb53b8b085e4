"""The image and occupancy probe: a few Adam steps, the curvature measurements, then a short lr probe.

Each candidate (the project's ESGD and Muon, each at its probe lrs) trains the same number of steps from
the same initial weights on the same minibatches; the score is the mean loss of the last quarter.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch

from nf_precond_plugin.advisor.recommend import curvature_measurements, field_choices
from nf_precond_plugin.errors import UserInputError
from nf_precond_plugin.optim.factory import optimizer_spec
from nf_precond_plugin.tasks.occupancy import OccupancyConfig
from nf_precond_plugin.training.runner import build_scheduled_optimizer
from nf_precond_plugin.training.schedules import ScheduleChoice
from nf_precond_plugin.training.step import NonFiniteLossError, training_step

if TYPE_CHECKING:
    from nf_precond_plugin.advisor import AdviseImage, AdviseOccupancy

PROBE_LRS: dict[str, tuple[float, ...]] = {
    "esgd": (0.5, 1.0, 2.0), "muon": (0.005, 0.02), "adam": (3e-4, 1e-3, 3e-3), "soap": (3e-4, 1e-3, 3e-3),
    "sf-adamw": (3e-4, 1e-3),
}  # fmt: skip
"""The lrs each candidate of ``recommend.field_choices`` is probed at (Muon's, SOAP's and
schedule-free AdamW's: around the fair league's best)."""
WARM_STEPS = 20
"""Adam steps (lr 1e-3) before the H·v density is measured."""


def averages_weights(name: str) -> bool:
    """Whether ``name``'s default schedule averages the weights (schedule-free)."""
    return ScheduleChoice(optimizer_spec(name).schedule).averages_weights


def lr_probe(
    build_model: Callable[[], torch.nn.Module],
    batches: list[tuple[torch.Tensor, torch.Tensor]],
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    seed: int,
    names: tuple[str, ...] | list[str] = tuple(PROBE_LRS),
) -> dict[str, dict[str, float | None]]:
    """Mean loss of the last quarter of steps for each (optimizer of ``names``, lr of its
    ``PROBE_LRS``); None where it diverged."""
    torch.manual_seed(seed)
    initial = copy.deepcopy(build_model().state_dict())
    scores: dict[str, dict[str, float | None]] = {}
    for name in names:
        rates = PROBE_LRS[name]
        scores[name] = {}
        for lr in rates:
            model = build_model()
            model.load_state_dict(initial)
            # as a run would build it under the optimizer's default schedule (schedule-free: wrapped)
            optimizer = build_scheduled_optimizer(name, model, lr, averages_weights(name), {})
            torch.manual_seed(seed)
            losses = []
            try:
                for x, y in batches:
                    result = training_step([optimizer], lambda x=x, y=y, model=model: (loss(model(x), y), None))
                    losses.append(float(result.loss))
            except NonFiniteLossError:
                scores[name][f"{lr:g}"] = None
                continue
            tail = losses[-max(1, len(losses) // 4) :]
            scores[name][f"{lr:g}"] = sum(tail) / len(tail)
    return scores


def _batches(inputs: torch.Tensor, targets: torch.Tensor, batch: int, steps: int, seed: int):
    generator = torch.Generator().manual_seed(seed)
    order = torch.randint(0, inputs.shape[0], (steps, batch), generator=generator)
    return [(inputs[index], targets[index]) for index in order]


def advise_field_task(config: AdviseImage | AdviseOccupancy) -> dict[str, Any]:
    """The measurements and the lr probe of an image or occupancy field (no recommendation yet)."""
    from nf_precond_plugin.tasks.image import ImageTask
    from nf_precond_plugin.tasks.occupancy import OccupancyTask

    if config.probe_steps < 4:
        raise UserInputError(f"--probe-steps {config.probe_steps}: expected at least 4")
    task = OccupancyTask(config) if isinstance(config, OccupancyConfig) else ImageTask(config)
    inputs, targets = task.epoch_data(0, torch.Generator().manual_seed(config.seed))
    batch = min(config.probe_batch or config.batch_size, 8192, inputs.shape[0])
    if batch < 1:
        raise UserInputError(f"--probe-batch {batch}: expected at least 1")
    batches = _batches(inputs, targets, batch, WARM_STEPS + config.probe_steps, config.seed)

    torch.manual_seed(config.seed)
    model = task.build_model()
    params = [p for p in model.parameters() if p.requires_grad]
    warm = torch.optim.Adam(params, lr=1e-3)
    for x, y in batches[:WARM_STEPS]:
        training_step([warm], lambda x=x, y=y: (task.loss(model(x), y), None), check_finite=False)
    x, y = batches[WARM_STEPS]
    measured = curvature_measurements(params, lambda: task.loss(model(x), y))
    # only what may be recommended
    candidates = list(dict.fromkeys(field_choices(config.num_layers, config.activation).values()))
    probe = lr_probe(task.build_model, batches[WARM_STEPS:], task.loss, config.seed, candidates)
    return {"task": task.name, "data": task.describe(), "activation": config.activation, **measured, "probe": probe}
