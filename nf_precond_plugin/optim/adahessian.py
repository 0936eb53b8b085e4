"""AdaHessian: Adam's momentum over a Hessian-diagonal preconditioner from Hutchinson probes.

With h = H v (Rademacher v), t the step (from 1), n the number of curvature samples, k = hessian_power:
    m ← β₁ m + (1 − β₁) g
    estimator="equilibration" (AdaHessian(E), what AdaHessian's own code computes):
        V ← β₂ V + (1 − β₂) h²,        denom = (√(V / (1 − β₂ⁿ)))^k + ε     ≈ (D^E)^k
    estimator="jacobi" (AdaHessian(J)):
        Z ← β₂ Z + (1 − β₂) v ⊙ h,     denom = |Z / (1 − β₂ⁿ)|^k + ε        ≈ (D^J)^k
    θ ← θ − lr · (m / (1 − β₁^t) / denom + wd · θ)
The Jacobi average is signed: |mean(v ⊙ h)| estimates |diag H|, whereas mean(|v ⊙ h|) would not.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Literal

import torch

from nf_precond_plugin.curvature import ema_, ema_debias
from nf_precond_plugin.optim.base import _STEP_KEY, CurvatureOptimizer, validate_common


class AdaHessian(CurvatureOptimizer):
    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 0.15,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-4,
        weight_decay: float = 0.0,
        estimator: Literal["equilibration", "jacobi"] = "equilibration",
        hessian_power: float = 1.0,
        update_d_every: int = 1,
        d_warmup: int = 1,
    ) -> None:
        validate_common(lr, betas, eps, weight_decay, update_d_every, d_warmup)
        if estimator not in ("equilibration", "jacobi"):
            raise ValueError(f"Invalid estimator: {estimator!r} (expected 'equilibration' or 'jacobi')")
        if not 0.0 <= hessian_power <= 1.0:
            raise ValueError(f"Invalid hessian_power: {hessian_power} (expected 0 <= hessian_power <= 1)")
        defaults = dict(
            lr=lr,
            betas=tuple(betas),
            eps=eps,
            weight_decay=weight_decay,
            estimator=estimator,
            hessian_power=hessian_power,
            update_d_every=update_d_every,
            d_warmup=d_warmup,
        )
        super().__init__(params, defaults)

    def _update_group(self, group, params, grads, samples) -> None:
        live, exp_avgs, curvatures, counts = self._moment_state(params, samples is not None)
        beta1, beta2 = group["betas"]
        adahessian(
            [params[i] for i in live],
            [grads[i] for i in live],
            exp_avgs,
            curvatures,
            None if samples is None else [samples[i] for i in live],
            counts,
            step=group[_STEP_KEY] + 1,
            lr=group["lr"],
            beta1=beta1,
            beta2=beta2,
            eps=group["eps"],
            weight_decay=group["weight_decay"],
            estimator=group["estimator"],
            hessian_power=group["hessian_power"],
        )


def adahessian(
    params: list[torch.Tensor],
    grads: list[torch.Tensor],
    exp_avgs: list[torch.Tensor],
    curvatures: list[torch.Tensor],
    samples: list[torch.Tensor] | None,
    hvp_counts: list[int],
    *,
    step: int,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    estimator: str,
    hessian_power: float,
) -> None:
    """The AdaHessian update, in place. ``samples`` are h² or v ⊙ h on curvature steps, else None."""
    for i, (param, grad, exp_avg, curvature) in enumerate(zip(params, grads, exp_avgs, curvatures)):
        if samples is not None:
            ema_(curvature, samples[i], beta2)
        ema_(exp_avg, grad, beta1)
        debiased = curvature / ema_debias(beta2, hvp_counts[i])
        magnitude = debiased.sqrt_() if estimator == "equilibration" else debiased.abs_()
        denom = magnitude.pow_(hessian_power).add_(eps)
        update = (exp_avg / ema_debias(beta1, step)).div_(denom)
        if weight_decay:
            update.add_(param, alpha=weight_decay)
        param.add_(update, alpha=-lr)
