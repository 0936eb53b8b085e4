"""`nf-precond`: the paper's diagnostics as commands (tyro subcommands, like nerfstudio's CLIs).

nf-precond sparsity --activation relu-pe --json     # Fig. 4: HVP sparsity during training
nf-precond condition --json                         # Fig. 2: κ of H under D^E and D^J
nf-precond nerf-demo                                # ns-train → ns-eval → ns-render on the demo scene
nf-precond advise image --image FILE --activation relu-pe   # which optimizer and lr, measured
nf-precond advise occupancy --mesh FILE --json
nf-precond advise nerf --data SCENE
nf-precond image-demo                               # ESGD vs schedule-free AdamW, side by side
"""

from __future__ import annotations

import json
import sys
from typing import Annotated

import tyro
from rich.console import Console
from rich.table import Table

from nf_precond_plugin.advisor import ADVISE_TASKS, AdviseCommand, run_advise, show_advice
from nf_precond_plugin.diagnostics.condition import ConditionConfig, run_condition
from nf_precond_plugin.diagnostics.sparsity import SparsityConfig, run_sparsity
from nf_precond_plugin.errors import UserInputError, exit_code_of, reported_as_one_line
from nf_precond_plugin.image_demo import ImageDemoConfig, run_image_demo
from nf_precond_plugin.nerf.demo import NerfDemoConfig, run_nerf_demo
from nf_precond_plugin.runtime import configure_entry_point

Command = (
    Annotated[SparsityConfig, tyro.conf.subcommand("sparsity")]
    | Annotated[ConditionConfig, tyro.conf.subcommand("condition")]
    | Annotated[NerfDemoConfig, tyro.conf.subcommand("nerf-demo")]
    | Annotated[AdviseCommand, tyro.conf.subcommand("advise")]
    | Annotated[ImageDemoConfig, tyro.conf.subcommand("image-demo")]
)

_console = Console(stderr=True)


def _show_sparsity(result: dict) -> None:
    table = Table(title=f"HVP sparsity, {result['activation']} (τ = {result['tolerance']:g})")
    table.add_column("layer")
    table.add_column("fraction of zero Hv entries", justify="right")
    for layer, value in result["per_layer"].items():
        table.add_row(layer, f"{value:.4f}")
    table.add_row("[bold]overall", f"[bold]{result['sparsity']:.4f}")
    _console.print(table)


def _show_condition(result: dict) -> None:
    table = Table(title="Condition numbers (median over GD steps)")
    table.add_column("matrix")
    table.add_column("κ", justify="right")
    for key, label in (("kappa_H", "H"), ("kappa_E", "D_E^-1/2 H D_E^-1/2"), ("kappa_J", "D_J^-1/2 H D_J^-1/2")):
        table.add_row(label, f"{result[key]:.4g}")
    _console.print(table)
    _console.print(f"κ: {result['kappa_definition']}")
    _console.print(f"paper's ordering holds: {result['ordering_holds']}")


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else list(argv)
    if args[:1] == ["advise"] and (len(args) < 2 or args[1] not in (*ADVISE_TASKS, "--help", "-h")):
        return exit_code_of(_unknown_advise_task, args[1] if len(args) > 1 else "")
    config = tyro.cli(Command, args=args, prog="nf-precond", description=__doc__)
    configure_entry_point()
    return exit_code_of(_guarded, config)


def _unknown_advise_task(task: str) -> None:
    with reported_as_one_line("nf-precond"):
        raise UserInputError(f"advise: unknown task {task!r}; expected one of {', '.join(ADVISE_TASKS)}")


def _guarded(config: SparsityConfig | ConditionConfig | NerfDemoConfig | AdviseCommand | ImageDemoConfig) -> None:
    # errors are labelled with the subcommand the user ran ("nf-precond advise: error: …")
    subcommand = {AdviseCommand: "advise", NerfDemoConfig: "nerf-demo", ImageDemoConfig: "image-demo"}.get(
        type(config), "sparsity" if isinstance(config, SparsityConfig) else "condition"
    )
    with reported_as_one_line(f"nf-precond {subcommand}"):
        _dispatch(config)


def _dispatch(config: SparsityConfig | ConditionConfig | NerfDemoConfig | AdviseCommand | ImageDemoConfig) -> None:
    if isinstance(config, NerfDemoConfig):
        run_nerf_demo(config)
        return
    if isinstance(config, ImageDemoConfig):
        run_image_demo(config)
        return
    if isinstance(config, AdviseCommand):
        show_advice(run_advise(config), config.task.json)
        return
    if isinstance(config, SparsityConfig):
        result, show = run_sparsity(config, progress=not config.json), _show_sparsity
    else:
        result, show = run_condition(config, progress=not config.json), _show_condition
    if config.json:
        print(json.dumps({k: v for k, v in result.items() if k != "history"}))
    else:
        show(result)
        _console.print(f"run directory: {result['run_dir']}\nplot: {result['plot']}")


if __name__ == "__main__":
    sys.exit(main())
