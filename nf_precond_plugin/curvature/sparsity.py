"""How sparse a curvature sample is: the fraction of exactly-zero entries of H·v in a tensor.

    zero_fraction(h) = #{i : h_i = 0} / #h

Smooth activations give dense H·v (fraction ≈ 0); ReLU(+PE) gives sparse H·v, because ReLU'' = 0
almost everywhere and dead units contribute nothing (the paper's Theorems 4.2/4.3): a diagonal
preconditioner estimated from it is 0 there and says nothing about those coordinates.
(Hv)² and v ⊙ Hv are zero exactly where Hv is, so either estimator's sample may be passed.
"""

from __future__ import annotations

import torch

SPARSE_CURVATURE = 0.5
"""A tensor whose H·v has at least this fraction of exact zeros has sparse curvature."""


def zero_fraction(sample: torch.Tensor) -> torch.Tensor:
    """The fraction of exactly-zero entries, as a 0-dim tensor on the sample's device (no host sync)."""
    return (sample == 0).sum(dtype=torch.float32) / max(sample.numel(), 1)
