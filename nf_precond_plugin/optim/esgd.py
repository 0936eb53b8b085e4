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

from nf_precond_plugin.curvature import decayed_max_foreach_, ema_debias, ema_foreach_
from nf_precond_plugin.optim.base import CurvatureOptimizer, check_choice, validate_common

_MAX_LR_WARMUP_BASE = 0.99
VARIANTS = ("ema", "max")
BIAS_CORRECTIONS = ("paper", "hvp")


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
    """The ESGD update, in place, in fused multi-tensor kernels. ``samples`` are h² on curvature
    steps, else None."""
    if not params:
        return
    if variant == "ema":
        if samples is not None:
            ema_foreach_(curvatures, samples, beta2)
        ema_foreach_(exp_avgs, grads, beta1)
        counts = [step] * len(params) if bias_correction == "paper" else hvp_counts
        denoms = torch._foreach_div(curvatures, [ema_debias(beta2, c) for c in counts])
        torch._foreach_sqrt_(denoms)
        torch._foreach_add_(denoms, eps)
        if weight_decay:
            torch._foreach_mul_(params, 1.0 - lr * weight_decay)
        torch._foreach_addcdiv_(params, exp_avgs, denoms, value=-lr / ema_debias(beta1, step))
    else:
        if samples is not None:
            decayed_max_foreach_(curvatures, samples, beta2)
        ema_foreach_(exp_avgs, grads, beta1)
        nesterov = torch._foreach_mul(exp_avgs, beta1)
        torch._foreach_add_(nesterov, grads, alpha=1.0 - beta1)
        denoms = torch._foreach_sqrt(curvatures)
        torch._foreach_add_(denoms, eps)
        # the lr warm-up follows each parameter's own sample count n
        scaled_lrs = [lr * (1.0 - _MAX_LR_WARMUP_BASE**n) for n in hvp_counts]
        if weight_decay:
            torch._foreach_mul_(params, [1.0 - s * weight_decay for s in scaled_lrs])
        torch._foreach_div_(nesterov, denoms)
        torch._foreach_mul_(nesterov, [-s / ema_debias(beta1, step + 1) for s in scaled_lrs])
        torch._foreach_add_(params, nesterov)


class ESGD(CurvatureOptimizer):
    """ESGD (Dauphin et al., 2015): momentum SGD divided by the equilibration preconditioner.

    Args:
        params: iterable of parameters or dicts defining parameter groups.
        lr: learning rate (the paper's 0.15 for smooth activations).
        betas: (β₁, β₂), the coefficients of the gradient EMA and of the curvature EMA (or decay of
            the running max).
        eps: added to √D before dividing.
        weight_decay: decoupled weight decay, θ ← θ (1 − lr·wd).
        update_d_every: steps between Hessian-vector products after the warm-up.
        d_warmup: every one of the first ``d_warmup`` steps takes a Hessian-vector product.
        variant: ``"ema"`` (ESGD) or ``"max"`` (ESGD-max, a decayed running max of (Hv)²).
        bias_correction: debias the curvature EMA by all optimizer steps (``"paper"``, as the
            paper's code) or by the number of Hessian-vector products taken (``"hvp"``).
    """

    estimator = "equilibration"
    kernel = staticmethod(esgd)

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
        check_choice("variant", variant, VARIANTS)
        check_choice("bias_correction", bias_correction, BIAS_CORRECTIONS)
        defaults = dict(
            lr=lr,
            betas=tuple(betas),
            eps=eps,
            weight_decay=weight_decay,
            update_d_every=update_d_every,
            d_warmup=d_warmup,
            variant=variant,
            bias_correction=bias_correction,
        )
        super().__init__(params, defaults)

    def _kernel_options(self, group: dict[str, Any]) -> dict[str, Any]:
        return {
            **super()._kernel_options(group),
            "variant": group["variant"],
            "bias_correction": group["bias_correction"],
        }
