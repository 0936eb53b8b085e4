"""Random probes for Hutchinson-style curvature estimates.

A Rademacher probe v has i.i.d. entries in {-1, +1} with equal probability, so
E[v] = 0 and E[v vᵀ] = I. Hence E[v ⊙ Hv] = diag(H) and E[(Hv)²] = diag(H²).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

_BITS_PER_WORD = 31  # randint(0, 2**31) yields 31 independent fair bits per draw


def rademacher_like(tensors: Sequence[torch.Tensor], generator: torch.Generator | None = None) -> list[torch.Tensor]:
    """One Rademacher tensor per input, with the same shape, dtype and device.

    Draws from the global torch RNG of each tensor's device, or from ``generator`` (on its own
    device, then moved). Each random word supplies 31 signs: drawing one word per entry made the
    probe a visible part of an H·v step.
    """
    probes = []
    for tensor in tensors:
        device = tensor.device if generator is None else generator.device
        words = torch.randint(
            0,
            2**_BITS_PER_WORD,
            (-(-tensor.numel() // _BITS_PER_WORD), 1),
            generator=generator,
            device=device,
            dtype=torch.int32,
        ).to(tensor.device)
        shifts = torch.arange(_BITS_PER_WORD, device=tensor.device, dtype=torch.int32)
        bits = words.bitwise_right_shift(shifts).bitwise_and_(1).flatten()[: tensor.numel()]
        probes.append(bits.to(tensor.dtype).mul_(2).sub_(1).view(tensor.shape))
    return probes
