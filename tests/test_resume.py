"""Resume from the run's own record: Ctrl-C, then `--resume DIR` alone, loses nothing and changes nothing."""

from __future__ import annotations

import csv
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
import yaml
from test_image_task import ROOT, image_cli, only_run_dir

# slow enough that a SIGINT sent when the second optimizer's first row appears lands mid-run
OPTIONS = ["--size", "48", "--hidden-features", "48", "--num-layers", "3", "--batch-size", "64", "--sigma", "0.2"]
RUN = [*OPTIONS, "--compare", "adam,esgd", "--epochs", "30", "--seed", "3"]
TIMINGS = {"wall_seconds", "optimizer_step_seconds"}


def photo(path: Path) -> Path:
    """A 40 × 40 target that is not the embedded default, so that losing --image would show."""
    import imageio.v3 as iio

    y, x = np.mgrid[0:40, 0:40] / 40.0
    image = np.stack([np.sin(6 * x), np.cos(5 * y), x * y], axis=-1) * 0.5 + 0.5
    iio.imwrite(path, (image * 255).astype(np.uint8))
    return path


def rows(run_dir: Path) -> list[dict[str, str]]:
    with (run_dir / "metrics.csv").open() as handle:
        return [{k: v for k, v in row.items() if k not in TIMINGS} for row in csv.DictReader(handle)]


def test_sigint_then_resume_alone_equals_an_uninterrupted_run(tmp_path):
    image = photo(tmp_path / "target.png")
    reference = image_cli(*RUN, "--image", str(image), "--output-dir", "reference", cwd=tmp_path)
    assert reference.returncode == 0, reference.stderr
    reference_dir = only_run_dir(tmp_path / "reference")

    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    command = [sys.executable, str(ROOT / "standalone" / "image.py"), *RUN, "--image", str(image)]
    process = subprocess.Popen(
        [*command, "--output-dir", "run"], cwd=tmp_path, env=env, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and process.poll() is None:
        metrics = list((tmp_path / "run").glob("*/metrics.csv"))
        if metrics and ",esgd," in f",{metrics[0].read_text()}".replace("\n", ","):
            break
        time.sleep(0.02)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    run_dir = only_run_dir(tmp_path / "run")
    assert not (run_dir / "summary.json").exists(), "the interrupt must land mid-run for this test to mean anything"
    lines = [line for line in stderr.splitlines() if "interrupted:" in line]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    record_before = (run_dir / "config.yaml").read_bytes()
    rows_before = rows(run_dir)
    assert {row["optimizer"] for row in rows_before} == {"adam", "esgd"}

    printed = re.search(r"resume with: (.+)$", lines[0]).group(1)
    assert printed.split()[-2:] == ["--resume", str(run_dir.relative_to(tmp_path))] or printed.endswith(str(run_dir))
    resumed = subprocess.run(printed, shell=True, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr

    assert (run_dir / "config.yaml").read_bytes() == record_before  # the record is never rewritten
    resumed_rows = rows(run_dir)
    assert resumed_rows[: len(rows_before)] == rows_before  # every row kept
    assert resumed_rows == rows(reference_dir)  # adam's and esgd's, bit for bit (as printed)
    for name in ("adam", "esgd"):
        got = torch.load(run_dir / "checkpoints" / f"{name}.pt", weights_only=True)["model"]
        want = torch.load(reference_dir / "checkpoints" / f"{name}.pt", weights_only=True)["model"]
        assert all(torch.equal(got[key], want[key]) for key in want), name


def test_a_flag_that_contradicts_the_record_is_refused_in_one_line(tmp_path):
    first = image_cli(*OPTIONS, "--epochs", "1", "--output-dir", "out", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    run_dir = only_run_dir(tmp_path / "out")
    (run_dir / "summary.json").unlink()  # make it look interrupted, so only the flag can be the problem
    refused = image_cli("--resume", str(run_dir), "--epochs", "5", cwd=tmp_path)
    assert refused.returncode == 2
    lines = [line for line in refused.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "--epochs 5" in lines[0] and "--epochs 1" in lines[0], refused.stderr
    same = image_cli("--resume", str(run_dir), "--epochs", "1", "--optimizer", "esgd", cwd=tmp_path)
    assert same.returncode == 0, same.stderr  # repeating the recorded values is fine


def test_resume_of_a_directory_without_a_record_is_one_line(tmp_path):
    (tmp_path / "empty" / "checkpoints").mkdir(parents=True)
    result = image_cli("--resume", str(tmp_path / "empty"), cwd=tmp_path)
    assert result.returncode == 2 and "config.yaml" in result.stderr and "Traceback" not in result.stderr


def test_a_run_with_a_relative_image_resumes_from_another_directory(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    photo(tmp_path / "a" / "target.png")
    first = image_cli(*OPTIONS, "--epochs", "1", "--image", "target.png", "--output-dir", "out", cwd=tmp_path / "a")
    assert first.returncode == 0, first.stderr
    run_dir = only_run_dir(tmp_path / "a" / "out")
    (run_dir / "summary.json").unlink()
    resumed = image_cli("--resume", str(run_dir), cwd=tmp_path / "b")
    assert resumed.returncode == 0, resumed.stderr  # the record holds the image's absolute path
    again = image_cli("--resume", str(run_dir), "--image", str(tmp_path / "a" / "target.png"), cwd=tmp_path / "b")
    assert "already complete" in again.stderr  # the same file, given absolute: no contradiction


def test_the_record_pins_the_resolved_lr_and_schedule(tmp_path):
    """A run records the lr and schedule it resolved, so a resume keeps them even if a default
    changes: another value is refused. A record that left them unset (written before they were
    pinned) takes them from the flags instead."""
    first = image_cli(*OPTIONS, "--epochs", "1", "--output-dir", "out", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    run_dir = only_run_dir(tmp_path / "out")
    (run_dir / "summary.json").unlink()
    record_path = run_dir / "config.yaml"
    record = yaml.safe_load(record_path.read_text())
    assert record["lr"] is not None and record["schedule"] is not None
    other = "constant" if record["schedule"] != "constant" else "cosine"
    refused = image_cli("--resume", str(run_dir), "--schedule", other, cwd=tmp_path)
    assert refused.returncode == 2 and f"--schedule {other}" in refused.stderr, refused.stderr
    refused = image_cli("--resume", str(run_dir), "--lr", f"{record['lr'] * 3:g}", cwd=tmp_path)
    assert refused.returncode == 2 and "--lr" in refused.stderr, refused.stderr
    # an older record: both unset; the run resumes with them given as flags
    record_path.write_text(yaml.safe_dump({**record, "lr": None, "schedule": None}, sort_keys=False))
    flags = ["--lr", f"{record['lr']:g}", "--schedule", record["schedule"]]
    resumed = image_cli("--resume", str(run_dir), "--epochs", "2", *flags, cwd=tmp_path)
    assert resumed.returncode == 2 and "--epochs 2" in resumed.stderr  # other options are still checked
    resumed = image_cli("--resume", str(run_dir), *flags, cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
