"""Accumulators that fold per-step curvature samples x into a running estimate a, in place.

- EMA: a ← β a + (1 − β) x. Started from 0, E[a_n] = (1 − βⁿ) E[x], hence the debiasing 1/(1 − βⁿ).
- running max: a ← max(β a, x), an infinity-norm accumulator as in Adamax, decayed by β.
"""

from __future__ import annotations

import torch


def ema_(accumulator: torch.Tensor, sample: torch.Tensor, beta: float) -> torch.Tensor:
    return accumulator.mul_(beta).add_(sample, alpha=1.0 - beta)


def decayed_max_(accumulator: torch.Tensor, sample: torch.Tensor, beta: float) -> torch.Tensor:
    return torch.maximum(accumulator.mul_(beta), sample, out=accumulator)


def ema_debias(beta: float, count: int) -> float:
    """1 − β^count, the mass an EMA started at zero has gathered after ``count`` samples."""
    return 1.0 - beta**count


def ema_foreach_(accumulators: list[torch.Tensor], samples: list[torch.Tensor], beta: float) -> None:
    """``ema_`` over lists in a few fused multi-tensor kernels (as torch.optim's foreach paths)."""
    torch._foreach_mul_(accumulators, beta)
    torch._foreach_add_(accumulators, samples, alpha=1.0 - beta)


def decayed_max_foreach_(accumulators: list[torch.Tensor], samples: list[torch.Tensor], beta: float) -> None:
    """``decayed_max_`` over lists in fused multi-tensor kernels."""
    torch._foreach_mul_(accumulators, beta)
    torch._foreach_maximum_(accumulators, samples)


def clip_foreach_(updates: list[torch.Tensor], limit: float) -> None:
    """u ← clip(u, −ρ, ρ) entrywise (Sophia's clip): where the curvature is tiny or not yet known,
    a preconditioned step m/√D would be huge; clipped, it becomes a sign-momentum step of size ρ."""
    torch._foreach_clamp_min_(updates, -limit)
    torch._foreach_clamp_max_(updates, limit)
