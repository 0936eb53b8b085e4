"""`nf-precond nerf-demo`: train a Gaussian NeRF on the embedded scene, evaluate it, render it, say where it all is.

It drives nerfstudio's own CLIs (ns-train → ns-eval → ns-render), exactly what a user would type,
so the demo also shows the commands to reuse on their own data.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from rich.console import Console
from rich.table import Table

from nf_precond_plugin.errors import UserInputError

_console = Console()


@dataclass
class NerfDemoConfig:
    """Train a Gaussian NeRF (ESGD by default) on a small generated forward-facing scene."""

    method: str = "gaussian-esgd-cpu"
    """An ns-train method registered by this plugin (gaussian-esgd-cpu, gaussian-adam-cpu, gaussian-esgd, ...)."""
    data: Path | None = None
    """An LLFF scene; default: the embedded demo scene, generated on first use."""
    iterations: int = 1000
    """Training iterations."""
    device: Literal["cpu", "cuda"] = "cpu"
    """Where to train (--machine.device-type)."""
    output_dir: Path = Path("outputs/demo")
    """Runs go to OUTPUT_DIR/<scene>/<method>/<timestamp>/: every run gets a new directory."""


def _tool(name: str) -> str:
    """The nerfstudio CLI next to this Python (the venv's), else on PATH."""
    beside = Path(sys.executable).with_name(name)
    found = str(beside) if beside.exists() else shutil.which(name)
    if found is None:
        raise UserInputError(f"{name} not found: install the nerfstudio extra (pip install -e '.[nerfstudio]')")
    return found


def _run(command: list[str]) -> None:
    _console.print(f"[bold]$ {' '.join(command)}", highlight=False)
    completed = subprocess.run(command, check=False)
    if completed.returncode != 0:
        raise UserInputError(
            f"{Path(command[0]).name} failed with exit status {completed.returncode} (its own output is above)"
        )


def run_nerf_demo(config: NerfDemoConfig) -> dict:
    from nf_precond_plugin.data.demo_scene import ensure_demo_scene

    if config.iterations < 1:
        raise UserInputError(f"--iterations {config.iterations}: expected at least 1")
    data = ensure_demo_scene() if config.data is None else config.data
    if not data.exists():
        raise UserInputError(f"--data {data}: no such scene directory")
    timestamp = time.strftime("%Y-%m-%d_%H%M%S")
    run_dir = config.output_dir / data.name / config.method / timestamp
    _run(
        [
            _tool("ns-train"),
            config.method,
            "--machine.device-type", config.device,
            "--vis", "tensorboard",
            "--max-num-iterations", str(config.iterations),
            "--steps-per-eval-all-images", str(10**9),
            "--output-dir", str(config.output_dir),
            "--experiment-name", data.name,
            "--timestamp", timestamp,
            "--data", str(data),
        ]
    )  # fmt: skip
    config_path = run_dir / "config.yml"
    metrics_path = run_dir / "eval.json"
    renders = run_dir / "renders"
    _run([_tool("ns-eval"), "--load-config", str(config_path), "--output-path", str(metrics_path)])
    _run(
        [
            _tool("ns-render"), "dataset",
            "--load-config", str(config_path),
            "--output-path", str(renders),
            "--split", "test",
            "--rendered-output-names", "rgb", "depth",
        ]  # nerfstudio 1.1.5's `dataset` subcommand always writes images (it has no --output-format)
    )  # fmt: skip
    results = json.loads(metrics_path.read_text())["results"]
    table = Table(title=f"{config.method} on {data.name}: {config.iterations} iterations, held-out views")
    for key in ("PSNR", "SSIM", "LPIPS"):
        table.add_column(key, justify="right")
    lpips = results.get("lpips")
    table.add_row(
        f"{results['psnr']:.2f} dB",
        f"{results['ssim']:.3f}",
        "n/a (AlexNet weights not on disk)" if lpips is None else f"{lpips:.3f}",
    )
    _console.print(table)
    _console.print(f"run:      {run_dir}")
    _console.print(f"renders:  {renders}")
    _console.print(f"viewer:   ns-viewer --load-config {config_path}  (then open the printed http://… address)")
    _console.print(f"your data: ns-train {config.method} --data <llff scene> --machine.device-type {config.device}")
    return {"run_dir": str(run_dir), "results": results}
