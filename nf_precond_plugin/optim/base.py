"""Shared machinery of the curvature-aware optimizers.

One ``step()`` is: (on curvature steps) draw one Rademacher probe v over *all* parameters with a
gradient, so that H is the full Hessian; take h = H v by double backward; turn (v, h) into a
per-parameter sample with the group's estimator; then hand gradients and samples to the
subclass's pure update rule. Training loop contract::

    opt.zero_grad(set_to_none=True)
    loss.backward(create_graph=opt.should_create_graph())
    opt.step()
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable
from typing import Any

import torch

from nf_precond_plugin.curvature import (
    ESTIMATORS,
    MISSING_GRAPH_HINT,
    hvp,
    is_curvature_step,
    rademacher_like,
)

# Per-group bookkeeping kept inside the param groups so that state_dict()/load_state_dict()
# carry the schedule with the hyperparameters it belongs to.
_STEP_KEY = "step_count"
_LAST_HVP_KEY = "last_hvp_step"


def validate_common(
    lr: float, betas: tuple[float, float], eps: float, weight_decay: float, update_d_every: int, d_warmup: int
) -> None:
    if not lr >= 0.0:
        raise ValueError(f"Invalid learning rate: lr={lr} (expected lr >= 0)")
    if not 0.0 <= eps:
        raise ValueError(f"Invalid epsilon value: eps={eps} (expected eps >= 0)")
    if len(betas) != 2:
        raise ValueError(f"Invalid betas: {betas!r} (expected two values, (beta1, beta2))")
    for index, beta in enumerate(betas):
        if not 0.0 <= beta < 1.0:
            raise ValueError(f"Invalid beta parameter at index {index}: {beta} (expected 0 <= beta < 1)")
    if not 0.0 <= weight_decay:
        raise ValueError(f"Invalid weight_decay value: {weight_decay} (expected weight_decay >= 0)")
    if isinstance(update_d_every, bool) or not (isinstance(update_d_every, int) and update_d_every >= 1):
        raise ValueError(f"Invalid update_d_every: {update_d_every!r} (expected an integer >= 1)")
    if isinstance(d_warmup, bool) or not (isinstance(d_warmup, int) and d_warmup >= 1):
        raise ValueError(f"Invalid d_warmup: {d_warmup!r} (expected an integer >= 1)")


class CurvatureOptimizer(torch.optim.Optimizer):
    """Base class: subclasses set ``estimator`` per group and implement ``_update_group``."""

    def __init__(self, params: Iterable[Any], defaults: dict[str, Any]) -> None:
        super().__init__(params, defaults)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        group.setdefault(_STEP_KEY, 0)
        group.setdefault(_LAST_HVP_KEY, None)

    # -- schedule -------------------------------------------------------------------------
    def _group_due(self, group: dict[str, Any]) -> bool:
        return is_curvature_step(group[_STEP_KEY], group[_LAST_HVP_KEY], group["update_d_every"], group["d_warmup"])

    def should_create_graph(self) -> bool:
        """Whether the coming ``step()`` takes a Hessian-vector product, so backward must build a graph."""
        return any(self._group_due(group) for group in self.param_groups)

    # -- step -----------------------------------------------------------------------------
    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None) -> torch.Tensor | None:
        """One update. A closure must itself call ``loss.backward(create_graph=self.should_create_graph())``."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()

        groups = []
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if any(p.grad.is_sparse for p in params):
                _release_graph(params)
                raise RuntimeError(f"{type(self).__name__} does not support sparse gradients")
            groups.append((group, params, self._group_due(group)))

        all_params = [p for _, params, _ in groups for p in params]
        if not all_params:
            return loss
        all_grads = [p.grad for p in all_params]
        try:
            samples: dict[torch.Tensor, torch.Tensor] = {}
            if any(due for _, _, due in groups):
                samples = self._curvature_samples(groups, all_params, all_grads)
            if not _all_finite(all_grads + list(samples.values())):
                warnings.warn(
                    f"{type(self).__name__}: non-finite gradient or Hessian-vector product; "
                    f"step {self.param_groups[0][_STEP_KEY]} skipped, optimizer state unchanged",
                    RuntimeWarning,
                    stacklevel=2,
                )
                return loss
            for group, params, due in groups:
                group_samples = [samples[p] for p in params] if due else None
                self._update_group(group, params, [p.grad.detach() for p in params], group_samples)
                if due:
                    group[_LAST_HVP_KEY] = group[_STEP_KEY]
            for group in self.param_groups:
                group[_STEP_KEY] += 1
        finally:
            _release_graph(all_params)
        return loss

    def _curvature_samples(
        self, groups: list[tuple[dict[str, Any], list[torch.Tensor], bool]], all_params, all_grads
    ) -> dict[torch.Tensor, torch.Tensor]:
        if not any(g.requires_grad for g in all_grads):
            raise RuntimeError(f"{type(self).__name__}: {MISSING_GRAPH_HINT}")
        probes = rademacher_like(all_params)
        with torch.enable_grad():
            products = hvp(all_grads, all_params, probes)
        estimator_of = {p: ESTIMATORS[group["estimator"]] for group, params, due in groups if due for p in params}
        return {p: estimator_of[p](v, h) for p, v, h in zip(all_params, probes, products) if p in estimator_of}

    def _moment_state(
        self, params: list[torch.Tensor], curvature_step: bool
    ) -> tuple[list[int], list[torch.Tensor], list[torch.Tensor], list[int]]:
        """Momentum, curvature and sample count of each parameter that has a curvature estimate.

        A parameter that has never been in a curvature step is left out (not updated) until its
        group's next sample.
        """
        live, exp_avgs, curvatures, counts = [], [], [], []
        for index, p in enumerate(params):
            state = self.state[p]
            if not state:
                state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["curvature"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["hvp_count"] = 0
            if curvature_step:
                state["hvp_count"] += 1
            if state["hvp_count"] == 0:
                continue
            live.append(index)
            exp_avgs.append(state["exp_avg"])
            curvatures.append(state["curvature"])
            counts.append(state["hvp_count"])
        return live, exp_avgs, curvatures, counts

    def _update_group(
        self,
        group: dict[str, Any],
        params: list[torch.Tensor],
        grads: list[torch.Tensor],
        samples: list[torch.Tensor] | None,
    ) -> None:
        raise NotImplementedError


def _all_finite(tensors: list[torch.Tensor]) -> bool:
    """Whether no entry is NaN or ±inf, with one host sync.

    A float64 sum of float32 entries cannot overflow, so it is non-finite exactly when some entry
    is; it costs a tenth of a max-|x| reduction. (MPS has no float64: there, sums of huge finite
    gradients that overflow count as non-finite too.)
    """
    if not tensors:
        return True
    wide = torch.float32 if tensors[0].device.type == "mps" else torch.float64
    return bool(torch.isfinite(torch.stack([t.sum(dtype=wide) for t in tensors]).sum()))


def _release_graph(params: list[torch.Tensor]) -> None:
    """Drop the autograd graph hanging off ``p.grad`` (it references p: a param↔grad cycle)."""
    for p in params:
        if p.grad is not None and p.grad.grad_fn is not None:
            p.grad = p.grad.detach()
