"""configs/: the paper's experiments as data. Every file parses into its task's options, the set is
complete, and a config runs (shrunk by flags given after it)."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from nf_precond_plugin.fields import ACTIVATIONS
from nf_precond_plugin.optim.factory import OPTIMIZERS
from nf_precond_plugin.tasks.cli_support import config_defaults
from nf_precond_plugin.tasks.image import ImageConfig
from nf_precond_plugin.tasks.occupancy import OccupancyConfig

ROOT = Path(__file__).resolve().parents[1]
TASKS = {"image": ImageConfig, "occupancy": OccupancyConfig}


def test_one_config_per_task_activation_and_optimizer():
    for task in TASKS:
        found = {p.stem for p in (ROOT / "configs" / task).glob("*.yaml")}
        assert found == {f"{a}-{o}" for a, o in itertools.product(ACTIVATIONS, OPTIMIZERS)}


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("*/*.yaml")), ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_config_parses_into_the_task_options(path):
    config, rest = config_defaults(TASKS[path.parent.name], ["--config", str(path), "--epochs", "3"])
    assert rest == ["--epochs", "3"]
    activation, optimizer = (
        path.stem.split("-", 1) if not path.stem.startswith("relu-pe") else ("relu-pe", path.stem[8:])
    )
    assert (config.activation, config.optimizer) == (activation, optimizer)
    raw = yaml.safe_load(path.read_text())
    assert config.epochs == raw["epochs"] == 200
    if path.parent.name == "image":
        assert (config.size, config.batch_size, config.sigma) == (256, 512, 0.05)
    else:
        assert (config.points_per_epoch, config.batch_size, config.sigma) == (1_000_000, 50_000, 0.09)


def test_unknown_keys_in_a_config_are_refused(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("activation: gaussian\nlearning_rate: 0.1\n")
    from nf_precond_plugin.errors import UserInputError

    with pytest.raises(UserInputError, match="learning_rate"):
        config_defaults(ImageConfig, ["--config", str(bad)])


@pytest.mark.shared_data
def test_a_paper_config_runs_when_shrunk_by_flags(shared_data, tmp_path):
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    result = subprocess.run(
        [
            sys.executable,
            "standalone/image.py",
            "--config",
            "configs/image/wavelet-esgd-paper.yaml",
            "--size",
            "16",
            "--epochs",
            "1",
            "--hidden-features",
            "16",
            "--num-layers",
            "2",
            "--batch-size",
            "64",
            "--output-dir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    (run_dir,) = tmp_path.iterdir()
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["data"]["source"].endswith("div2k/test_data/14.png")
    assert summary["config"]["activation"] == "wavelet" and summary["optimizers"]["esgd-paper"]["lr"] == 0.15
