"""`nf-precond` end to end in a subprocess: JSON on stdout, files in a new run directory, and
one-line errors for bad input."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

CLI = [sys.executable, "-m", "nf_precond_plugin.cli"]


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run([*CLI, *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=600)


def test_sparsity_json_is_one_object_and_files_exist(tmp_path):
    result = run_cli(
        "sparsity",
        "--activation",
        "relu",
        "--steps",
        "6",
        "--measure-every",
        "3",
        "--size",
        "32",
        "--json",
        "--output-dir",
        str(tmp_path),
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    payload = json.loads(result.stdout)
    assert 0.0 < payload["sparsity"] <= 1.0
    run_dir = Path(payload["run_dir"])
    assert run_dir.parent == tmp_path
    assert json.loads((run_dir / "sparsity.json").read_text())["sparsity"] == payload["sparsity"]
    assert (run_dir / "sparsity.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_two_runs_never_share_a_directory(tmp_path):
    args = ("sparsity", "--steps", "1", "--size", "16", "--json", "--output-dir", str(tmp_path))
    first = json.loads(run_cli(*args, cwd=tmp_path).stdout)["run_dir"]
    second = json.loads(run_cli(*args, cwd=tmp_path).stdout)["run_dir"]
    assert first != second and Path(first).is_dir() and Path(second).is_dir()


def test_condition_json_has_the_three_kappas(tmp_path):
    result = run_cli("condition", "--steps", "3", "--json", "--output-dir", str(tmp_path), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    payload = json.loads(result.stdout)
    for key in ("kappa_H", "kappa_E", "kappa_J"):
        assert math.isfinite(payload[key]) and payload[key] >= 1.0
    assert isinstance(payload["ordering_holds"], bool)
    assert Path(payload["plot"]).is_file()


@pytest.mark.parametrize(
    "args, expected",
    [
        (("sparsity", "--activation", "swish"), "--activation"),
        (("sparsity", "--no-such-flag"), "--no-such-flag"),
        (("sparsity", "--image", "missing.png"), "missing.png"),
        (("sparsity", "--image", "corrupt.png"), "corrupt.png"),
        (("sparsity", "--tolerance", "2"), "--tolerance"),
    ],
)
def test_bad_input_gives_a_short_error_naming_the_culprit(tmp_path, args, expected):
    (tmp_path / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\nthis is not an image")
    result = run_cli(*args, "--output-dir", str(tmp_path / "out"), cwd=tmp_path)
    assert result.returncode != 0
    assert expected in result.stderr
    assert "Traceback" not in result.stderr
    assert not any((tmp_path / "out").glob("*/sparsity.json")), "a failed run must not look complete"


def test_grayscale_and_rgba_images_are_accepted(tmp_path):
    import imageio.v3 as iio

    iio.imwrite(tmp_path / "gray.png", (np.arange(32 * 32).reshape(32, 32) % 256).astype(np.uint8))
    iio.imwrite(tmp_path / "rgba.png", np.full((20, 24, 4), 200, dtype=np.uint8))
    for name in ("gray.png", "rgba.png"):
        result = run_cli(
            "sparsity",
            "--image",
            name,
            "--steps",
            "1",
            "--size",
            "16",
            "--json",
            "--output-dir",
            str(tmp_path),
            cwd=tmp_path,
        )
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["image"] == name
