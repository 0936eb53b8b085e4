"""The plugin through nerfstudio's own command lines: ns-train (registration, options, refusals), and
ns-eval / ns-render on a checkpoint that one short ns-train run (``trained_run``) wrote.

Oracles: the registry and the CLI help text name our methods and options; the refusals are one line
naming the culprit, with no traceback, before the config is printed or a run directory written; the
rendered test views beat the best constant colour by a clear margin, and ns-eval's PSNR agrees with
the PSNR of ns-render's PNGs against the scene's images. Ctrl-C (SIGINT to the process group, as a
terminal sends it) is one line naming the kept checkpoint and a command that, run as printed from the
project root, resumes from it.
"""

from __future__ import annotations

import inspect
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import imageio.v3 as iio
import numpy as np
import pytest
import torch
from conftest import CLI_TIMEOUT_S, TRAIN_TIMEOUT_S, Background
from tiny_nerf import TINY_MODEL

from nf_precond_plugin.optim.esgd import PaperESGD

METHODS = (
    "gaussian-esgd",
    "gaussian-esgd-paper",
    "gaussian-adam",
    "gaussian-adahessian",
    "gaussian-esgd-cpu",
    "gaussian-esgd-paper-cpu",
    "gaussian-adam-cpu",
)
TEST_VIEWS = ("image000.png", "image008.png")
"""The demo scene's 12 views with holdout_every = 8: views 0 and 8 are the test split."""
HEIGHT, WIDTH = 60, 80
ROOT = Path(__file__).resolve().parents[2]
"""The project root: printed commands are run from here, as the user would."""
MARGIN_DB = 1.5
"""How much better than the best constant colour a rendered test view must be (measured: ≈ 3 dB)."""


@pytest.fixture(scope="module")
def cli_runs(start_command, tiny_scene: Path, tmp_path_factory: pytest.TempPathFactory):
    """The commands that need no checkpoint, started at once (they overlap with the training run)."""
    outputs = tmp_path_factory.mktemp("cli_runs_outputs")
    refused = ["ns-train", "gaussian-esgd-cpu", "--machine.device-type", "cpu", "--vis", "tensorboard"]
    runs = {
        "help": start_command(["ns-train", "--help"], "help"),
        "method_help": start_command(["ns-train", "gaussian-esgd", "--help"], "method_help"),
        "bad_data": start_command(
            [*refused, "--output-dir", outputs / "bad_data", "--data", "/nonexistent"], "bad_data"
        ),
        "bad_data_other_parser": start_command(
            [*refused, "--output-dir", outputs / "bad_data_other_parser", "--data", "/no-ns", "nerfstudio-data"],
            "bad_data_other_parser",
        ),
        "bad_lr": start_command(
            [*refused, "--optimizers.fields.optimizer.lr", "-1", "--output-dir", outputs / "lr", "--data", tiny_scene],
            "bad_lr",
        ),
        "mixed_precision": start_command(
            [*refused, "--mixed-precision", "True", "--output-dir", outputs / "mixed_precision", "--data", tiny_scene],
            "mixed_precision",
        ),
        "several_cpu_devices": start_command(
            [*refused, "--machine.num-devices", "2", "--output-dir", outputs / "devices", "--data", tiny_scene],
            "several_cpu_devices",
        ),
        "accumulation": start_command(
            [
                *refused,
                *TINY_MODEL,
                "--gradient-accumulation-steps",
                "fields",
                "2",
                "--max-num-iterations",
                "4",
                "--steps-per-save",
                "4",
                "--output-dir",
                outputs / "accumulation",
                "--data",
                tiny_scene,
            ],
            "accumulation",
        ),  # fmt: skip
        "paper_rule": start_command(
            [
                *refused,
                *TINY_MODEL,
                "--optimizers.fields.optimizer.rule",
                "paper",
                "--max-num-iterations",
                "2",
                "--steps-per-save",
                "2",
                "--output-dir",
                outputs / "paper_rule",
                "--data",
                tiny_scene,
            ],
            "paper_rule",
        ),  # fmt: skip
    }
    runs["bad_data"].output_dir = outputs / "bad_data"
    runs["bad_data_other_parser"].output_dir = outputs / "bad_data_other_parser"
    runs["bad_lr"].output_dir = outputs / "lr"
    runs["paper_rule"].output_dir = outputs / "paper_rule"
    runs["accumulation"].output_dir = outputs / "accumulation"
    runs["several_cpu_devices"].output_dir = outputs / "devices"
    return runs


@pytest.fixture(scope="module")
def interrupted_training(cli_env: dict[str, str], tiny_scene: Path, tmp_path_factory: pytest.TempPathFactory):
    """A long ns-train run started from the project root (so its printed commands are relative to it);
    the test sends it Ctrl-C once its first checkpoint is on disk."""
    root = tmp_path_factory.mktemp("interrupted")
    outputs = root / "outputs"
    run = Background(
        [
            BIN_NS_TRAIN, "gaussian-esgd-cpu", "--machine.device-type", "cpu", "--vis", "tensorboard",
            *TINY_MODEL, "--max-num-iterations", "100000", "--steps-per-save", "10",
            "--output-dir", outputs, "--data", tiny_scene,
        ],
        cli_env, root, "interrupted", cwd=ROOT,
    )  # fmt: skip
    run.output_dir = outputs
    yield run
    run.kill()


BIN_NS_TRAIN = Path(sys.executable).parent / "ns-train"


@pytest.fixture(scope="module", autouse=True)
def _start_in_background(training: Any, cli_runs: dict[str, Any], interrupted_training: Background):
    """Start the training runs and the checkpoint-free commands before the first test of this module."""


@pytest.fixture(scope="module")
def checkpoint_runs(trained_run: Path, start_command, tmp_path_factory: pytest.TempPathFactory):
    """ns-eval and ns-render on the trained run, side by side."""
    root = tmp_path_factory.mktemp("checkpoint_runs")
    runs = {
        "eval": start_command(["ns-eval", "--load-config", trained_run, "--output-path", root / "eval.json"], "eval"),
        "render": start_command(
            [
                "ns-render",
                "dataset",
                "--load-config",
                trained_run,
                "--output-path",
                root / "renders",
                "--split",
                "test",
                "--image-format",
                "png",
                "--rendered-output-names",
                "rgb",
                "depth",
            ],
            "render",
        ),  # fmt: skip
    }
    runs["eval"].json_path = root / "eval.json"
    runs["render"].frames = root / "renders" / "test"
    return runs


def mentions_method(text: str, name: str) -> bool:
    """``name`` as a whole word: gaussian-esgd must not match only inside gaussian-esgd-cpu."""
    return re.search(rf"(?<![\w-]){re.escape(name)}(?![\w-])", text) is not None


def error_lines(output: str) -> list[str]:
    """Lines in the project's one error idiom, ``PROG: error: …`` (or a bare ``error: …``)."""
    return [line for line in output.splitlines() if re.match(r"\s*(\S+: )?error", line, re.IGNORECASE)]


def psnr(image: np.ndarray, reference: np.ndarray) -> float:
    return float(-10.0 * np.log10(np.mean((image - reference) ** 2)))


def load_rgb(path: Path) -> np.ndarray:
    return iio.imread(path)[..., :3].astype(np.float64) / 255.0


def test_methods_and_dataparser_are_registered_in_process():
    from nerfstudio.plugins.registry import discover_methods
    from nerfstudio.plugins.registry_dataparser import discover_dataparsers

    from nf_precond_plugin.nerf.llff import LLFFDataParserConfig
    from nf_precond_plugin.nerf.optimizers import AdaHessianOptimizerConfig, ESGDOptimizerConfig

    methods, descriptions = discover_methods()
    assert set(METHODS) <= set(methods), sorted(methods)
    assert all(descriptions[name] for name in METHODS)
    optimizer = {name: methods[name].optimizers["fields"]["optimizer"] for name in METHODS}
    assert isinstance(optimizer["gaussian-esgd"], ESGDOptimizerConfig)
    assert isinstance(optimizer["gaussian-esgd-cpu"], ESGDOptimizerConfig)
    assert isinstance(optimizer["gaussian-adahessian"], AdaHessianOptimizerConfig)
    assert type(optimizer["gaussian-adam"]).__name__ == "AdamOptimizerConfig"
    assert type(optimizer["gaussian-adam-cpu"]).__name__ == "AdamOptimizerConfig"
    assert all(methods[name].method_name == name for name in METHODS)

    dataparsers, _ = discover_dataparsers()
    assert isinstance(dataparsers.get("llff-data"), LLFFDataParserConfig), sorted(dataparsers)


def test_network_guard_is_active(cli_env: dict[str, str], tmp_path: Path):
    """The guard the other runs are checked with does catch a connection (so its silence means something)."""
    log = tmp_path / "network"
    attempt = "\n".join(
        [
            "import socket",
            "try:",
            "    socket.create_connection(('192.0.2.1', 80), timeout=1)",
            "except OSError as e:",
            "    print(e)",
        ]
    )
    subprocess.run(
        [sys.executable, "-c", attempt],
        env={**cli_env, "NF_PRECOND_TEST_NETWORK_LOG": str(log)},
        check=True,
        timeout=60,
    )
    assert "192.0.2.1" in log.read_text()


def test_ns_train_help_lists_the_methods(cli_runs: dict[str, Any]):
    run = cli_runs["help"].result()
    assert run.returncode == 0, run.describe()
    missing = [name for name in METHODS if not mentions_method(run.output, name)]
    assert not missing, f"ns-train --help does not list {missing}\n{run.describe()}"


def test_method_help_shows_esgd_options_and_llff_dataparser(cli_runs: dict[str, Any]):
    run = cli_runs["method_help"].result()
    assert run.returncode == 0, run.describe()
    for option in ("--optimizers.fields.optimizer.update-d-every", "--optimizers.fields.optimizer.d-warmup"):
        assert option in run.output, f"{option} missing\n{run.describe()}"
    assert mentions_method(run.output, "llff-data"), run.describe()


def refused_before_anything(run: Any) -> str:
    """The one error line of a refused ns-train, after checking that it came before the config was
    printed (its 160 lines) or written, and without a traceback."""
    finished = run.result()
    assert finished.returncode == 2, finished.describe()
    assert "Traceback" not in finished.output, finished.describe()
    assert "CurvatureTrainerConfig(" not in finished.output and "Saving config" not in finished.output
    assert not run.output_dir.exists(), f"{run.output_dir} was written\n{finished.describe()}"
    errors = error_lines(finished.output)
    assert len(errors) == 1 and errors[0].startswith("ns-train: error: "), finished.describe()
    return errors[0]


def test_missing_data_is_one_line_error_without_traceback(cli_runs: dict[str, Any]):
    error = refused_before_anything(cli_runs["bad_data"])
    assert error.startswith("ns-train: error: --data /nonexistent: "), error


def test_missing_data_of_another_dataparser_is_one_line_before_anything_is_written(cli_runs: dict[str, Any]):
    error = refused_before_anything(cli_runs["bad_data_other_parser"])
    assert error.startswith("ns-train: error: --data /no-ns: no such file or directory"), error


def test_a_refused_learning_rate_is_one_line_naming_the_flag(cli_runs: dict[str, Any]):
    error = refused_before_anything(cli_runs["bad_lr"])
    assert error.startswith("ns-train: error: --optimizers.fields.optimizer.lr -1.0: ESGD refuses it ("), error
    assert "Invalid learning rate" in error


def checkpoint_step(path: Path) -> int:
    return int(path.stem.split("-")[-1])


def test_ctrl_c_names_the_kept_checkpoint_and_its_printed_command_resumes_from_it(
    interrupted_training: Background, cli_env: dict[str, str], tmp_path: Path
):
    run = interrupted_training
    deadline = time.monotonic() + TRAIN_TIMEOUT_S
    while not list(run.output_dir.rglob("step-*.ckpt")):
        if run.process.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"no checkpoint appeared\n{run.result().describe()}")
        time.sleep(0.5)
    os.killpg(run.process.pid, signal.SIGINT)  # what Ctrl-C in a terminal sends: the whole process group
    finished = run.result()
    assert finished.returncode == 130, finished.describe()
    assert "Traceback" not in finished.output, finished.describe()
    lines = [line for line in finished.output.splitlines() if "interrupted:" in line]
    assert len(lines) == 1 and lines[0].startswith("ns-train: interrupted: at step "), finished.describe()
    kept = max(run.output_dir.rglob("step-*.ckpt"), key=checkpoint_step)
    message = lines[0]
    assert f"; kept {kept}; resume with: .venv/bin/ns-train gaussian-esgd-cpu --load-dir {kept.parent} " in message

    command = message.split("resume with: ", 1)[1]
    network_log = tmp_path / "network"
    resumed = subprocess.run(
        f"{command} --max-num-iterations 2",  # the last occurrence of an option wins
        shell=True,
        cwd=ROOT,
        env={**cli_env, "NF_PRECOND_TEST_NETWORK_LOG": str(network_log)},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=CLI_TIMEOUT_S,
    )
    assert resumed.returncode == 0, resumed.stdout[-4000:]
    assert not network_log.exists() or not network_log.read_text()
    assert "Traceback" not in resumed.stdout and re.search(r"Done loading \w* ?checkpoint", resumed.stdout)
    (after,) = [path for path in run.output_dir.rglob("step-*.ckpt") if path.parent != kept.parent]
    assert checkpoint_step(after) == checkpoint_step(kept) + 2  # steps kept + 1 and kept + 2 ran
    state = torch.load(after, map_location="cpu", weights_only=True)
    assert state["optimizers"]["fields"]["param_groups"][0]["step_count"] == checkpoint_step(kept) + 3


def test_mixed_precision_is_refused_in_one_line(cli_runs: dict[str, Any]):
    run = cli_runs["mixed_precision"].result()
    assert run.returncode != 0, run.describe()
    assert "Traceback" not in run.output, run.describe()
    errors = error_lines(run.output)
    assert len(errors) == 1 and re.search(r"mixed[- ]precision", errors[0], re.IGNORECASE), run.describe()
    assert "Training Finished" not in run.output, run.describe()


def test_several_devices_on_the_cpu_are_refused_in_one_line_before_anything_is_written(cli_runs: dict[str, Any]):
    run = cli_runs["several_cpu_devices"].result()
    assert run.returncode == 2, run.describe()
    assert "Traceback" not in run.output, run.describe()
    errors = error_lines(run.output)
    assert len(errors) == 1 and "--machine.num-devices 2" in errors[0] and "CUDA only" in errors[0], run.describe()
    assert not list(cli_runs["several_cpu_devices"].output_dir.rglob("config.yml"))


def test_gradient_accumulation_is_accepted_on_the_command_line(cli_runs: dict[str, Any]):
    run = cli_runs["accumulation"].result()
    assert run.returncode == 0, run.describe()
    assert "Traceback" not in run.output and not error_lines(run.output), run.describe()
    (checkpoint,) = sorted(cli_runs["accumulation"].output_dir.rglob("step-*.ckpt"))
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    group = state["optimizers"]["fields"]["param_groups"][0]
    assert group["step_count"] == 2  # 4 iterations of 2 micro-batches each: two updates


def test_the_paper_rule_chosen_on_the_command_line_trains_with_the_papers_defaults(cli_runs: dict[str, Any]):
    run = cli_runs["paper_rule"].result()
    assert run.returncode == 0, run.describe()
    assert "Traceback" not in run.output and not error_lines(run.output), run.describe()
    (checkpoint,) = sorted(cli_runs["paper_rule"].output_dir.rglob("step-*.ckpt"))
    group = torch.load(checkpoint, map_location="cpu", weights_only=True)["optimizers"]["fields"]["param_groups"][0]
    assert "clip" not in group and group["bias_correction"] == "paper"  # the paper's rule, not the clipped one
    assert tuple(group["betas"]) == inspect.signature(PaperESGD).parameters["betas"].default
    (saved,) = cli_runs["paper_rule"].output_dir.rglob("config.yml")
    assert "PaperESGDOptimizerConfig" in saved.read_text()  # the saved config shows what ran


def test_ns_render_test_views_resemble_ground_truth(checkpoint_runs: dict[str, Any], tiny_scene: Path):
    run = checkpoint_runs["render"].result()
    assert run.returncode == 0, run.describe()
    frames: Path = checkpoint_runs["render"].frames
    for output in ("rgb", "depth"):
        names = sorted(path.name for path in (frames / output).glob("*.png"))
        assert names == list(TEST_VIEWS), f"{output}: {names}\n{run.describe()}"
    for name in TEST_VIEWS:
        rgb, depth = load_rgb(frames / "rgb" / name), load_rgb(frames / "depth" / name)
        truth = load_rgb(tiny_scene / "images_8" / name)
        assert rgb.shape == depth.shape == truth.shape == (HEIGHT, WIDTH, 3)
        assert rgb.std(axis=(0, 1)).max() > 0.05 and depth.std() > 0.02, f"{name}: a near-constant frame"
        best_constant = psnr(truth.mean(axis=(0, 1), keepdims=True), truth)
        rendered = psnr(rgb, truth)
        assert rendered > best_constant + MARGIN_DB, (
            f"{name}: render {rendered:.2f} dB vs constant {best_constant:.2f} dB"
        )


def test_ns_eval_writes_metrics_consistent_with_the_renders(
    checkpoint_runs: dict[str, Any], tiny_scene: Path, trained_run: Path
):
    from nf_precond_plugin.nerf.metrics import alexnet_weights_path

    run = checkpoint_runs["eval"].result()
    assert run.returncode == 0, run.describe()
    report = json.loads(checkpoint_runs["eval"].json_path.read_text())
    assert report["method_name"] == "gaussian-esgd-cpu"
    assert Path(report["checkpoint"]).parent == trained_run.parent / "nerfstudio_models"
    results = report["results"]
    assert isinstance(results["psnr"], float) and math.isfinite(results["psnr"]), results
    assert 0.0 < results["ssim"] <= 1.0, results
    assert "lpips" in results, results
    if alexnet_weights_path().is_file():
        assert isinstance(results["lpips"], float) and math.isfinite(results["lpips"]), results
    else:
        assert results["lpips"] is None, results

    # ns-eval and ns-render see the same model and test cameras: the mean PSNR of the rendered PNGs
    # (8-bit) against the scene's images matches ns-eval's mean PSNR to quantisation.
    rendered = checkpoint_runs["render"].result()
    assert rendered.returncode == 0, rendered.describe()
    frames: Path = checkpoint_runs["render"].frames / "rgb"
    png_psnr = np.mean([psnr(load_rgb(frames / name), load_rgb(tiny_scene / "images_8" / name)) for name in TEST_VIEWS])
    assert abs(results["psnr"] - png_psnr) < 0.3, (results["psnr"], png_psnr)


def test_the_demos_renders_are_at_least_320_wide_with_a_depth_colour_bar(trained_run: Path, tiny_scene: Path, tmp_path):
    """nerf-demo's render step (renders.render_views), on the trained run: the 80 × 60 test views at
    4 × their size, the same views (averaged back down, they beat the best constant colour as
    ns-render's do), and the depth picture with its range in the scene's own units."""
    from nf_precond_plugin.nerf.llff import load_llff_scene
    from nf_precond_plugin.nerf.renders import MIN_WIDTH, render_views

    views = render_views(trained_run, tmp_path / "renders")
    assert [f"{view.name}.png" for view in views] == list(TEST_VIEWS)
    bounds = np.load(tiny_scene / "poses_bounds.npy")[:, 15:17]
    scene = load_llff_scene(tiny_scene)
    for view in views:
        rgb = iio.imread(view.rgb)[..., :3]
        assert rgb.shape == (4 * HEIGHT, 4 * WIDTH, 3) and view.width >= MIN_WIDTH
        truth = load_rgb(tiny_scene / "images_8" / f"{view.name}.png")
        reduced = rgb.reshape(HEIGHT, 4, WIDTH, 4, 3).mean(axis=(1, 3)) / 255.0
        best_constant = psnr(truth.mean(axis=(0, 1), keepdims=True), truth)
        assert psnr(reduced, truth) > best_constant + MARGIN_DB, view
        depth = iio.imread(view.depth)[..., :3]
        assert depth.shape[1] >= MIN_WIDTH and depth.shape[1] > depth.shape[0]  # the colour bar sits beside
        low, high = view.depth_range
        # Rays span depths [0.9 · near, far] in the dataparser's units: back in the poses' units here.
        assert 0.9 * bounds.min() * 0.99 <= low < high <= bounds.max() * 1.01, (view.depth_range, bounds, scene.scale)
