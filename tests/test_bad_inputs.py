"""Bad image and mesh files given to the standalone CLIs: one plain line naming the file, exit
status 2, no traceback, and no run directory (the data is loaded before the run directory exists)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
FAST = ["--epochs", "1", "--optimizer", "adam", "--hidden-features", "16", "--num-layers", "2"]
IMAGE_FAST = [*FAST, "--size", "8", "--batch-size", "16"]
MESH_FAST = [*FAST, "--points-per-epoch", "3000", "--batch-size", "1000", "--heldout-points", "1000"]
PNG_BYTES = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x04\x00\x00\x00\x04\x08\x02\x00\x00\x00"
# A TIFF header whose first image directory is at offset 0: a TIFF file without a single page.
TIFF_WITHOUT_PAGES = b"II*\x00\x00\x00\x00\x00"
# Messages of Python internals that used to end these lines.
INTERNAL = ("need at least one array", "values to unpack", "ValueError", "OSError", "backend")


def _text(path: Path, text: str) -> None:
    path.write_text(text)


def _bytes(content: bytes) -> Callable[[Path], None]:
    return lambda path: path.write_bytes(content)


def _float_tiff(bad: float) -> Callable[[Path], None]:
    def write(path: Path) -> None:
        image = np.full((6, 6, 3), 0.5, dtype=np.float32)
        image[2, 3, 1] = bad
        iio.imwrite(path, image, extension=".tiff")

    return write


def _npy(path: Path) -> None:
    with path.open("wb") as handle:
        np.save(handle, np.full((6, 6, 3), np.nan, dtype=np.float32))


def _write_png(path: Path) -> None:
    iio.imwrite(path, np.zeros((4, 4, 3), dtype=np.uint8), extension=".png")


# name -> (how to make it, words the line must hold)
IMAGE_CASES: dict[str, tuple[Callable[[Path], None], tuple[str, ...]]] = {
    "text.png": (lambda path: _text(path, "hello, not an image\n"), ("not an image imageio can decode", "PNG")),
    "empty.png": (_bytes(b""), ("empty", "expected an image file")),
    "no_pixels.tiff": (_bytes(TIFF_WITHOUT_PAGES), ("no pixels",)),
    "nan.tiff": (_float_tiff(np.nan), ("1 of 108 colour values are NaN or infinite", "finite")),
    "inf.tiff": (_float_tiff(np.inf), ("NaN or infinite",)),
    "nan.npy": (_npy, ("not an image imageio can decode", "NumPy .npy")),
    "folder.png": (lambda path: path.mkdir(), ("expected an image file", "directory")),
    "missing.png": (lambda path: None, ("no such image file",)),
}
MESH_CASES: dict[str, tuple[Callable[[Path], None], tuple[str, ...]]] = {
    "png.off": (_write_png, ("not a readable OFF mesh", "expected an 'OFF' header", "PNG image")),
    "empty.off": (_bytes(b""), ("empty", "expected a mesh file")),
    "no_faces.off": (lambda path: _text(path, "OFF\n3 0 0\n0 0 0\n1 0 0\n0 1 0\n"), ("3 vertices but no faces",)),
    "text.obj": (lambda path: _text(path, "hello\n"), ("not a readable OBJ mesh", "no triangles")),
    "point.obj": (lambda path: _text(path, "v 0 0 0\nv 0 0 0\nv 0 0 0\nf 1 2 3\n"), ("degenerate",)),
    "image.png": (_write_png, ("not a mesh format trimesh reads", ".png")),
    "folder.off": (lambda path: path.mkdir(), ("expected a mesh file", "directory")),
}


def cli(script: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "COLUMNS": "80"}
    return subprocess.run(
        [sys.executable, str(ROOT / "standalone" / script), *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=600,
    )


def assert_one_line_error(result: subprocess.CompletedProcess, prog: str, name: str, words, out: Path) -> None:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1, result.stderr
    (line,) = lines
    assert line.startswith(f"{prog}: error: {name}:"), line
    assert "Traceback" not in result.stderr
    for word in words:
        assert word in line, line
    for internal in INTERNAL:
        assert internal not in line, line
    assert not out.exists() or not any(out.iterdir()), f"a run directory was created: {list(out.iterdir())}"


@pytest.mark.parametrize("name", sorted(IMAGE_CASES))
def test_bad_image_is_one_plain_line_and_no_run_directory(tmp_path, name):
    make, words = IMAGE_CASES[name]
    make(tmp_path / name)
    result = cli("image.py", *IMAGE_FAST, "--image", name, "--output-dir", "out", cwd=tmp_path)
    assert_one_line_error(result, "image.py", name, words, tmp_path / "out")


@pytest.mark.parametrize("name", sorted(MESH_CASES))
def test_bad_mesh_is_one_plain_line_and_no_run_directory(tmp_path, name):
    make, words = MESH_CASES[name]
    make(tmp_path / name)
    result = cli("occupancy.py", *MESH_FAST, "--mesh", name, "--output-dir", "out", cwd=tmp_path)
    assert_one_line_error(result, "occupancy.py", name, words, tmp_path / "out")


@pytest.mark.parametrize(
    "script, option, name, content",
    [("image.py", "--image", "locked.png", PNG_BYTES), ("occupancy.py", "--mesh", "locked.off", b"OFF\n")],
)
def test_unreadable_file_is_one_plain_line(tmp_path, script, option, name, content):
    path = tmp_path / name
    path.write_bytes(content)
    path.chmod(0)
    try:
        if os.access(path, os.R_OK):
            pytest.skip("this user can read a file with mode 000 (root)")
        fast = IMAGE_FAST if script == "image.py" else MESH_FAST
        result = cli(script, *fast, option, name, "--output-dir", "out", cwd=tmp_path)
        words = ("cannot read the", "Permission denied")
        assert_one_line_error(result, script, name, words, tmp_path / "out")
    finally:
        path.chmod(0o600)
