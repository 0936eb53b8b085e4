"""Process-level settings for the project's own entry points (CLIs, runners, the nerfstudio trainer).

Library users who only import the optimizers are left alone: nothing here runs on import.
"""

from __future__ import annotations

import torch


def enable_fast_cpu_math() -> bool:
    """Flush subnormal floats to zero on the CPU.

    x86 arithmetic on subnormals (|x| < 1.2e-38 in float32) takes a slow path. The fields produce
    none (their exponentials are cut to exactly 0 before that, ``fields.activations``), so library
    users get the fast path without this flag; the entry points set it anyway for whatever else
    may underflow (squares of tiny H·v entries, say). Flushing changes results only by values
    below that threshold. Returns whether the CPU supports it.
    """
    return bool(torch.set_flush_denormal(True))


def silence_create_graph_warning() -> None:
    """Hide torch's warning about ``backward(create_graph=True)`` reference cycles.

    The curvature optimizers detach every ``p.grad`` at the end of ``step()``, which breaks the
    param↔grad cycle the warning is about, so in our own loops it is noise.
    """
    import warnings

    warnings.filterwarnings("ignore", message=r"Using backward\(\) with create_graph=True", category=UserWarning)


def configure_entry_point() -> None:
    """What every project CLI, runner and trainer does first."""
    import warnings

    enable_fast_cpu_math()
    silence_create_graph_warning()
    # numpy notices the flushing when it first inspects float limits; that is the point of it
    warnings.filterwarnings("ignore", message="The value of the smallest subnormal", category=UserWarning)
