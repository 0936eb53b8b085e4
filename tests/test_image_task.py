"""The image task and the shared runner, end to end: run directories, PSNR, --compare, resume,
NaN handling and bad input."""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from nf_precond_plugin.tasks.image import ImageConfig, ImageTask
from nf_precond_plugin.training import RunSettings, run_task

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["--size", "24", "--hidden-features", "32", "--num-layers", "3", "--batch-size", "96", "--sigma", "0.2"]


def image_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run(
        [sys.executable, str(ROOT / "standalone" / "image.py"), *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=600,
    )


def only_run_dir(base: Path) -> Path:
    (run_dir,) = [p for p in base.iterdir() if p.is_dir()]
    return run_dir


def read_metrics(run_dir: Path) -> list[dict[str, str]]:
    with (run_dir / "metrics.csv").open() as handle:
        return list(csv.DictReader(handle))


def test_cli_compare_writes_a_complete_run_and_psnr_improves(tmp_path):
    result = image_cli(*SMALL, "--epochs", "4", "--compare", "adam,esgd", "--output-dir", "out", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    run_dir = only_run_dir(tmp_path / "out")
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert config["compare"] == "adam,esgd" and config["size"] == 24
    rows = read_metrics(run_dir)
    assert list(rows[0]) == [
        "optimizer", "epoch", "step", "wall_seconds", "optimizer_step_seconds", "loss", "psnr", "lr"
    ]  # fmt: skip
    # the lr each optimizer will take next: Adam's cosine to a tenth over the 4 epochs, ESGD's
    # constant (schedule-free averages instead)
    cosine = [1e-3 * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * epoch / 4))) for epoch in (1, 2, 3, 4)]
    assert [float(r["lr"]) for r in rows if r["optimizer"] == "adam"] == pytest.approx(cosine)
    assert [float(r["lr"]) for r in rows if r["optimizer"] == "esgd"] == [1.0] * 4
    for name in ("adam", "esgd"):
        psnr = [float(r["psnr"]) for r in rows if r["optimizer"] == name]
        assert len(psnr) == 4 and psnr[-1] > psnr[0]
        assert (run_dir / f"reconstruction-{name}.png").is_file() and (run_dir / f"error-{name}.png").is_file()
    summary = json.loads((run_dir / "summary.json").read_text())
    assert set(summary["optimizers"]) == {"adam", "esgd"}
    assert summary["optimizers"]["esgd"]["final"]["psnr"] == pytest.approx(float(rows[-1]["psnr"]))
    assert (run_dir / "convergence.png").read_bytes()[:4] == b"\x89PNG"


class ConstantColour(torch.nn.Module):
    def __init__(self, colour):
        super().__init__()
        self.colour = torch.tensor(colour)

    def forward(self, x):
        return self.colour.expand(x.shape[0], 3)


def test_psnr_of_a_constant_prediction_matches_numpy():
    task = ImageTask(ImageConfig(size=32))
    target = task.target.numpy().astype(np.float64)
    expected = -10 * np.log10(np.mean((target - np.array([0.25, 0.5, 0.75])) ** 2))
    assert task.evaluate(ConstantColour([0.25, 0.5, 0.75]), None)["psnr"] == pytest.approx(expected, abs=1e-4)


def test_each_compared_optimizer_sees_the_same_init_and_data_as_a_solo_run(tmp_path):
    both = image_cli(*SMALL, "--epochs", "2", "--compare", "sgd,adam", "--output-dir", "both", cwd=tmp_path)
    solo = image_cli(*SMALL, "--epochs", "2", "--optimizer", "adam", "--output-dir", "solo", cwd=tmp_path)
    assert both.returncode == 0 and solo.returncode == 0, both.stderr + solo.stderr
    compared = [r for r in read_metrics(only_run_dir(tmp_path / "both")) if r["optimizer"] == "adam"]
    alone = read_metrics(only_run_dir(tmp_path / "solo"))
    assert [(r["loss"], r["psnr"]) for r in compared] == [(r["loss"], r["psnr"]) for r in alone]


class InterruptedImageTask(ImageTask):
    """Raises KeyboardInterrupt when asked for epoch ``stop_at``, like a user pressing Ctrl-C."""

    stop_at: int | None = None

    def epoch_data(self, epoch, generator):
        if epoch == self.stop_at:
            raise KeyboardInterrupt
        return super().epoch_data(epoch, generator)


def test_resume_continues_an_interrupted_run_bit_identically(tmp_path):
    config = ImageConfig(size=20, hidden_features=32, num_layers=3, batch_size=80, sigma=0.2)

    def settings(output: Path, resume: Path | None = None) -> RunSettings:
        return RunSettings(
            ["esgd"], {"esgd": 0.05}, epochs=4, batch_size=80, output_dir=output, resume=resume, progress=False
        )

    reference = run_task(ImageTask(config), settings(tmp_path / "reference"))
    interrupted = InterruptedImageTask(config)
    interrupted.stop_at = 2
    with pytest.raises(KeyboardInterrupt):
        run_task(interrupted, settings(tmp_path / "resumed"))
    run_dir = only_run_dir(tmp_path / "resumed")
    assert not (run_dir / "summary.json").exists(), "an interrupted run must not look complete"
    resumed = run_task(ImageTask(config), settings(tmp_path / "unused", resume=run_dir))
    assert resumed["run_dir"] == str(run_dir)
    got, want = resumed["optimizers"]["esgd"]["final"], reference["optimizers"]["esgd"]["final"]
    assert (got["step"], got["loss"], got["psnr"]) == (want["step"], want["loss"], want["psnr"])
    with pytest.raises(Exception, match="already complete"):
        run_task(ImageTask(config), settings(tmp_path / "unused", resume=run_dir))


def test_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path):
    result = image_cli(
        *SMALL, "--epochs", "6", "--optimizer", "sgd", "--lr", "1e6", "--output-dir", "out", cwd=tmp_path
    )
    assert result.returncode == 3, result.stderr
    assert "training stopped" in result.stderr and "Traceback" not in result.stderr
    run_dir = only_run_dir(tmp_path / "out")
    assert not (run_dir / "summary.json").exists()


@pytest.mark.parametrize(
    "args, expected",
    [
        (("--image", "missing.png"), "missing.png"),
        (("--image", "corrupt.png"), "corrupt.png"),
        (("--optimizer", "lbfgs"), "--optimizer"),
        (("--compare", "adam,rmsprop"), "--compare"),
        (("--activation", "swish"), "--activation"),
        (("--lr", "-1"), "--lr"),
        (("--config", "missing.yaml"), "missing.yaml"),
    ],
)
def test_bad_input_gives_a_one_line_error(tmp_path, args, expected):
    (tmp_path / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    result = image_cli(*args, "--epochs", "1", "--output-dir", "out", cwd=tmp_path)
    assert result.returncode != 0
    assert expected in result.stderr and "Traceback" not in result.stderr
    assert not list((tmp_path / "out").glob("*/summary.json"))


@pytest.mark.shared_data
def test_lion_fits(shared_data, tmp_path):
    lion = shared_data / "div2k" / "test_data" / "14.png"
    result = image_cli(
        "--image",
        str(lion),
        "--size",
        "32",
        "--hidden-features",
        "64",
        "--num-layers",
        "3",
        "--batch-size",
        "128",
        "--epochs",
        "3",
        "--optimizer",
        "adam",
        "--lr",
        "1e-3",
        "--schedule",
        "constant",  # three epochs: no room for a decay
        "--output-dir",
        "out",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    psnr = [float(r["psnr"]) for r in read_metrics(only_run_dir(tmp_path / "out"))]
    assert psnr[-1] > psnr[0] and psnr[-1] > 12


@pytest.mark.parametrize("kind", ["under-a-file", "proc"])
def test_an_output_directory_that_cannot_be_created_gets_one_line_naming_it(tmp_path, kind):
    if kind == "under-a-file":
        (tmp_path / "plain-file").write_text("not a directory")
        output = tmp_path / "plain-file" / "runs"
    else:
        output = Path("/proc/nf-precond-cannot-exist")
    result = image_cli(*SMALL, "--epochs", "1", "--output-dir", str(output), cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "--output-dir" in lines[0] and str(output) in lines[0], result.stderr


DEVICE_CASES = ["tpu", "cuda:x"] + ([] if torch.cuda.is_available() else ["cuda"])


@pytest.mark.parametrize("device", DEVICE_CASES)
def test_a_device_that_is_not_here_gets_one_line_naming_it(tmp_path, device):
    result = image_cli(*SMALL, "--epochs", "1", "--device", device, "--output-dir", "runs", cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and f"--device {device}" in lines[0], result.stderr
    assert not (tmp_path / "runs").exists()  # refused before anything was written
