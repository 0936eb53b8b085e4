"""``nf-precond advise``: measure the user's field on the user's data, then recommend an optimizer and lr.

Three measurements, in seconds on two CPU cores:

1. **H·v density.** After a few Adam steps (at init, dead ReLU units have not formed yet), the
   fraction of exactly-zero entries of H·v over all parameters, for a few Rademacher probes
   (``curvature.zero_fraction``). Dense (≈ 0) for smooth activations, sparse for ReLU(+PE).
2. **Curvature spread.** log₁₀ of the ratio of the 90th to the 10th percentile of the
   equilibration estimate √(mean h²) over the parameter entries: how unequal the coordinates'
   curvatures are, i.e. how much a diagonal preconditioner can change.
3. **A short lr probe.** Each candidate (the clipped ESGD and Adam, each at three lrs) trains the
   same number of steps from the same initial weights on the same minibatches; the score is the
   mean loss of the last few steps.

Recommendation: dense H·v → ``esgd`` at its best probed lr; sparse H·v (at least
``SPARSE_FIELD`` of the entries exactly zero) → ``adam`` at its best probed lr, since a
curvature estimate that is zero on most coordinates has nothing to precondition with (the paper's
§4.3; the clipped ESGD protects such tensors, but does not beat Adam there). The numbers behind
the choice are printed (or returned with ``--json``).
"""

from __future__ import annotations

import copy
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import torch
import tyro

from nf_precond_plugin.curvature import hvp, rademacher_like, zero_fraction
from nf_precond_plugin.errors import UserInputError
from nf_precond_plugin.optim.factory import build_optimizer
from nf_precond_plugin.tasks.image import ImageConfig
from nf_precond_plugin.tasks.occupancy import OccupancyConfig
from nf_precond_plugin.training.step import NonFiniteLossError, training_step

SPARSE_FIELD = 0.1
"""A field whose H·v has at least this fraction of exact zeros counts as sparse (ReLU-PE: 0.3–0.7)."""
PROBE_LRS: dict[str, tuple[float, ...]] = {"esgd": (0.5, 1.0, 2.0), "adam": (3e-4, 1e-3, 3e-3)}
PROBE_TIE = 0.05
"""Probe losses within this relative margin of the best count as tied."""
WARM_STEPS = 20
"""Adam steps (lr 1e-3) before the H·v density is measured."""
PROBES = 3


@dataclass
class AdviseOptions:
    probe_steps: int = 60
    """Steps of each lr-probe run."""
    probe_batch: int | None = None
    """Minibatch of the probe (default: the task's --batch-size, capped at 8192)."""
    json: bool = False
    """Print one JSON object on stdout instead of a table."""


@dataclass
class AdviseImage(ImageConfig, AdviseOptions):
    """Advise for fitting an image (every option of standalone/image.py is accepted)."""


@dataclass
class AdviseOccupancy(OccupancyConfig, AdviseOptions):
    """Advise for fitting a mesh's occupancy (every option of standalone/occupancy.py is accepted)."""

    points_per_epoch: int = 50_000
    """Points drawn for the probe (fewer than training's 1M: the probe is short)."""
    heldout_points: int = 1_000
    """Held-out points (the probe scores the training loss; a few suffice)."""


@dataclass
class AdviseNerf(AdviseOptions):
    """Advise for a NeRF scene (LLFF or any nerfstudio dataparser's format) at the plugin's CPU scale."""

    data: Path | None = None
    """Scene directory; default: the embedded demo scene."""
    device: str = "cpu"
    """Torch device of the probe."""
    probe_steps: int = 30
    """Iterations of each probe run."""


@dataclass
class AdviseCommand:
    """Measure H·v density, curvature spread and a short lr probe; recommend an optimizer and lr."""

    task: tyro.conf.OmitArgPrefixes[  # type: ignore[valid-type]
        Annotated[AdviseImage, tyro.conf.subcommand("image", prefix_name=False)]
        | Annotated[AdviseOccupancy, tyro.conf.subcommand("occupancy", prefix_name=False)]
        | Annotated[AdviseNerf, tyro.conf.subcommand("nerf", prefix_name=False)]
    ]


ADVISE_TASKS = ("image", "occupancy", "nerf")


def curvature_measurements(
    params: list[torch.Tensor], loss_fn: Callable[[], torch.Tensor], probes: int = PROBES
) -> dict[str, float]:
    """H·v zero fraction (mean over probes) and the log₁₀ p90/p10 spread of √(mean h²).

    Parameters the loss does not use (a NeRF's unused heads, say) are left out of both.
    """
    grads = torch.autograd.grad(loss_fn(), params, create_graph=True, allow_unused=True)
    used = [p for p, g in zip(params, grads) if g is not None]
    del grads
    squares = [torch.zeros_like(p) for p in used]
    zeros, total = 0.0, sum(p.numel() for p in used)
    for _ in range(probes):
        grads = torch.autograd.grad(loss_fn(), used, create_graph=True)
        products = [h.detach() for h in hvp(grads, used, rademacher_like(used))]
        zeros += sum(float(zero_fraction(h)) * h.numel() for h in products) / total
        for square, h in zip(squares, products):
            square.add_(h.square(), alpha=1.0 / probes)
    scale = torch.cat([s.flatten() for s in squares]).sqrt()
    positive = scale[scale > 0]
    if positive.numel() < 2:
        spread = math.inf
    else:
        sample = positive[:: max(1, positive.numel() // 100_000)].double()
        low, high = torch.quantile(sample, torch.tensor([0.1, 0.9], dtype=torch.float64))
        spread = float(torch.log10(high / low))
    return {"hvp_zero_fraction": zeros / probes, "curvature_spread_log10": spread}


def lr_probe(
    build_model: Callable[[], torch.nn.Module],
    batches: list[tuple[torch.Tensor, torch.Tensor]],
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    seed: int,
) -> dict[str, dict[str, float | None]]:
    """Mean loss of the last quarter of steps for each (optimizer, lr); None where it diverged."""
    torch.manual_seed(seed)
    initial = copy.deepcopy(build_model().state_dict())
    scores: dict[str, dict[str, float | None]] = {}
    for name, rates in PROBE_LRS.items():
        scores[name] = {}
        for lr in rates:
            model = build_model()
            model.load_state_dict(initial)
            optimizer = build_optimizer(name, model, lr)
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


def recommend(measured: dict[str, float], probe: dict[str, dict[str, float | None]]) -> dict[str, Any]:
    sparse = measured["hvp_zero_fraction"] >= SPARSE_FIELD
    name = "adam" if sparse else "esgd"
    finite = {lr: v for lr, v in probe[name].items() if v is not None}
    if not finite:
        raise UserInputError(f"every probed lr of {name} diverged on this field; check the data and the model options")
    # A short probe favours aggressive lrs: of those within PROBE_TIE of the best, take the smallest.
    best = min(finite.values())
    lr = min((float(lr) for lr, value in finite.items() if value <= best * (1 + PROBE_TIE)))
    reason = (
        f"{measured['hvp_zero_fraction']:.0%} of the H·v entries are exactly zero (sparse curvature): "
        "a diagonal curvature estimate has nothing to work with on most coordinates, so Adam"
        if sparse
        else f"H·v is dense ({measured['hvp_zero_fraction']:.1%} zeros) and the curvature spans "
        f"{measured['curvature_spread_log10']:.1f} decades across coordinates: equilibration pays off, so ESGD"
    )
    return {"recommended": name, "lr": float(lr), "reason": reason}


def _batches(inputs: torch.Tensor, targets: torch.Tensor, batch: int, steps: int, seed: int):
    generator = torch.Generator().manual_seed(seed)
    order = torch.randint(0, inputs.shape[0], (steps, batch), generator=generator)
    return [(inputs[index], targets[index]) for index in order]


def advise_field_task(config: AdviseImage | AdviseOccupancy) -> dict[str, Any]:
    from nf_precond_plugin.tasks.image import ImageTask
    from nf_precond_plugin.tasks.occupancy import OccupancyTask

    if config.probe_steps < 4:
        raise UserInputError(f"--probe-steps {config.probe_steps}: expected at least 4")
    task = ImageTask(config) if isinstance(config, AdviseImage) else OccupancyTask(config)
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
    probe = lr_probe(task.build_model, batches[WARM_STEPS:], task.loss, config.seed)
    return {"task": task.name, "data": task.describe(), "activation": config.activation, **measured, "probe": probe}


def advise_nerf(config: AdviseNerf) -> dict[str, Any]:
    """The same measurements through the plugin's trainer (needs the nerfstudio extra)."""
    try:
        from nf_precond_plugin.nerf import methods
        from nf_precond_plugin.nerf.demo_scene import ensure_demo_scene
    except ImportError as error:
        raise UserInputError(f"advise nerf needs nerfstudio: pip install -e '.[nerfstudio]' ({error})") from None
    data = ensure_demo_scene() if config.data is None else config.data
    if not Path(data).exists():
        raise UserInputError(f"--data {data}: no such scene directory")

    import shutil
    import tempfile

    from nerfstudio.utils import writer

    scratch = Path(tempfile.mkdtemp(prefix="nf-precond-advise-"))
    writers = list(writer.EVENT_WRITERS)  # nerfstudio's writers are process-global: restore them after
    try:
        return _probe_nerf(config, Path(data), scratch, methods)
    finally:
        writer.EVENT_WRITERS[:] = writers
        shutil.rmtree(scratch, ignore_errors=True)


def _probe_trainer(config: AdviseNerf, spec, data: Path, scratch: Path, overrides: dict[str, float]):
    """A CurvatureTrainer of ``spec`` on ``data`` for the probe, from seed 0, writing into ``scratch``."""
    trainer_config = copy.deepcopy(spec.config)
    trainer_config.data = trainer_config.pipeline.datamanager.data = data
    trainer_config.machine.device_type = config.device
    trainer_config.vis = "tensorboard"
    trainer_config.output_dir = scratch  # the probe's checkpoints and logs are thrown away
    trainer_config.max_num_iterations = config.probe_steps
    trainer_config.steps_per_save = 10**9
    for key, value in overrides.items():
        setattr(trainer_config.optimizers["fields"]["optimizer"], key, value)
    trainer_config.set_timestamp()
    torch.manual_seed(0)
    trainer = trainer_config.setup(local_rank=0, world_size=1)
    trainer.setup()
    return trainer


def _probe_nerf(config: AdviseNerf, data: Path, scratch: Path, methods) -> dict[str, Any]:
    probe: dict[str, dict[str, float | None]] = {"esgd": {}, "adam": {}}
    measured: dict[str, float] = {}
    candidates = [
        ("esgd", methods.gaussian_esgd_cpu, "clip", (1e-3, 3e-3)),
        ("adam", methods.gaussian_adam_cpu, "lr", (1e-3, 2e-3)),
    ]
    for name, spec, knob, values in candidates:
        for value in values:
            trainer = _probe_trainer(config, spec, data, scratch, {knob: value})
            if not measured:
                model = trainer.pipeline.model
                params = [p for p in model.parameters() if p.requires_grad]

                def loss_fn(trainer=trainer) -> torch.Tensor:
                    _, losses, _ = trainer.pipeline.get_train_loss_dict(step=0)
                    return sum(losses.values())

                measured = curvature_measurements(params, loss_fn, probes=1)
            losses = []
            for step in range(config.probe_steps):
                _, loss_dict, _ = trainer.train_iteration(step)
                losses.append(float(loss_dict["rgb_loss"]))
            tail = losses[-max(1, len(losses) // 4) :]
            probe[name][f"{value:g}"] = sum(tail) / len(tail)
    advice = {"task": "nerf", "data": str(data), **measured, "probe": probe}
    if measured["hvp_zero_fraction"] < SPARSE_FIELD:
        best = min(probe["esgd"], key=probe["esgd"].get)
        advice.update(
            recommended="esgd",
            lr=methods.ESGDOptimizerConfig().lr,
            clip=float(best),
            command=f"ns-train gaussian-esgd-cpu --data {data} --optimizers.fields.optimizer.clip {float(best):g}",
            reason="dense H·v: ESGD (gaussian-esgd-cpu) with the probed clip",
        )
    else:
        best = min(probe["adam"], key=probe["adam"].get)
        advice.update(
            recommended="adam",
            lr=float(best),
            command=f"ns-train gaussian-adam-cpu --data {data} --optimizers.fields.optimizer.lr {float(best):g}",
            reason="sparse H·v: Adam (gaussian-adam-cpu)",
        )
    return advice


def run_advise(command: AdviseCommand) -> dict[str, Any]:
    started = time.perf_counter()
    config = command.task
    if isinstance(config, AdviseNerf):
        advice = advise_nerf(config)
    else:
        result = advise_field_task(config)
        advice = {**result, **recommend(result, result["probe"])}
    advice["seconds"] = time.perf_counter() - started
    return advice


def show_advice(advice: dict[str, Any], print_json: bool) -> None:
    if print_json:
        print(json.dumps(advice))
        return
    from rich.console import Console
    from rich.table import Table

    console = Console(stderr=True)
    table = Table(title=f"lr probe: mean loss of the last steps ({advice['task']})")
    table.add_column("optimizer")
    table.add_column("lr (or clip)", justify="right")
    table.add_column("loss", justify="right")
    for name, scores in advice["probe"].items():
        for lr, value in scores.items():
            table.add_row(name, lr, "diverged" if value is None else f"{value:.4g}")
    console.print(table)
    console.print(f"H·v zero fraction: {advice['hvp_zero_fraction']:.3f}")
    console.print(f"curvature spread (log10 p90/p10 of √E[(Hv)²]): {advice['curvature_spread_log10']:.2f}")
    suggestion = advice.get("command") or f"--optimizer {advice['recommended']} --lr {advice['lr']:g}"
    console.print(f"[bold]recommended: {suggestion}[/bold]")
    console.print(f"why: {advice['reason']}  ({advice['seconds']:.0f} s)")
