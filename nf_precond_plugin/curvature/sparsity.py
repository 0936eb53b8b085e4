"""How sparse a curvature sample is: the fraction of exactly-zero entries of H·v in a tensor.

    zero_fraction(h) = #{i : h_i = 0} / #h

Smooth activations give dense H·v (fraction ≈ 0); ReLU(+PE) gives sparse H·v, because ReLU'' = 0
almost everywhere and dead units contribute nothing (the paper's Theorems 4.2/4.3): a diagonal
preconditioner estimated from it is 0 there and says nothing about those coordinates.
(Hv)² and v ⊙ Hv are zero exactly where Hv is, so either estimator's sample may be passed.

"Sparse" is decided at two scales, with two thresholds (and a zero is counted with one tolerance):

- ``SPARSE_TENSOR`` (0.5), per tensor, by the clipped ESGD at each H·v step;
- ``SPARSE_FIELD`` (0.1), over all of a field's parameters together, by ``nf-precond advise``;
- ``ZERO_TOLERANCE`` (0), what counts as a zero in the sparsity diagnostic.
"""

from __future__ import annotations

import torch

SPARSE_TENSOR = 0.5
"""A tensor whose latest H·v has at least this fraction of exact zeros has sparse curvature: the
clipped ESGD gives it Adam's normalised step instead of the curvature-preconditioned one.

A per-tensor decision, so a majority: the estimate D of such a tensor is zero on most of its
coordinates and preconditions at most a minority of them; a tensor with fewer zeros still keeps
the curvature where it has it."""

SPARSE_FIELD = 0.1
"""A field whose H·v, over all its parameters together, has at least this fraction of exact zeros
counts as sparse: ``nf-precond advise`` then recommends Adam instead of ESGD.

Lower than ``SPARSE_TENSOR`` because it is a mean over every tensor of the field, in which the
zeros of the sparse tensors are diluted by the denser ones, and because it only has to separate
two populations: smooth fields measure ≈ 0, ReLU-PE fields 0.3–0.7."""

ZERO_TOLERANCE = 0.0
"""The default relative tolerance τ of the H·v sparsity diagnostic: an entry with |h_i| ≤ τ·max|h|
counts as zero. A numerical tolerance (what counts as a zero), not a sparsity threshold (how many
zeros make a tensor sparse); 0 counts exact zeros only, as ``zero_fraction`` and both thresholds
above do."""


def zero_fraction(sample: torch.Tensor) -> torch.Tensor:
    """The fraction of exactly-zero entries, as a 0-dim tensor on the sample's device (no host sync)."""
    return (sample == 0).sum(dtype=torch.float32) / max(sample.numel(), 1)
