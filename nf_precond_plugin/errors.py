"""Errors caused by the user's input, and the one way every entry point reports them.

Library code raises ``UserInputError`` (a path, a file's content or an option, named in the
message) or ``TrainingDiverged``; entry points run inside ``reported_as_one_line(prog)``, which
prints one line on stderr and exits with status 2 (bad input) or 3 (training stopped: diverged, or
a peer process of a data-parallel run lost), without
a traceback. nerfstudio's ``ns-*`` commands are entry points too: the trainer wraps its own hooks.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager

EXIT_BAD_INPUT = 2
EXIT_TRAINING_STOPPED = 3
EXIT_INTERRUPTED = 130


class UserInputError(Exception):
    """Bad input: a path, a file's content or an option. The message names it and what was expected."""


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C during a run; the message says what was kept and the exact command that resumes it."""


class PeerProcessLost(RuntimeError):
    """A collective failed or timed out: another process of a data-parallel run died or hung."""


def _print_line(prog: str, kind: str, message: str) -> None:
    from rich.console import Console
    from rich.markup import escape

    colour = "yellow" if kind == "interrupted" else "red"
    # emoji=False: a message such as "--device cuda:x" must not turn ":x" into an emoji
    Console(stderr=True, highlight=False, soft_wrap=True, emoji=False).print(
        f"{prog}: [{colour}]{kind}:[/{colour}] {escape(message)}"
    )


@contextmanager
def reported_as_one_line(prog: str) -> Iterator[None]:
    """Turn the user's mistakes into one line on stderr and a non-zero exit (``SystemExit``)."""
    try:
        yield
    except UserInputError as error:
        _print_line(prog, "error", str(error))
        raise SystemExit(EXIT_BAD_INPUT) from None
    except (TrainingDiverged, PeerProcessLost) as error:
        _print_line(prog, "training stopped", str(error))
        raise SystemExit(EXIT_TRAINING_STOPPED) from None
    except RunInterrupted as stop:
        _print_line(prog, "interrupted", str(stop))
        raise SystemExit(EXIT_INTERRUPTED) from None
    except KeyboardInterrupt:
        _print_line(prog, "interrupted", "stopped before a run started; nothing was written")
        raise SystemExit(EXIT_INTERRUPTED) from None


def exit_code_of(main, *args) -> int:
    """Run ``main(*args)`` and return its exit status (0, or the code of a ``SystemExit``)."""
    try:
        main(*args)
    except SystemExit as stop:
        if stop.code is None or isinstance(stop.code, int):
            return stop.code or 0
        print(stop.code, file=sys.stderr)
        return 1
    return 0
