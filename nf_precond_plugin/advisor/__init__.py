"""``nf-precond advise``: measure the user's field on the user's data, then recommend an optimizer and lr.

Three measurements, in seconds on two CPU cores:

1. **H·v density.** After a few Adam steps (at init, dead ReLU units have not formed yet), the
   fraction of exactly-zero entries of H·v over all parameters, for a few Rademacher probes
   (``curvature.zero_fraction``). Dense (≈ 0) for smooth activations, sparse for ReLU(+PE).
2. **Curvature spread.** log₁₀ of the ratio of the 90th to the 10th percentile of the
   equilibration estimate √(mean h²) over the parameter entries: how unequal the coordinates'
   curvatures are, i.e. how much a diagonal preconditioner can change.
3. **A short lr probe.** Each candidate (the optimizers ``recommend.field_choices`` may
   recommend, each at its probe lrs) trains the same number of steps from the same initial
   weights on the same minibatches; the score is the mean loss of the last few steps.

Recommendation: dense H·v → ``esgd``, sparse H·v (at least ``SPARSE_FIELD`` of the entries exactly
zero) → ``muon``, since a curvature estimate that is zero on most coordinates has nothing to
precondition with (the paper's §4.3); for an activation the fair league measured, its winner
there instead (``recommend.LEAGUE_WINNERS``), at its best probed lr. The advice names the schedule
(``--schedule``) with the lr. The numbers behind the choice are printed (or returned with ``--json``).

Here: the commands and the output. ``fields`` probes an image or occupancy field, ``nerf`` a NeRF
scene (nerfstudio, imported on use); ``recommend`` holds what both share, the curvature
measurements and the one recommendation (with its tie rule, ``PROBE_TIE``).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import tyro

from nf_precond_plugin.advisor.fields import PROBE_LRS, WARM_STEPS, advise_field_task, lr_probe
from nf_precond_plugin.advisor.recommend import PROBE_TIE, PROBES, curvature_measurements, field_choices, recommend
from nf_precond_plugin.curvature import SPARSE_FIELD
from nf_precond_plugin.tasks.image import ImageConfig
from nf_precond_plugin.tasks.occupancy import OccupancyConfig

__all__ = [
    "ADVISE_TASKS",
    "PROBES",
    "PROBE_LRS",
    "PROBE_TIE",
    "SPARSE_FIELD",
    "WARM_STEPS",
    "AdviseCommand",
    "AdviseImage",
    "AdviseNerf",
    "AdviseOccupancy",
    "AdviseOptions",
    "advise_field_task",
    "curvature_measurements",
    "lr_probe",
    "recommend",
    "run_advise",
    "show_advice",
]


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


def run_advise(command: AdviseCommand) -> dict[str, Any]:
    started = time.perf_counter()
    config = command.task
    if isinstance(config, AdviseNerf):
        from nf_precond_plugin.advisor.nerf import advise_nerf

        advice = advise_nerf(config)
    else:
        result = advise_field_task(config)
        choices = field_choices(config.num_layers, config.activation)
        advice = {**result, **recommend(result, result["probe"], choices=choices, activation=config.activation)}
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
    suggestion = advice.get("command") or (
        f"--optimizer {advice['recommended']} --lr {advice['lr']:g} --schedule {advice['schedule']}"
    )
    console.print(f"[bold]recommended: {suggestion}[/bold]")
    console.print(f"why: {advice['reason']}  ({advice['seconds']:.0f} s)")
