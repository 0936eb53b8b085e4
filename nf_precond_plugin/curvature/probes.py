"""Random probes for Hutchinson-style curvature estimates.

A Rademacher probe v has i.i.d. entries in {-1, +1} with equal probability, so
E[v] = 0 and E[v vᵀ] = I. Hence E[v ⊙ Hv] = diag(H) and E[(Hv)²] = diag(H²).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def rademacher_like(
    tensors: Sequence[torch.Tensor], generator: torch.Generator | None = None
) -> list[torch.Tensor]:
    """One Rademacher tensor per input, with the same shape, dtype and device.

    Draws from the global torch RNG of each tensor's device, or from ``generator``.
    """
    probes = []
    for tensor in tensors:
        bits = torch.randint(
            0, 2, tensor.shape, generator=generator, device=tensor.device, dtype=torch.int8
        )
        probes.append(bits.to(tensor.dtype).mul_(2).sub_(1))
    return probes
