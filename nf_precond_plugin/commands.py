"""Commands the project prints for the user to run next, written so that they work as printed.

A user who ran ``make demo`` has the project in ``.venv`` but not on ``PATH``: a printed
``ns-train …`` would be "command not found". So every printed command names the program by its
path in the environment the current process runs in (``.venv/bin/ns-train`` from the project
root), relative to the working directory where that is shorter, and quotes its arguments for a
POSIX shell.
"""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path


def _shown(path: Path) -> str:
    """``path`` relative to the working directory when it lies below it, else absolute."""
    try:
        relative = path.relative_to(Path.cwd())
    except ValueError:
        return str(path)
    return str(relative) if str(relative).startswith(".") or os.sep in str(relative) else f"./{relative}"


def program_path(program: str) -> str:
    """How to call ``program`` (``python``, ``ns-train``, ``nf-precond``, …) from this environment."""
    bin_dir = Path(sys.executable).parent
    if program == "python":
        return _shown(bin_dir / Path(sys.executable).name)
    beside = bin_dir / program
    if beside.exists():
        return _shown(beside)
    return program  # not part of this environment: whatever the user's PATH finds


def printed_command(program: str, *args: object) -> str:
    """A shell line that runs ``program args…`` as printed, from the current working directory."""
    return shlex.join([program_path(program), *(str(arg) for arg in args)])
