"""Each run writes into a new directory of its own, so no run overwrites another."""

from __future__ import annotations

import datetime as _dt
from pathlib import Path


def new_run_dir(base: Path | str, name: str) -> Path:
    """Create and return ``base/name-YYYYmmdd-HHMMSS[-k]``, never an existing directory."""
    base = Path(base)
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    base.mkdir(parents=True, exist_ok=True)
    for attempt in range(1000):
        candidate = base / (f"{name}-{stamp}" if attempt == 0 else f"{name}-{stamp}-{attempt}")
        try:
            candidate.mkdir()
        except FileExistsError:
            continue
        return candidate
    raise RuntimeError(f"could not create a new run directory under {base}")
