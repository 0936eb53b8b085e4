"""``nf-precond image-demo``: the project's claim side by side on the embedded image.

The project's ESGD against the strongest first-order peer of the fair league on smooth fields,
schedule-free AdamW (``PEER``; benchmarks/README.md), each at its registry defaults (lr and
schedule), same initial weights, same minibatches (the standalone runner), on scikit-image's
astronaut with the paper's 5 × 256 Gaussian field. Prints both PSNRs after every epoch and writes
the run directory, whose convergence.png is the comparison plot.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from nf_precond_plugin.errors import UserInputError
from nf_precond_plugin.optim.factory import default_lr
from nf_precond_plugin.presets import IMAGE_SIZE
from nf_precond_plugin.tasks.image import ImageConfig, ImageTask
from nf_precond_plugin.training import RunSettings, run_task

PEER = "sf-adamw"
"""The strongest first-order peer of the fair league on smooth fields."""
CONTENDERS = (PEER, "esgd")


@dataclass
class ImageDemoConfig:
    """Fit the embedded image with the project's ESGD and the strongest first-order peer, side by side."""

    epochs: int = 8
    """Epochs: every pixel once, in minibatches of the paper's 512."""
    size: int = IMAGE_SIZE
    """Side of the square target (the paper's)."""
    seed: int = 0
    output_dir: Path = Path("outputs/demo")
    """The run gets a new directory under this one."""


def run_image_demo(config: ImageDemoConfig) -> dict:
    from rich.console import Console
    from rich.table import Table

    if config.epochs < 1:
        raise UserInputError(f"--epochs {config.epochs}: expected at least 1")
    image = ImageConfig(activation="gaussian", size=config.size, epochs=config.epochs, seed=config.seed)
    task = ImageTask(image)
    rates = {name: default_lr(name, image.activation) for name in CONTENDERS}
    settings = RunSettings(
        optimizers=CONTENDERS,
        learning_rates=rates,
        epochs=config.epochs,
        batch_size=image.batch_size,
        seed=config.seed,
        output_dir=config.output_dir,
        config={"demo": "image-demo", "epochs": config.epochs, "size": config.size, "seed": config.seed},
    )
    summary = run_task(task, settings)
    rows = {}
    with open(Path(summary["run_dir"]) / "metrics.csv") as handle:
        import csv

        for row in csv.DictReader(handle):
            rows.setdefault(int(row["epoch"]), {})[row["optimizer"]] = float(row["psnr"])
    console = Console(stderr=True)
    field = f"{image.num_layers} × {image.hidden_features}"
    table = Table(title=f"PSNR (dB) on {task.describe()['source']}, Gaussian {field}, same init and batches")
    table.add_column("epoch", justify="right")
    for name in CONTENDERS:
        schedule = summary["optimizers"][name]["schedule"]["name"]
        table.add_column(f"{name} (lr {rates[name]:g}, {schedule})", justify="right")
    table.add_column(f"esgd − {PEER}", justify="right")
    for epoch, values in sorted(rows.items()):
        table.add_row(str(epoch), *(f"{values[n]:.2f}" for n in CONTENDERS), f"{values['esgd'] - values[PEER]:+.2f}")
    console.print(table)
    console.print(f"plot: {Path(summary['run_dir']) / summary['files']['plot']}")
    return summary
