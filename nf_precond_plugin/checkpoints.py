"""Checkpoints of every loop of the project (the standalone runner and the nerfstudio trainer).

Written atomically, through a temporary file and a rename, so that a crash or Ctrl-C never leaves
half of one; holding only tensors and plain Python values; read back by ``load_checkpoint`` with
``torch.load(weights_only=True)``, which unpickles nothing else, and which turns an unreadable file
into one ``UserInputError`` naming it.

nerfstudio's exponential-decay scheduler computes learning rates with numpy, so they land in the
optimizer's and scheduler's state as numpy.float64, which ``weights_only`` — torch's default since
2.6, used by ns-eval/ns-render/ns-viewer — refuses to unpickle: ``save_atomically`` stores them as
Python numbers.

Pure torch and numpy: no nerfstudio import.
"""

from __future__ import annotations

import os
import pickle
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nf_precond_plugin.errors import UserInputError

_UNREADABLE = (OSError, EOFError, RuntimeError, ValueError, TypeError, KeyError, IndexError, pickle.UnpicklingError)
"""What ``torch.load`` raises on a truncated, garbage or refused file (OSError: missing or unreadable)."""


def without_numpy_scalars(value: Any) -> Any:
    """``value`` with numpy scalars replaced by Python numbers, recursively through dicts, lists, tuples."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        return {key: without_numpy_scalars(item) for key, item in value.items()}
    if isinstance(value, list):
        return [without_numpy_scalars(item) for item in value]
    if isinstance(value, tuple):
        items = [without_numpy_scalars(item) for item in value]
        return type(value)(*items) if hasattr(value, "_fields") else type(value)(items)  # namedtuples too
    return value


def save_atomically(state: dict[str, Any], path: Path, scratch_dir: Path | None = None) -> None:
    """Write ``state`` to ``path`` through a temporary file in ``scratch_dir``, then rename.

    ``scratch_dir`` must be on the same file system as ``path``; by default it is ``path``'s folder
    and the temporary file has a hidden name. The nerfstudio trainer passes its run folder instead:
    nerfstudio picks the latest step by parsing every file name in the checkpoint folder, and a
    half-written one must never be a candidate. If writing fails (or is interrupted), the temporary
    file is removed and ``path`` keeps its previous content.
    """
    path = Path(path)
    partial = Path(scratch_dir if scratch_dir is not None else path.parent) / f".{path.name}.partial"
    try:
        with partial.open("wb") as handle:
            torch.save(without_numpy_scalars(state), handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> Any:
    """The content of the checkpoint at ``path``, unpickled with ``weights_only=True``.

    Raises ``UserInputError`` naming ``path`` if it is missing, unreadable, truncated, not a torch
    checkpoint, or holds objects other than tensors and plain Python values.
    """
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except _UNREADABLE as error:
        raise UserInputError(
            f"{path}: not a usable checkpoint ({_reason(error)}); "
            "expected one saved by nf-precond, holding tensors and plain Python values only"
        ) from None


def _reason(error: BaseException) -> str:
    """Why ``torch.load`` failed, in a few words (its own messages are paragraphs)."""
    if isinstance(error, OSError) and error.strerror:
        return error.strerror.lower()
    refused = re.search(r"Unsupported global: GLOBAL (\S+)", str(error))
    if refused:
        return f"it holds a {refused.group(1)}, which weights_only loading refuses"
    return "truncated, or not a torch checkpoint"


def keep_only(path: Path, pattern: str = "*.ckpt") -> None:
    """Delete every other file matching ``pattern`` beside ``path`` (nerfstudio's ``save_only_latest_checkpoint``)."""
    path = Path(path)
    for old in path.parent.glob(pattern):
        if old != path:
            old.unlink()
