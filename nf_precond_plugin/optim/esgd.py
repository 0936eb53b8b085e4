"""ESGD: SGD with momentum, preconditioned by the equilibration matrix D^E = diag(‖H_i,:‖).

With h = H v for a Rademacher v, E[h²] = diag(H²), so √(accumulated h²) estimates D^E.
t counts steps (from 1), n counts curvature samples, g is the gradient.

rule="clipped" (the default): an explicit schedule and a bounded step.
    m ← β₁ m + (1 − β₁) g                      every step
    D ← β₂ D + (1 − β₂) h²                     on curvature steps (β₂ per sample), D̂ = D / (1 − β₂ⁿ)
    lr_t = lr / (1 + (t − 1) / T)              inverse-time decay (T = lr_decay_steps; None: constant)
    u = clip(m̂ / (√D̂ + ε), −ρ, ρ)             m̂ = m / (1 − β₁ᵗ); Sophia's per-coordinate clip
    where a tensor's latest H·v has ≥ ``sparse_threshold`` exact zeros (ReLU fields):
    u = ρ · clip(m̂ / (√v̂ + 1e-8), −1, 1)     v̂ Adam's debiased EMA of g² (β = 0.999)
    θ ← θ (1 − lr_t·wd);  θ ← θ − lr_t · u
Every step is bounded by lr_t·ρ per coordinate. The debiasing counts samples, not steps, and the
per-sample β₂ is short, so D follows the curvature instead of freezing at its warm-up values.

rule="paper" (the paper's ESGD, ``variant="ema"``):
    m ← β₁ m + (1 − β₁) g                      every step
    D ← β₂ D + (1 − β₂) h²                     on curvature steps
    denom = √(D / (1 − β₂^c)) + ε,  c = t ("paper", as the paper's code) or n ("hvp")
    θ ← θ (1 − lr·wd);  θ ← θ − lr · (m / (1 − β₁^t)) / denom

rule="paper", variant="max" (ESGD-max, an Adamax-like infinity-norm accumulator):
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
    SPARSE_CURVATURE,
    clip_foreach_,
    decayed_max_foreach_,
    ema_debias,
    ema_foreach_,
    inverse_time_lr,
    zero_fraction,
)
from nf_precond_plugin.optim.base import CurvatureOptimizer, check_choice, validate_common

_MAX_LR_WARMUP_BASE = 0.99
_FALLBACK_BETA = 0.999  # Adam's β₂ for the second moment of sparse-curvature tensors
_FALLBACK_EPS = 1e-8
RULES = ("clipped", "paper")
VARIANTS = ("ema", "max")
BIAS_CORRECTIONS = ("paper", "hvp")

RULE_DEFAULTS: dict[str, dict[str, Any]] = {
    # Found with the league (benchmarks/league.py; README): lion 256², 5 × 256 fields.
    "clipped": dict(lr=1.0, betas=(0.9, 0.9), eps=1e-4, update_d_every=20, d_warmup=50, clip=3e-3, lr_decay_steps=128),
    # The paper's ESGD (§5): lr 0.15, β₂ = 0.999, H·v on steps 0–49 then every 100.
    "paper": dict(
        lr=0.15, betas=(0.9, 0.999), eps=1e-4, update_d_every=100, d_warmup=50, clip=None, lr_decay_steps=None
    ),
}
"""The defaults of each rule: an argument left at None takes its rule's value."""


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
    lr_decay_steps: int | None,
    sparse_threshold: float,
) -> None:
    """The clipped ESGD update (rule="clipped"), in place; ``samples`` are h² on curvature steps."""
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

    lr_t = inverse_time_lr(lr, step, lr_decay_steps)
    if weight_decay:
        torch._foreach_mul_(params, 1.0 - lr_t * weight_decay)
    torch._foreach_add_(params, updates, alpha=-lr_t)


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
    variant: str,
    bias_correction: str,
) -> None:
    """The paper's ESGD update (rule="paper"), in place, in fused multi-tensor kernels. ``samples``
    are h² on curvature steps, else None."""
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


def esgd(*args: Any, rule: str, **kwargs: Any) -> None:
    """The ESGD kernel of ``rule``."""
    (clipped_esgd if rule == "clipped" else paper_esgd)(*args, **kwargs)


class ESGD(CurvatureOptimizer):
    """ESGD (Dauphin et al., 2015): momentum SGD divided by the equilibration preconditioner.

    An argument left at None takes the value of its ``rule`` (``RULE_DEFAULTS``).

    Args:
        params: iterable of parameters or dicts defining parameter groups.
        lr: learning rate (clipped: 1.0, the scale of ρ-bounded steps; paper: 0.15).
        betas: (β₁, β₂), the coefficients of the gradient EMA and of the curvature EMA per H·v
            sample (or decay of the running max); clipped: (0.9, 0.9), paper: (0.9, 0.999).
        eps: added to √D before dividing.
        weight_decay: decoupled weight decay, θ ← θ (1 − lr_t·wd).
        update_d_every: steps between Hessian-vector products after the warm-up (clipped: 20, paper: 100).
        d_warmup: every one of the first ``d_warmup`` steps takes a Hessian-vector product (50).
        rule: ``"clipped"`` (the project's ESGD) or ``"paper"`` (the paper's, bit for bit).
        clip: ρ, the bound of every preconditioned step before the lr (clipped only; 3e-3).
        lr_decay_steps: T of the inverse-time decay lr / (1 + (t − 1)/T) (clipped only; 128, one
            epoch of the 256² image at batch 512); 0 or None with rule="paper" keeps lr constant.
        sparse_threshold: a tensor whose latest H·v has at least this fraction of exact zeros
            takes Adam's normalised step, scaled to ρ (clipped only).
        variant: ``"ema"`` (ESGD) or ``"max"`` (ESGD-max; rule="paper" only).
        bias_correction: debias the curvature EMA by all optimizer steps (``"paper"``, as the
            paper's code) or by the number of Hessian-vector products taken (``"hvp"``); rule="paper" only.
        process_group: the torch.distributed group to average gradients and H·v over (default:
            the world, once initialised; nothing to average in a single process).
        probe_seed: seed of the optimizer's probe generator (default: drawn from torch's global
            RNG at construction, then agreed with the first rank).
    """

    estimator = "equilibration"
    kernel = staticmethod(esgd)

    def __init__(
        self,
        params: Iterable[Any],
        lr: float | None = None,
        betas: tuple[float, float] | None = None,
        eps: float | None = None,
        weight_decay: float = 0.0,
        update_d_every: int | None = None,
        d_warmup: int | None = None,
        rule: Literal["clipped", "paper"] = "clipped",
        clip: float | None = None,
        lr_decay_steps: int | None = None,
        sparse_threshold: float = SPARSE_CURVATURE,
        variant: Literal["ema", "max"] = "ema",
        bias_correction: Literal["paper", "hvp"] = "paper",
        process_group: dist.ProcessGroup | None = None,
        probe_seed: int | None = None,
    ) -> None:
        check_choice("rule", rule, RULES)
        given = dict(
            lr=lr, betas=betas, eps=eps, update_d_every=update_d_every, d_warmup=d_warmup,
            clip=clip, lr_decay_steps=lr_decay_steps,
        )  # fmt: skip
        resolved = {k: RULE_DEFAULTS[rule][k] if v is None else v for k, v in given.items()}
        validate_common(
            resolved["lr"],
            resolved["betas"],
            resolved["eps"],
            weight_decay,
            resolved["update_d_every"],
            resolved["d_warmup"],
        )
        check_choice("variant", variant, VARIANTS)
        check_choice("bias_correction", bias_correction, BIAS_CORRECTIONS)
        if rule == "clipped":
            if not (resolved["clip"] > 0):
                raise ValueError(f"Invalid clip: {resolved['clip']} (expected clip > 0)")
            decay = resolved["lr_decay_steps"]
            if isinstance(decay, bool) or not (isinstance(decay, int) and decay >= 0):
                raise ValueError(f"Invalid lr_decay_steps: {decay!r} (expected an integer >= 0; 0 keeps lr constant)")
            if not 0.0 < sparse_threshold <= 1.0:
                raise ValueError(f"Invalid sparse_threshold: {sparse_threshold} (expected 0 < threshold <= 1)")
            if variant != "ema" or bias_correction != "paper":
                raise ValueError("variant and bias_correction belong to rule='paper'; the clipped rule has neither")
        elif clip is not None or lr_decay_steps is not None:
            raise ValueError("clip and lr_decay_steps belong to rule='clipped'; the paper's rule has neither")
        defaults = dict(
            resolved,
            betas=tuple(resolved["betas"]),
            weight_decay=weight_decay,
            rule=rule,
            sparse_threshold=sparse_threshold,
            variant=variant,
            bias_correction=bias_correction,
        )
        super().__init__(params, defaults, process_group=process_group, probe_seed=probe_seed)

    def _extra_state(self, group: dict[str, Any]) -> dict[str, Any]:
        if group["rule"] != "clipped":
            return {}
        return {
            "exp_avg_sq": lambda p: torch.zeros_like(p, memory_format=torch.preserve_format),
            "zero_fraction": lambda p: torch.zeros((), dtype=torch.float32, device=p.device),
            "denom": lambda p: torch.ones_like(p, memory_format=torch.preserve_format),
        }

    def _kernel_options(self, group: dict[str, Any]) -> dict[str, Any]:
        options = {**super()._kernel_options(group), "rule": group["rule"]}
        if group["rule"] == "clipped":
            decay = group["lr_decay_steps"]
            return {
                **options,
                "clip": group["clip"],
                "lr_decay_steps": decay or None,
                "sparse_threshold": group["sparse_threshold"],
            }
        return {**options, "variant": group["variant"], "bias_correction": group["bias_correction"]}
