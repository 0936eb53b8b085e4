"""Per-probe curvature estimates from a Rademacher probe v and its product h = H v.

- equilibration: e = h², with E[e] = diag(H²) = ‖H_i,:‖², so √E[e] is D^E (Dauphin et al., 2015).
- Jacobi (Hutchinson): z = v ⊙ h, with E[z] = diag(H), so |E[z]| is D^J.

For ±1 probes (v ⊙ h)² = h², so squaring the Jacobi sample gives back equilibration: a Jacobi
preconditioner must average the *signed* z before taking any magnitude.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

Estimator = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def equilibration_sample(probe: torch.Tensor, hvp: torch.Tensor) -> torch.Tensor:
    """(Hv)²: an unbiased sample of diag(H²)."""
    del probe  # the squared product no longer depends on the probe's signs
    return hvp.square()


def jacobi_sample(probe: torch.Tensor, hvp: torch.Tensor) -> torch.Tensor:
    """v ⊙ Hv: an unbiased sample of diag(H); signed, so average before taking |·|."""
    return probe * hvp


ESTIMATORS: dict[str, Estimator] = {
    "equilibration": equilibration_sample,
    "jacobi": jacobi_sample,
}
