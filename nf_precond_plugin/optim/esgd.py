"""ESGD: SGD with momentum, preconditioned by the equilibration matrix D^E = diag(‖H_i,:‖).

With h = H v for a Rademacher v, E[h²] = diag(H²), so √(accumulated h²) estimates D^E.
t counts steps (from 1), n counts curvature samples, g is the gradient.

variant="ema" (the paper's ESGD):
    m ← β₁ m + (1 − β₁) g                      every step
    D ← β₂ D + (1 − β₂) h²                     on curvature steps
    denom = √(D / (1 − β₂^c)) + ε,  c = t ("paper", as the paper's code) or n ("hvp")
    θ ← θ (1 − lr·wd);  θ ← θ − lr · (m / (1 − β₁^t)) / denom

variant="max" (ESGD-max, an Adamax-like infinity-norm accumulator):
    D ← max(β₂ D, h²)                          on curvature steps
    m ← β₁ m + (1 − β₁) g;  m̃ = β₁ m + (1 − β₁) g          (Nesterov)
    s = lr · (1 − 0.99ⁿ)                                     (warm-up with the sample count)
    θ ← θ (1 − s·wd);  θ ← θ − s · m̃ / (1 − β₁^(t+1)) / (√D + ε)
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Literal

import torch

from nf_precond_plugin.curvature import decayed_max_, ema_, ema_debias
from nf_precond_plugin.optim.base import _STEP_KEY, CurvatureOptimizer, validate_common

_MAX_LR_WARMUP_BASE = 0.99


class ESGD(CurvatureOptimizer):
    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 0.15,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-4,
        weight_decay: float = 0.0,
        update_d_every: int = 100,
        d_warmup: int = 50,
        variant: Literal["ema", "max"] = "ema",
        bias_correction: Literal["paper", "hvp"] = "paper",
    ) -> None:
        validate_common(lr, betas, eps, weight_decay, update_d_every, d_warmup)
        if variant not in ("ema", "max"):
            raise ValueError(f"Invalid variant: {variant!r} (expected 'ema' or 'max')")
        if bias_correction not in ("paper", "hvp"):
            raise ValueError(f"Invalid bias_correction: {bias_correction!r} (expected 'paper' or 'hvp')")
        defaults = dict(
            lr=lr,
            betas=tuple(betas),
            eps=eps,
            weight_decay=weight_decay,
            update_d_every=update_d_every,
            d_warmup=d_warmup,
            variant=variant,
            bias_correction=bias_correction,
            estimator="equilibration",
        )
        super().__init__(params, defaults)

    def _update_group(self, group, params, grads, samples) -> None:
        live, exp_avgs, curvatures, counts = self._moment_state(params, samples is not None)
        beta1, beta2 = group["betas"]
        esgd(
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
            variant=group["variant"],
            bias_correction=group["bias_correction"],
        )


def esgd(
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
    variant: str,
    bias_correction: str,
) -> None:
    """The ESGD update, in place. ``samples`` are h² on curvature steps, else None."""
    for i, (param, grad, exp_avg, curvature) in enumerate(zip(params, grads, exp_avgs, curvatures)):
        n = hvp_counts[i]
        if variant == "ema":
            if samples is not None:
                ema_(curvature, samples[i], beta2)
            ema_(exp_avg, grad, beta1)
            count = step if bias_correction == "paper" else n
            denom = (curvature / ema_debias(beta2, count)).sqrt_().add_(eps)
            if weight_decay:
                param.mul_(1.0 - lr * weight_decay)
            param.addcdiv_(exp_avg, denom, value=-lr / ema_debias(beta1, step))
        else:
            if samples is not None:
                decayed_max_(curvature, samples[i], beta2)
            ema_(exp_avg, grad, beta1)
            nesterov = exp_avg.mul(beta1).add_(grad, alpha=1.0 - beta1)
            scaled_lr = lr * (1.0 - _MAX_LR_WARMUP_BASE**n)
            denom = curvature.sqrt().add_(eps)
            if weight_decay:
                param.mul_(1.0 - scaled_lr * weight_decay)
            param.addcdiv_(nesterov, denom, value=-scaled_lr / ema_debias(beta1, step + 1))
