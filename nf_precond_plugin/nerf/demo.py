"""`nf-precond nerf-demo`: train a Gaussian NeRF on the embedded scene, evaluate it, render it, say where it all is.

It drives nerfstudio's own CLIs (ns-train, then ns-eval), exactly what a user would type, so the demo
also shows the commands to reuse on their own data. ns-eval runs with its output captured behind a
status line (what it evaluates, time elapsed), shown in full only if it fails. The held-out views
are then rendered in this process (``renders.render_views``) at least 320 pixels wide, with a
progress bar per view: RGB, and depth with a labelled colour bar. Last, the next commands, each as
it runs from the working directory (``commands.printed_command``).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from nf_precond_plugin.commands import printed_command
from nf_precond_plugin.errors import RunInterrupted, UserInputError

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


def _show(command: list[str]) -> None:
    """The command as the user would type it from here, on one line however long."""
    _console.print(
        f"$ {printed_command(Path(command[0]).name, *command[1:])}", style="bold", soft_wrap=True, markup=False
    )


def _failed(command: list[str], status: int) -> UserInputError:
    return UserInputError(f"{Path(command[0]).name} failed with exit status {status} (its own output is above)")


def _run(command: list[str]) -> None:
    _show(command)
    completed = subprocess.run(command, check=False)
    if completed.returncode != 0:
        raise _failed(command, completed.returncode)


def _run_behind_status(command: list[str], doing: str) -> float:
    """Run ``command`` with its output captured, showing ``doing`` and the time elapsed; on failure
    its output is printed. Returns the seconds it took."""
    _show(command)
    started = time.monotonic()
    with tempfile.TemporaryFile("w+") as log:
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        try:
            with _console.status(doing) as status:
                while process.poll() is None:
                    status.update(f"{doing} · {_elapsed(time.monotonic() - started)}")
                    time.sleep(0.25)
        finally:
            if process.poll() is None:  # interrupted: the child had Ctrl-C too; give it a moment
                try:
                    process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    process.kill()
        if process.returncode != 0:
            log.seek(0)
            sys.stdout.write(log.read()[-20_000:])
            raise _failed(command, process.returncode)
    return time.monotonic() - started


def _elapsed(seconds: float) -> str:
    minutes, rest = divmod(int(seconds), 60)
    return f"{minutes}:{rest:02d} elapsed"


def _render(config_path: Path, renders: Path) -> list:
    from nf_precond_plugin.nerf.renders import render_views

    columns = (
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    progress = Progress(*columns, console=_console)
    task = None

    def on_view(index: int, count: int, name: str, width: int, height: int) -> None:
        nonlocal task
        if task is None:  # started once the model is loaded, so nerfstudio's loading lines come first
            progress.start()
            task = progress.add_task("", total=count)
        progress.update(task, completed=index, description=f"rendering {name} at {width}×{height}")

    try:
        views = render_views(config_path, renders, on_view=on_view)
        if task is not None:
            progress.update(task, completed=len(views), description="rendered the held-out views")
    finally:
        progress.stop()
    return views


def run_nerf_demo(config: NerfDemoConfig) -> dict:
    from nf_precond_plugin.data.demo_scene import ensure_demo_scene
    from nf_precond_plugin.nerf.llff import LLFFDataParserConfig, check_llff_scene, load_llff_scene, split_indices

    if config.iterations < 1:
        raise UserInputError(f"--iterations {config.iterations}: expected at least 1")
    data = ensure_demo_scene() if config.data is None else config.data
    if not data.exists():
        raise UserInputError(f"--data {data}: no such scene directory")
    check_llff_scene(data)
    scene = load_llff_scene(data)
    held_out = len(split_indices(len(scene.camera_to_worlds), LLFFDataParserConfig().holdout_every, "test"))
    timestamp = time.strftime("%Y-%m-%d_%H%M%S")
    run_dir = config.output_dir / data.name / config.method / timestamp
    config_path = run_dir / "config.yml"
    metrics_path = run_dir / "eval.json"
    renders = run_dir / "renders"
    stage = "ns-train"
    started = time.monotonic()
    try:
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
        stage = "ns-eval"
        eval_seconds = _run_behind_status(
            [_tool("ns-eval"), "--load-config", str(config_path), "--output-path", str(metrics_path)],
            f"ns-eval: rendering and scoring {held_out} held-out views ({scene.width}×{scene.height}) of {data.name}",
        )
        _console.print(
            f"ns-eval: {held_out} held-out views scored in {eval_seconds:.0f} s → {metrics_path}", soft_wrap=True
        )
        stage = "rendering"
        views = _render(config_path, renders)
    except KeyboardInterrupt:
        kept = f"what it wrote is in {run_dir}" if run_dir.exists() else "nothing was written"
        raise RunInterrupted(f"the demo stopped during {stage}; {kept}") from None
    total_seconds = time.monotonic() - started

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
    sizes = sorted({(view.width, view.height) for view in views})
    size = ", ".join(f"{width}×{height}" for width, height in sizes)
    commands = next_commands(config, config_path, data)
    lines = [
        f"run:       {run_dir}  ({total_seconds / 60:.1f} min)",
        f"renders:   {renders / 'test' / 'rgb'}  ({len(views)} views, {size}, trained at {scene.width}×{scene.height})",
        f"depth:     {renders / 'test' / 'depth'}  (with a colour bar)",
        "look at it in the browser (then open the http://… address it prints):",
        f"  {commands['viewer']}",
        "train on your own LLFF scene (poses_bounds.npy + images_8/ or images_4/; put its folder after --data):",
        f"  {commands['your data']}",
    ]
    for line in lines:
        _console.print(line, soft_wrap=True, markup=False, highlight=False)
    return {
        "run_dir": str(run_dir),
        "results": results,
        "renders": [str(view.rgb) for view in views],
        "depth": [str(view.depth) for view in views],
        "commands": commands,
        "seconds": {"total": total_seconds, "ns-eval": eval_seconds},
    }


def next_commands(config: NerfDemoConfig, config_path: Path, data: Path) -> dict[str, str]:
    """The commands to run next, each as it works from the current directory."""
    return {
        "viewer": printed_command("ns-viewer", "--load-config", config_path),
        "your data": printed_command("ns-train", config.method, "--machine.device-type", config.device, "--data", data),
    }
