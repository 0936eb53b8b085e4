"""The occupancy task end to end: run directory with mesh and preview, IoU improves, the paper's
last-minibatch IoU alongside the held-out one, and mesh errors from the CLI."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import trimesh

ROOT = Path(__file__).resolve().parents[1]
SMALL = [
    "--points-per-epoch",
    "24000",
    "--batch-size",
    "2000",
    "--hidden-features",
    "48",
    "--num-layers",
    "3",
    "--heldout-points",
    "20000",
    "--mesh-resolution",
    "40",
]


def occupancy_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run(
        [sys.executable, str(ROOT / "standalone" / "occupancy.py"), *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=900,
    )


def test_sphere_run_writes_mesh_preview_and_improves_iou(tmp_path):
    sphere = trimesh.creation.icosphere(subdivisions=3, radius=1.0)
    sphere.export(tmp_path / "sphere.obj")
    result = occupancy_cli(
        *SMALL,
        "--mesh",
        "sphere.obj",
        "--epochs",
        "6",
        "--optimizer",
        "adam",
        "--lr",
        "3e-3",
        "--schedule",
        "constant",  # six epochs: no room for a decay
        "--sigma",
        "0.3",
        "--output-dir",
        "out",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    (run_dir,) = (tmp_path / "out").iterdir()
    with (run_dir / "metrics.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    iou = [float(r["iou"]) for r in rows]
    assert iou[-1] > iou[0] and iou[-1] > 0.7
    assert all(0.0 <= float(r["iou_last_batch"]) <= 1.0 for r in rows)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["data"]["labels"].startswith("containment")
    surface = trimesh.load(run_dir / "mesh-adam.ply")
    # the normalised sphere has radius 0.95: the learned surface should sit near it
    radii = (surface.vertices**2).sum(axis=1) ** 0.5
    assert abs(float(radii.mean()) - 0.95) < 0.1
    assert (run_dir / "preview-adam.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize(
    "make, expected",
    [
        (lambda d: None, "missing.obj"),
        (lambda d: (d / "missing.obj").write_text("this is not a mesh\n"), "missing.obj"),
        (lambda d: (d / "missing.obj").write_text("v 0 0 0\nv 1 0 0\nv 0 1 0\n"), "missing.obj"),
    ],
    ids=["missing", "corrupt", "no-faces"],
)
def test_bad_meshes_give_a_one_line_error(tmp_path, make, expected):
    make(tmp_path)
    result = occupancy_cli(*SMALL, "--mesh", "missing.obj", "--epochs", "1", "--output-dir", "out", cwd=tmp_path)
    assert result.returncode == 2
    assert expected in result.stderr and "Traceback" not in result.stderr
    assert not list((tmp_path / "out").glob("*/summary.json"))


def test_open_mesh_warns_and_uses_winding_numbers(tmp_path):
    sphere = trimesh.creation.icosphere(subdivisions=2)
    sphere.update_faces(list(range(len(sphere.faces) - 3)))  # punch a hole
    sphere.export(tmp_path / "open.obj")
    result = occupancy_cli(
        *SMALL, "--mesh", "open.obj", "--epochs", "1", "--optimizer", "adam", "--output-dir", "out", cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    assert "warning" in result.stderr.lower() and "watertight" in result.stderr
    (run_dir,) = (tmp_path / "out").iterdir()
    assert "winding" in json.loads((run_dir / "summary.json").read_text())["data"]["labels"]


@pytest.mark.shared_data
def test_armadillo_trains(shared_data, tmp_path):
    result = occupancy_cli(
        *SMALL,
        "--mesh",
        str(shared_data / "meshes" / "armadillo.off"),
        "--epochs",
        "3",
        "--optimizer",
        "adam",
        "--lr",
        "3e-3",
        "--schedule",
        "constant",  # six epochs: no room for a decay
        "--sigma",
        "0.3",
        "--output-dir",
        "out",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    (run_dir,) = (tmp_path / "out").iterdir()
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["data"]["watertight"] and summary["data"]["labels"].startswith("containment")
    assert summary["data"]["faces"] == 52_000
    with (run_dir / "metrics.csv").open() as handle:
        losses = [float(r["loss"]) for r in csv.DictReader(handle)]
    assert losses[-1] < losses[0]
