"""Shared machinery of the curvature-aware optimizers: probe → H·v → estimator → kernel.

One ``step()`` is: on curvature steps, draw one Rademacher probe v over *all* parameters with a
gradient (so that H is the full Hessian, not a block of it); take h = H v by double backward; turn
(v, h) into a per-parameter sample s with the optimizer's estimator (s = h² for equilibration,
s = v ⊙ h for Jacobi); then hand gradients, samples and per-parameter state to the subclass's pure
kernel. The training-loop contract (``nf_precond_plugin.training.step`` implements it)::

    opt.zero_grad(set_to_none=True)
    loss.backward(create_graph=opt.should_create_graph())
    opt.step()
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any, ClassVar

import torch

from nf_precond_plugin.curvature import (
    ESTIMATORS,
    MISSING_GRAPH_HINT,
    hvp,
    is_curvature_step,
    rademacher_like,
)

# Per-group bookkeeping kept inside the param groups, so that state_dict()/load_state_dict()
# carry the H·v schedule together with the hyperparameters it belongs to.
STEP_COUNT = "step_count"
"""Param-group key: optimizer steps taken so far (0-based index of the coming step)."""
LAST_HVP_STEP = "last_hvp_step"
"""Param-group key: the step index of the group's latest Hessian-vector product, or None."""


def validate_common(
    lr: float, betas: tuple[float, float], eps: float, weight_decay: float, update_d_every: int, d_warmup: int
) -> None:
    """ValueErrors in torch.optim's style for the hyperparameters every curvature optimizer has."""
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
    for name, value in (("update_d_every", update_d_every), ("d_warmup", d_warmup)):
        if isinstance(value, bool) or not (isinstance(value, int) and value >= 1):
            raise ValueError(f"Invalid {name}: {value!r} (expected an integer >= 1)")


def check_choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"Invalid {name}: {value!r} (expected one of {', '.join(map(repr, choices))})")


class CurvatureOptimizer(torch.optim.Optimizer):
    """Base class of the optimizers that take Hessian-vector products.

    A subclass names its curvature ``estimator`` (a key of ``curvature.ESTIMATORS``), its pure
    ``kernel`` (a function over lists of tensors, in the style of ``torch.optim.adam.adam``) and
    ``_kernel_options(group)``, the keyword arguments the kernel takes from a param group.
    """

    estimator: ClassVar[str] = "equilibration"
    kernel: ClassVar[Callable[..., None]]

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        group.setdefault(STEP_COUNT, 0)
        group.setdefault(LAST_HVP_STEP, None)

    # -- schedule -------------------------------------------------------------------------
    def _group_due(self, group: dict[str, Any]) -> bool:
        return is_curvature_step(group[STEP_COUNT], group[LAST_HVP_STEP], group["update_d_every"], group["d_warmup"])

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
            due_params = [p for _, params, due in groups if due for p in params]
            if due_params:
                samples = self._curvature_samples(all_params, all_grads, set(due_params))
            if not _all_finite(all_grads + list(samples.values())):
                warnings.warn(
                    f"{type(self).__name__}: non-finite gradient or Hessian-vector product; "
                    f"step {self.param_groups[0][STEP_COUNT]} skipped, optimizer state unchanged",
                    RuntimeWarning,
                    stacklevel=2,
                )
                return loss
            for group, params, due in groups:
                group_samples = [samples[p] for p in params] if due else None
                self._update_group(group, params, [p.grad.detach() for p in params], group_samples)
                if due:
                    group[LAST_HVP_STEP] = group[STEP_COUNT]
            for group in self.param_groups:
                group[STEP_COUNT] += 1
        finally:
            _release_graph(all_params)
        return loss

    def _curvature_samples(
        self, all_params: list[torch.Tensor], all_grads: list[torch.Tensor], due: set[torch.Tensor]
    ) -> dict[torch.Tensor, torch.Tensor]:
        """The estimator's sample for every parameter of a due group, from one probe over all parameters."""
        if not any(g.requires_grad for g in all_grads):
            raise RuntimeError(f"{type(self).__name__}: {MISSING_GRAPH_HINT}")
        probes = rademacher_like(all_params)
        with torch.enable_grad():
            products = hvp(all_grads, all_params, probes)
        estimate = ESTIMATORS[self.estimator]
        return {p: estimate(v, h) for p, v, h in zip(all_params, probes, products) if p in due}

    def _update_group(
        self,
        group: dict[str, Any],
        params: list[torch.Tensor],
        grads: list[torch.Tensor],
        samples: list[torch.Tensor] | None,
    ) -> None:
        """Hand the group's live parameters and their state to the kernel.

        A parameter that has never been in a curvature step has no preconditioner yet; it is left
        out (not updated) until its group's next sample.
        """
        curvature_step = samples is not None
        extra = self._extra_state(group)
        live, exp_avgs, curvatures, counts = [], [], [], []
        extras: dict[str, list[torch.Tensor]] = {f"{name}s": [] for name in extra}
        for index, p in enumerate(params):
            state = self.state[p]
            if not state:
                state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["curvature"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["hvp_count"] = 0
            for name, initial in extra.items():
                if name not in state:
                    state[name] = initial(p)
            if curvature_step:
                state["hvp_count"] += 1
            if state["hvp_count"] == 0:
                continue
            live.append(index)
            exp_avgs.append(state["exp_avg"])
            curvatures.append(state["curvature"])
            counts.append(state["hvp_count"])
            for name in extra:
                extras[f"{name}s"].append(state[name])
        type(self).kernel(
            [params[i] for i in live],
            [grads[i] for i in live],
            exp_avgs,
            curvatures,
            None if samples is None else [samples[i] for i in live],
            counts,
            step=group[STEP_COUNT] + 1,
            **extras,
            **self._kernel_options(group),
        )

    def _extra_state(self, group: dict[str, Any]) -> dict[str, Callable[[torch.Tensor], torch.Tensor]]:
        """Per-parameter state beyond momentum and curvature that the group's kernel needs:
        name → how to initialise it from the parameter (passed to the kernel as ``<name>s``)."""
        return {}

    def _kernel_options(self, group: dict[str, Any]) -> dict[str, Any]:
        """The kernel's keyword arguments from a group; subclasses add their own to these."""
        beta1, beta2 = group["betas"]
        return dict(lr=group["lr"], beta1=beta1, beta2=beta2, eps=group["eps"], weight_decay=group["weight_decay"])


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
