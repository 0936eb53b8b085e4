"""ESGD: SGD with momentum, preconditioned by the equilibration matrix D^E = diag(‖H_i,:‖).

With h = H v for a Rademacher v, E[h²] = diag(H²), so √(accumulated h²) estimates D^E.
t counts steps (from 1), n counts curvature samples, g is the gradient. Three rules, one class each:

``ESGD``, the project's rule: a bounded step, whose lr schedule is the run's (``training.schedules``).
    m ← β₁ m + (1 − β₁) g                      every step
    D ← β₂ D + (1 − β₂) h²                     on curvature steps (β₂ per sample), D̂ = D / (1 − β₂ⁿ)
    u = clip(m̂ / (√D̂ + ε), −ρ, ρ)             m̂ = m / (1 − β₁ᵗ); Sophia's per-coordinate clip
    where a tensor's latest H·v has ≥ ``sparse_threshold`` exact zeros (ReLU fields):
    u = ρ · clip(m̂ / (√v̂ + 1e-8), −1, 1)     v̂ Adam's debiased EMA of g² (β = 0.999)
    θ ← θ (1 − lr·wd);  θ ← θ − lr · u
Every step is bounded by lr·ρ per coordinate. The debiasing counts samples, not steps, and the
per-sample β₂ is short, so D follows the curvature instead of freezing at its warm-up values.

``PaperESGD``, the paper's ESGD:
    m ← β₁ m + (1 − β₁) g                      every step
    D ← β₂ D + (1 − β₂) h²                     on curvature steps
    denom = √(D / (1 − β₂^c)) + ε,  c = t ("paper", as the paper's code) or n ("hvp")
    θ ← θ (1 − lr·wd);  θ ← θ − lr · (m / (1 − β₁^t)) / denom

``ESGDMax``, the paper's ESGD-max (an Adamax-like infinity-norm accumulator):
    D ← max(β₂ D, h²)                          on curvature steps
    m ← β₁ m + (1 − β₁) g;  m̃ = β₁ m + (1 − β₁) g          (Nesterov)
    s = lr · (1 − 0.99ⁿ)                                     (warm-up with the sample count)
    θ ← θ (1 − s·wd);  θ ← θ − s · m̃ / (1 − β₁^(t+1)) / (√D + ε)
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Literal

import torch
import torch.distributed as dist

from nf_precond_plugin.curvature import (
    SPARSE_TENSOR,
    clip_foreach_,
    decayed_max_foreach_,
    ema_debias,
    ema_foreach_,
    zero_fraction,
)
from nf_precond_plugin.optim.base import PAPER_LR, CurvatureOptimizer, check_choice, validate_common

_MAX_LR_WARMUP_BASE = 0.99
_FALLBACK_BETA = 0.999  # Adam's β₂ for the second moment of sparse-curvature tensors
_FALLBACK_EPS = 1e-8
BIAS_CORRECTIONS = ("paper", "hvp")


def clipped_esgd(
    params: list[torch.Tensor],
    grads: list[torch.Tensor],
    exp_avgs: list[torch.Tensor],
    curvatures: list[torch.Tensor],
    samples: list[torch.Tensor] | None,
    hvp_counts: list[int],
    exp_avg_sqs: list[torch.Tensor],
    zero_fractions: list[torch.Tensor],
    denoms: list[torch.Tensor],
    *,
    step: int,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    clip: float,
    sparse_threshold: float,
) -> None:
    """The project's ESGD update, in place; ``samples`` are h² on curvature steps, else None."""
    if not params:
        return
    if samples is not None:
        ema_foreach_(curvatures, samples, beta2)
        for fraction, sample in zip(zero_fractions, samples):
            fraction.copy_(zero_fraction(sample))
        # √D̂ + ε changes only when D does: kept between H·v steps (``denoms`` is state)
        torch._foreach_copy_(denoms, curvatures)
        torch._foreach_div_(denoms, [ema_debias(beta2, n) for n in hvp_counts])
        torch._foreach_sqrt_(denoms)
        torch._foreach_add_(denoms, eps)
    ema_foreach_(exp_avgs, grads, beta1)
    torch._foreach_mul_(exp_avg_sqs, _FALLBACK_BETA)
    torch._foreach_addcmul_(exp_avg_sqs, grads, grads, value=1.0 - _FALLBACK_BETA)

    momentum_debias = ema_debias(beta1, step)
    updates = list(torch._foreach_div(exp_avgs, momentum_debias))
    torch._foreach_div_(updates, denoms)  # m̂ / (√D̂ + ε)
    clip_foreach_(updates, clip)

    # Sparse curvature (ReLU): D is 0 on most coordinates and says nothing there; Adam's
    # normalised step, scaled to the same bound ρ, moves those tensors instead. (One small host
    # read per step; the step's finiteness check already synchronises.)
    sparse = [i for i, is_sparse in enumerate((torch.stack(zero_fractions) >= sparse_threshold).tolist()) if is_sparse]
    if sparse:
        adam_denoms = torch._foreach_div([exp_avg_sqs[i] for i in sparse], ema_debias(_FALLBACK_BETA, step))
        torch._foreach_sqrt_(adam_denoms)
        torch._foreach_add_(adam_denoms, _FALLBACK_EPS)
        adam_like = torch._foreach_div([exp_avgs[i] for i in sparse], momentum_debias)
        torch._foreach_div_(adam_like, adam_denoms)
        clip_foreach_(adam_like, 1.0)
        torch._foreach_mul_(adam_like, clip)
        for i, fallback in zip(sparse, adam_like):
            updates[i] = fallback

    if weight_decay:
        torch._foreach_mul_(params, 1.0 - lr * weight_decay)
    torch._foreach_add_(params, updates, alpha=-lr)


def paper_esgd(
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
    bias_correction: str,
) -> None:
    """The paper's ESGD update, in place, in fused multi-tensor kernels. ``samples`` are h² on
    curvature steps, else None."""
    if not params:
        return
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


def esgd_max(
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
) -> None:
    """The paper's ESGD-max update, in place. ``samples`` are h² on curvature steps, else None."""
    if not params:
        return
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


_COMMON_ARGS = """
        params: iterable of parameters or dicts defining parameter groups.
        lr: learning rate.
        betas: (β₁, β₂), the coefficients of the gradient EMA and of the curvature accumulator.
        eps: added to √D before dividing.
        weight_decay: decoupled weight decay, θ ← θ (1 − lr·wd).
        update_d_every: steps between Hessian-vector products after the warm-up.
        d_warmup: every one of the first ``d_warmup`` steps takes a Hessian-vector product.
        process_group: the torch.distributed group to average gradients and H·v over (default:
            the world, once initialised; nothing to average in a single process).
        probe_seed: seed of the optimizer's probe generator (default: drawn from torch's global
            RNG at construction, then agreed with the first rank)."""


class ESGD(CurvatureOptimizer):
    """The project's ESGD: equilibration-preconditioned momentum with a bounded step and Adam's
    normalised step on sparse-curvature tensors (module docstring). Its lr follows the run's
    schedule (the standalone runs default to schedule-free averaging for it, with β₁ = 0).

    Args:{common}
        clip: ρ, the bound of every preconditioned step before the lr.
        sparse_threshold: a tensor whose latest H·v has at least this fraction of exact zeros
            takes Adam's normalised step, scaled to ρ.
    """

    estimator = "equilibration"
    kernel = staticmethod(clipped_esgd)

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1.0,
        betas: tuple[float, float] = (0.9, 0.9),
        eps: float = 1e-4,
        weight_decay: float = 0.0,
        update_d_every: int = 20,
        d_warmup: int = 50,
        clip: float = 3e-3,
        sparse_threshold: float = SPARSE_TENSOR,
        process_group: dist.ProcessGroup | None = None,
        probe_seed: int | None = None,
    ) -> None:
        validate_common(lr, betas, eps, weight_decay, update_d_every, d_warmup)
        if not (clip > 0):
            raise ValueError(f"Invalid clip: {clip} (expected clip > 0)")
        if not 0.0 < sparse_threshold <= 1.0:
            raise ValueError(f"Invalid sparse_threshold: {sparse_threshold} (expected 0 < threshold <= 1)")
        defaults = dict(
            lr=lr,
            betas=tuple(betas),
            eps=eps,
            weight_decay=weight_decay,
            update_d_every=update_d_every,
            d_warmup=d_warmup,
            clip=clip,
            sparse_threshold=sparse_threshold,
        )
        super().__init__(params, defaults, process_group=process_group, probe_seed=probe_seed)

    def _extra_state(self, group: dict[str, Any]) -> dict[str, Any]:
        return {
            "exp_avg_sq": lambda p: torch.zeros_like(p, memory_format=torch.preserve_format),
            "zero_fraction": lambda p: torch.zeros((), dtype=torch.float32, device=p.device),
            "denom": lambda p: torch.ones_like(p, memory_format=torch.preserve_format),
        }

    def _kernel_options(self, group: dict[str, Any]) -> dict[str, Any]:
        return {
            **super()._kernel_options(group),
            "clip": group["clip"],
            "sparse_threshold": group["sparse_threshold"],
        }


class PaperESGD(CurvatureOptimizer):
    """ESGD as the paper runs it (§5: lr 0.15, β₂ = 0.999, H·v on steps 0–49 then every 100).

    Args:{common}
        bias_correction: debias the curvature EMA by all optimizer steps (``"paper"``, as the
            paper's code) or by the number of Hessian-vector products taken (``"hvp"``).
    """

    estimator = "equilibration"
    kernel = staticmethod(paper_esgd)

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = PAPER_LR,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-4,
        weight_decay: float = 0.0,
        update_d_every: int = 100,
        d_warmup: int = 50,
        bias_correction: Literal["paper", "hvp"] = "paper",
        process_group: dist.ProcessGroup | None = None,
        probe_seed: int | None = None,
    ) -> None:
        validate_common(lr, betas, eps, weight_decay, update_d_every, d_warmup)
        check_choice("bias_correction", bias_correction, BIAS_CORRECTIONS)
        defaults = dict(
            lr=lr,
            betas=tuple(betas),
            eps=eps,
            weight_decay=weight_decay,
            update_d_every=update_d_every,
            d_warmup=d_warmup,
            bias_correction=bias_correction,
        )
        super().__init__(params, defaults, process_group=process_group, probe_seed=probe_seed)

    def _kernel_options(self, group: dict[str, Any]) -> dict[str, Any]:
        return {**super()._kernel_options(group), "bias_correction": group["bias_correction"]}


class ESGDMax(CurvatureOptimizer):
    """The paper's ESGD-max: a decayed running max of (Hv)², Nesterov momentum and an lr warm-up
    over the curvature samples (module docstring).

    Args:{common}
    """

    estimator = "equilibration"
    kernel = staticmethod(esgd_max)

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = PAPER_LR,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-4,
        weight_decay: float = 0.0,
        update_d_every: int = 100,
        d_warmup: int = 50,
        process_group: dist.ProcessGroup | None = None,
        probe_seed: int | None = None,
    ) -> None:
        validate_common(lr, betas, eps, weight_decay, update_d_every, d_warmup)
        defaults = dict(
            lr=lr,
            betas=tuple(betas),
            eps=eps,
            weight_decay=weight_decay,
            update_d_every=update_d_every,
            d_warmup=d_warmup,
        )
        super().__init__(params, defaults, process_group=process_group, probe_seed=probe_seed)


for _rule in (ESGD, PaperESGD, ESGDMax):
    _rule.__doc__ = _rule.__doc__.format(common=_COMMON_ARGS)
