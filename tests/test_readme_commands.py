"""The README's first-hour commands, pasted as printed from the project root, work.

Each `.venv/bin/...` line of the README's "Use it" section runs with its placeholders (photo.png,
bunny.obj) replaced by small generated files and, appended, options that shrink the run (flags
given later win). NeRF lines are covered by tests/nerf (they need a scene and minutes); GPU lines
must fail in one line on a machine without CUDA.
"""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SHRINK = {
    "standalone/image.py": ["--epochs", "1", "--size", "16", "--hidden-features", "8", "--num-layers", "2",
                            "--batch-size", "64"],
    "standalone/occupancy.py": ["--epochs", "1", "--points-per-epoch", "2000", "--batch-size", "1000",
                                "--heldout-points", "300", "--hidden-features", "8", "--num-layers", "2",
                                "--mesh-resolution", "16"],
    "advise image": ["--probe-steps", "4", "--size", "16", "--hidden-features", "8", "--num-layers", "3"],
}  # fmt: skip


def readme_lines() -> list[str]:
    text = (ROOT / "README.md").read_text()
    first_hour = text[text.index("## Use it") : text.index("# Reference")]
    blocks = re.findall(r"```bash\n(.*?)```", first_hour, flags=re.S)
    lines = [line.split("  #")[0].strip() for block in blocks for line in block.splitlines()]
    return [line for line in lines if line.startswith(".venv/bin/")]


def test_the_readme_shows_the_three_uses_with_environment_paths():
    lines = readme_lines()
    assert any("ns-train gaussian-esgd-cpu" in line for line in lines)
    assert any("standalone/image.py" in line for line in lines)
    assert any("standalone/occupancy.py" in line for line in lines)


@pytest.fixture(scope="module")
def placeholders(tmp_path_factory) -> dict[str, Path]:
    import imageio.v3 as iio
    import trimesh

    root = tmp_path_factory.mktemp("readme")
    y, x = np.mgrid[0:24, 0:24] / 24.0
    iio.imwrite(root / "photo.png", (np.stack([x, y, x * y], -1) * 255).astype(np.uint8))
    trimesh.creation.icosphere(subdivisions=2).export(root / "bunny.obj")
    return {"photo.png": root / "photo.png", "bunny.obj": root / "bunny.obj", "root": root}


@pytest.mark.parametrize(
    "line", [line for line in readme_lines() if "ns-train" not in line and "advise nerf" not in line]
)
def test_a_readme_line_works_as_printed(line, placeholders, tmp_path):
    words = shlex.split(line)
    if "--resume" in words:
        pytest.skip("resume is tested end to end in tests/test_resume.py")
    words = [str(placeholders.get(word, word)) for word in words]
    key = next((k for k in SHRINK if k in line), None)
    extra = SHRINK.get(key, []) + (["--output-dir", str(tmp_path / "out")] if "standalone/" in line else [])
    result = subprocess.run(words + extra, cwd=ROOT, capture_output=True, text=True, timeout=600)
    if "cuda" in words and not torch.cuda.is_available():
        lines = [text for text in result.stderr.splitlines() if text.strip()]
        assert result.returncode == 2 and len(lines) == 1 and "cuda" in lines[0].lower(), result.stderr
        return
    assert result.returncode == 0, f"{line}\n{result.stderr[-3000:]}"


def test_the_readme_constructor_signatures_are_the_code_s():
    """Each optimizer signature the README lists (``- `Name(params, k=v, …)` ``) names every
    setting of the constructor with its default, and nothing else."""
    import ast
    import inspect

    from nf_precond_plugin import optim

    listed = re.findall(r"^- `(\w+)\(params, (.*?)\)`", (ROOT / "README.md").read_text(), flags=re.M)
    assert {name for name, _ in listed} >= {"ESGD", "PaperESGD", "ESGDMax", "AdaHessian"}
    for name, arguments in listed:
        call = ast.parse(f"f({arguments})", mode="eval").body
        readme = {keyword.arg: ast.literal_eval(keyword.value) for keyword in call.keywords}
        parameters = inspect.signature(getattr(optim, name)).parameters
        code = {k: p.default for k, p in parameters.items() if k not in ("params", "process_group", "probe_seed")}
        assert readme == code, name
