"""Each run writes into a new directory of its own, so no run overwrites another."""

from __future__ import annotations

import datetime as _dt
from pathlib import Path

from nf_precond_plugin.errors import UserInputError


def new_run_dir(base: Path | str, name: str, option: str = "--output-dir") -> Path:
    """Create and return ``base/name-YYYYmmdd-HHMMSS[-k]``, never an existing directory.

    A ``base`` that cannot be created or written to is the user's input: ``UserInputError``
    naming ``option`` and the path.
    """
    base = Path(base)
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    try:
        base.mkdir(parents=True, exist_ok=True)
        for attempt in range(1000):
            candidate = base / (f"{name}-{stamp}" if attempt == 0 else f"{name}-{stamp}-{attempt}")
            try:
                candidate.mkdir()
            except FileExistsError:
                continue
            return candidate
    except OSError as error:
        reason = error.strerror or type(error).__name__
        raise UserInputError(f"{option} {base}: cannot create a run directory there ({reason})") from None
    raise UserInputError(f"{option} {base}: 1000 run directories named {name}-{stamp}* already exist")
