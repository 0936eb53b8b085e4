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
import torch.distributed as dist

from nf_precond_plugin.curvature import ema_debias, ema_foreach_
from nf_precond_plugin.optim.base import PAPER_LR, CurvatureOptimizer, check_choice, validate_common

ESTIMATOR_CHOICES = ("equilibration", "jacobi")


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
    """The AdaHessian update, in place, in fused multi-tensor kernels. ``samples`` are h² or v ⊙ h
    on curvature steps, else None."""
    if not params:
        return
    if samples is not None:
        ema_foreach_(curvatures, samples, beta2)
    ema_foreach_(exp_avgs, grads, beta1)
    denoms = torch._foreach_div(curvatures, [ema_debias(beta2, n) for n in hvp_counts])
    if estimator == "equilibration":
        torch._foreach_sqrt_(denoms)
    else:
        torch._foreach_abs_(denoms)
    torch._foreach_pow_(denoms, hessian_power)
    torch._foreach_add_(denoms, eps)
    updates = torch._foreach_div(exp_avgs, ema_debias(beta1, step))
    torch._foreach_div_(updates, denoms)
    if weight_decay:
        torch._foreach_add_(updates, params, alpha=weight_decay)
    torch._foreach_add_(params, updates, alpha=-lr)


class AdaHessian(CurvatureOptimizer):
    """AdaHessian (Yao et al., 2021): Adam with its squared-gradient EMA replaced by an EMA of
    Hutchinson samples of the Hessian's diagonal (or of diag(H²)).

    Args:
        params: iterable of parameters or dicts defining parameter groups.
        lr: learning rate (the paper's for smooth activations).
        betas: (β₁, β₂), the coefficients of the gradient EMA and of the curvature EMA.
        eps: added to the preconditioner before dividing.
        weight_decay: L2 penalty added to the preconditioned step, as AdaHessian's reference code.
        estimator: ``"equilibration"`` (AdaHessian(E): EMA of (Hv)², what AdaHessian's own code
            computes) or ``"jacobi"`` (AdaHessian(J): EMA of v ⊙ Hv, the published estimator).
        hessian_power: exponent k of the preconditioner, 0 ≤ k ≤ 1.
        update_d_every: steps between Hessian-vector products after the warm-up.
        d_warmup: every one of the first ``d_warmup`` steps takes a Hessian-vector product.
        process_group: the torch.distributed group to average gradients and H·v over (default:
            the world, once initialised; nothing to average in a single process).
        probe_seed: seed of the optimizer's probe generator (default: drawn from torch's global
            RNG at construction, then agreed with the first rank).
    """

    estimator = "equilibration"
    kernel = staticmethod(adahessian)

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = PAPER_LR,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-4,
        weight_decay: float = 0.0,
        estimator: Literal["equilibration", "jacobi"] = "equilibration",
        hessian_power: float = 1.0,
        update_d_every: int = 1,
        d_warmup: int = 1,
        process_group: dist.ProcessGroup | None = None,
        probe_seed: int | None = None,
    ) -> None:
        validate_common(lr, betas, eps, weight_decay, update_d_every, d_warmup)
        check_choice("estimator", estimator, ESTIMATOR_CHOICES)
        if not 0.0 <= hessian_power <= 1.0:
            raise ValueError(f"Invalid hessian_power: {hessian_power} (expected 0 <= hessian_power <= 1)")
        # A construction choice like the class's kernel, so an instance attribute, not a group hyperparameter.
        self.estimator = estimator
        defaults = dict(
            lr=lr,
            betas=tuple(betas),
            eps=eps,
            weight_decay=weight_decay,
            hessian_power=hessian_power,
            update_d_every=update_d_every,
            d_warmup=d_warmup,
        )
        super().__init__(params, defaults, process_group=process_group, probe_seed=probe_seed)

    def _kernel_options(self, group: dict[str, Any]) -> dict[str, Any]:
        return {
            **super()._kernel_options(group),
            "estimator": self.estimator,
            "hessian_power": group["hessian_power"],
        }
