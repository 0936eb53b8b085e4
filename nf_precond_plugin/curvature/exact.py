"""Exact diagonal preconditioners of a full Hessian and condition numbers: the oracles the
stochastic estimators are measured against (paper §4.1, Eq. 4).

    D_E = diag(‖H_{i,:}‖₂)   (equilibration, row 2-norms; what E[(Hv)²] = diag(H²) estimates)
    D_J = |diag H|           (Jacobi; what |E[v ⊙ Hv]| estimates)
    A   = D^{-1/2} H D^{-1/2}                     (the preconditioned Hessian, a congruence)
    κ_r(A) = |λ|_(1) / |λ|_(r)                    (largest over r-th largest |eigenvalue|)

Each diagonal is damped as d_i ← d_i + δ·max_j d_j (relative δ = ``DAMPING``), only so that no
division by zero can occur. κ_r compares matrices at a fixed count r of eigenvalues rather than
at a tolerance: a congruence with D > 0 preserves rank and inertia (Sylvester's law), so the same
number of eigenvalues exists in H and in every D^{-1/2} H D^{-1/2}.
"""

from __future__ import annotations

import math

import torch

DAMPING = 1e-10
"""Relative damping δ of both diagonal preconditioners: d_i ← d_i + δ·max_j d_j."""

PRECONDITIONERS: tuple[str, ...] = ("none", "equilibration", "jacobi")


def _damped(d: torch.Tensor, damping: float) -> torch.Tensor:
    scale = d.max()
    if not scale > 0:  # H == 0: every direction is equally (un)curved
        return torch.ones_like(d)
    return d + damping * scale


def equilibration_diagonal(hessian: torch.Tensor, damping: float = DAMPING) -> torch.Tensor:
    """Diagonal of D_E: the 2-norm of each row of H, plus ``damping`` · the largest row norm."""
    return _damped(torch.linalg.vector_norm(hessian, dim=1), damping)


def jacobi_diagonal(hessian: torch.Tensor, damping: float = DAMPING) -> torch.Tensor:
    """Diagonal of D_J: |H_ii|, plus ``damping`` · max_i |H_ii|."""
    return _damped(hessian.diagonal().abs(), damping)


def preconditioner_diagonal(hessian: torch.Tensor, kind: str, damping: float = DAMPING) -> torch.Tensor:
    if kind == "none":
        return torch.ones(hessian.shape[0], dtype=hessian.dtype, device=hessian.device)
    if kind == "equilibration":
        return equilibration_diagonal(hessian, damping)
    if kind == "jacobi":
        return jacobi_diagonal(hessian, damping)
    raise ValueError(f"Unknown preconditioner {kind!r}; expected one of {', '.join(PRECONDITIONERS)}")


def congruence(hessian: torch.Tensor, diagonal: torch.Tensor) -> torch.Tensor:
    """D^{-1/2} H D^{-1/2} for D = diag(``diagonal``) > 0 (Eq. 4), symmetrised against rounding."""
    s = diagonal.rsqrt()
    a = hessian * s[:, None] * s[None, :]
    return 0.5 * (a + a.T)


def sorted_magnitudes(matrix: torch.Tensor) -> torch.Tensor:
    """|eigenvalues| of a symmetric matrix, largest first."""
    return torch.linalg.eigvalsh(matrix).abs().sort(descending=True).values


def kappa_top_r(magnitudes: torch.Tensor, r: int) -> float:
    """κ_r = |λ|_(1) / |λ|_(r) from eigenvalue magnitudes sorted largest first (r is 1-based)."""
    if not 1 <= r <= magnitudes.numel():
        raise ValueError(f"r = {r} outside 1..{magnitudes.numel()}")
    top, rth = float(magnitudes[0]), float(magnitudes[r - 1])
    return top / rth if rth > 0 else math.inf


def spectral_spread(magnitudes: torch.Tensor, r: int) -> float:
    """|λ|_(1) / geometric mean of |λ|_(1..r): tolerance-free spread of the top-r spectrum."""
    top = magnitudes[:r]
    if not float(top[-1]) > 0:
        return math.inf
    return float(top[0] / torch.exp(torch.log(top).mean()))


def kappa(matrix: torch.Tensor, r: int) -> float:
    """κ_r of a symmetric matrix (see the module docstring)."""
    return kappa_top_r(sorted_magnitudes(matrix), r)
