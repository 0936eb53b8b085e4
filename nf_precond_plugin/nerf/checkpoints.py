"""Checkpoint hygiene for nerfstudio runs: atomic writes, and states that ``weights_only`` loads.

nerfstudio's exponential-decay scheduler computes learning rates with numpy, so they land in the
optimizer's and scheduler's state as numpy.float64, which ``torch.load(weights_only=True)`` — the
default since torch 2.6, used by ns-eval/ns-render/ns-viewer — refuses to unpickle.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch


def without_numpy_scalars(value: Any) -> Any:
    """``value`` with numpy scalars replaced by Python numbers, recursively."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        return {key: without_numpy_scalars(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(without_numpy_scalars(item) for item in value)
    return value


def save_atomically(state: dict[str, Any], path: Path, scratch_dir: Path) -> None:
    """Write ``state`` to ``path`` through a temporary file in ``scratch_dir``, then rename.

    The temporary file lives outside the checkpoint folder: nerfstudio picks the latest step by
    parsing every file name there, and a half-written one must never be a candidate.
    """
    partial = scratch_dir / f".{path.name}.partial"
    torch.save(without_numpy_scalars(state), partial)
    os.replace(partial, path)


def keep_only(path: Path) -> None:
    """Delete every other ``*.ckpt`` beside ``path`` (nerfstudio's ``save_only_latest_checkpoint``)."""
    for old in path.parent.glob("*.ckpt"):
        if old != path:
            old.unlink()
