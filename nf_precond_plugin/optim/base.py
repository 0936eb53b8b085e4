"""Shared machinery of the curvature-aware optimizers: probe → H·v → estimator → kernel.

One ``step()`` is: on curvature steps, draw one Rademacher probe v over *all* parameters with a
gradient (so that H is the full Hessian, not a block of it); take h = H v by double backward; turn
(v, h) into a per-parameter sample s with the optimizer's estimator (s = h² for equilibration,
s = v ⊙ h for Jacobi); then hand gradients, samples and per-parameter state to the subclass's pure
kernel. Such an optimizer satisfies ``nf_precond_plugin.training.step.CurvatureStepper``, the
contract ``training_step`` (the one caller of backward) drives: backward builds a graph exactly when
``should_create_graph()``, and with K micro-batches each one's H·v is folded into the step's sum
for the step's one probe by ``accumulate()`` (``curvature.HvpSum``), which frees its graph.

Data parallelism: when torch.distributed is initialised, ``step()`` averages gradients (every
step) and H·v (on curvature steps) over ``process_group`` (default: the world), in buckets of one
all-reduce each, *before* the estimator squares H·v. Every rank draws the same probe: the probe
generator is the optimizer's own, seeded once (from rank 0) and saved in ``state_dict()``, so a
run's probes do not depend on how many processes took part. Every rank then applies the same
update, and parameters stay bit-identical. A model wrapped in DistributedDataParallel must run
its forward and backward inside ``model.no_sync()``: DDP cannot reduce gradients that carry a graph.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any, ClassVar

import torch
import torch.distributed as dist

from nf_precond_plugin.curvature import (
    ESTIMATORS,
    MISSING_GRAPH_HINT,
    HvpSum,
    active_process_group,
    all_reduce_mean_,
    broadcast_int,
    fill_missing_grads_,
    hvp,
    is_curvature_step,
    rademacher_like,
    release_graph,
)

# Per-group bookkeeping kept inside the param groups, so that state_dict()/load_state_dict()
# carry the H·v schedule together with the hyperparameters it belongs to.
STEP_COUNT = "step_count"
"""Param-group key: optimizer steps taken so far (0-based index of the coming step)."""
LAST_HVP_STEP = "last_hvp_step"
"""Param-group key: the step index of the group's latest Hessian-vector product, or None."""
PAPER_LR = 0.15
"""The paper's learning rate (§5) for ESGD and AdaHessian on smooth fields."""
PROBE_GENERATOR = "probe_generator"
"""``state_dict()`` key: the probe generator's seed and state, so a resumed run draws the probes it
would have drawn (on any number of processes: the state is the same on every rank)."""


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
    reduces_gradients: ClassVar[bool] = True
    """``step()`` averages gradients over the process group itself (the training loop must not)."""

    def __init__(
        self,
        params: Any,
        defaults: dict[str, Any],
        *,
        process_group: dist.ProcessGroup | None = None,
        probe_seed: int | None = None,
    ) -> None:
        if probe_seed is not None and (
            isinstance(probe_seed, bool) or not isinstance(probe_seed, int) or not 0 <= probe_seed < 2**63
        ):
            raise ValueError(f"Invalid probe_seed: {probe_seed!r} (expected None or an integer in [0, 2**63))")
        super().__init__(params, defaults)
        self.process_group = process_group
        # Drawn from the global RNG, so torch.manual_seed() before construction governs the probes.
        self._probe_seed = int(torch.randint(0, 2**62, ())) if probe_seed is None else probe_seed
        self._probe_generator: torch.Generator | None = None
        self._probe_generator_state: torch.Tensor | None = None
        self._pending_hvp: HvpSum | None = None

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

    # -- probes ---------------------------------------------------------------------------
    def _probes(self, params: list[torch.Tensor]) -> list[torch.Tensor]:
        """One Rademacher probe per parameter from the optimizer's own generator, the same on every rank."""
        if self._probe_generator is None:
            # Agreed with the first rank once, so ranks whose global RNGs differ still draw alike.
            seed = broadcast_int(self._probe_seed, active_process_group(self.process_group), params[0].device)
            self._probe_seed = seed
            # On the CPU whatever the parameters' device: CUDA's random streams depend on the GPU
            # model, and a CPU state resumes on any device. (The words are numel/31 int32.)
            self._probe_generator = torch.Generator(device="cpu").manual_seed(seed)
            if self._probe_generator_state is not None:
                self._probe_generator.set_state(self._probe_generator_state)
                self._probe_generator_state = None
        return rademacher_like(params, generator=self._probe_generator)

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        generator = self._probe_generator
        state[PROBE_GENERATOR] = {
            "seed": self._probe_seed,
            "state": generator.get_state() if generator is not None else self._probe_generator_state,
        }
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state_dict = dict(state_dict)
        saved = state_dict.pop(PROBE_GENERATOR, None)  # absent in checkpoints older than the generator
        super().load_state_dict(state_dict)
        if saved is not None:
            self._probe_seed = int(saved["seed"])
            self._probe_generator = None  # rebuilt on the next probe
            self._probe_generator_state = saved["state"]
        self._pending_hvp = None

    # -- accumulation ---------------------------------------------------------------------
    def _params_with_grad(self) -> list[torch.Tensor]:
        return [p for group in self.param_groups for p in group["params"] if p.grad is not None]

    @torch.no_grad()
    def accumulate(self) -> None:
        """Fold the micro-batch whose backward just ran into the coming ``step()``.

        Gradients add up in ``p.grad`` as with plain backward; on a curvature step this
        micro-batch's H·v, for the step's one probe, is added to the step's sum and its graph is
        freed. Divide each micro-batch's loss by the number of micro-batches for the step to see
        their mean, as a full batch would.
        """
        due = self.should_create_graph()
        if not due:
            return
        params = self._params_with_grad()
        grads = [p.grad for p in params]
        if not any(g.requires_grad for g in grads):
            raise RuntimeError(f"{type(self).__name__}: {MISSING_GRAPH_HINT}")
        try:
            if self._pending_hvp is None:
                self._pending_hvp = HvpSum(params, self._probes(params))
            elif not _same_tensors(params, self._pending_hvp.params):
                raise RuntimeError(
                    f"{type(self).__name__}.accumulate: the parameters with a gradient changed between micro-batches "
                    f"({len(self._pending_hvp.params)} before, {len(params)} now); every micro-batch of a step "
                    "must reach the same parameters"
                )
            self._pending_hvp.add(grads)
        finally:
            release_graph(params)

    def zero_grad(self, set_to_none: bool = True) -> None:
        super().zero_grad(set_to_none=set_to_none)
        self._pending_hvp = None  # a new step starts: no micro-batch has been folded in yet

    # -- step -----------------------------------------------------------------------------
    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None) -> torch.Tensor | None:
        """One update. A closure must itself call ``loss.backward(create_graph=self.should_create_graph())``."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()

        reduce_over = active_process_group(self.process_group)
        if reduce_over is not None:
            fill_missing_grads_([p for group in self.param_groups for p in group["params"]])
        groups = []
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if any(p.grad.is_sparse for p in params):
                release_graph(params)
                raise RuntimeError(f"{type(self).__name__} does not support sparse gradients")
            groups.append((group, params, self._group_due(group)))

        all_params = [p for _, params, _ in groups for p in params]
        pending, self._pending_hvp = self._pending_hvp, None
        if not all_params:
            return loss
        try:
            due = {p for _, params, due in groups if due for p in params}
            products = self._products(all_params, due, pending) if due else {}
            grads = [p.grad.detach() for p in all_params]  # the same storage as p.grad
            # Averaged before the estimator squares anything; grads and H·v share the buckets.
            all_reduce_mean_(grads + [h for _, h in products.values()], reduce_over)
            estimate = ESTIMATORS[self.estimator]
            samples = {p: estimate(v, h) for p, (v, h) in products.items()}
            if not _all_finite(grads + list(samples.values())):
                warnings.warn(
                    f"{type(self).__name__}: non-finite gradient or Hessian-vector product; "
                    f"step {self.param_groups[0][STEP_COUNT]} skipped, optimizer state unchanged",
                    RuntimeWarning,
                    stacklevel=2,
                )
                return loss
            grad_of = dict(zip(all_params, grads))
            for group, params, group_due in groups:
                group_samples = [samples[p] for p in params] if group_due else None
                self._update_group(group, params, [grad_of[p] for p in params], group_samples)
                if group_due:
                    group[LAST_HVP_STEP] = group[STEP_COUNT]
            for group in self.param_groups:
                group[STEP_COUNT] += 1
        finally:
            release_graph(all_params)
        return loss

    def _products(
        self, all_params: list[torch.Tensor], due: set[torch.Tensor], pending: HvpSum | None
    ) -> dict[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """(probe, H·v) of every parameter of a due group, from one probe over all parameters (so
        that H is the whole Hessian): the micro-batches' sum if ``accumulate()`` gathered one, else
        one double backward now."""
        if pending is not None:
            if not _same_tensors(pending.params, all_params):
                raise RuntimeError(
                    f"{type(self).__name__}.step: the accumulated H·v covers {len(pending.params)} parameters but "
                    f"{len(all_params)} have a gradient; call accumulate() after the last micro-batch's backward"
                )
            return {p: (v, h) for p, v, h in zip(all_params, pending.probes, pending.total) if p in due}
        all_grads = [p.grad for p in all_params]
        if not any(g.requires_grad for g in all_grads):
            hint = _DDP_HINT if active_process_group(self.process_group) is not None else ""
            raise RuntimeError(f"{type(self).__name__}: {MISSING_GRAPH_HINT}{hint}")
        probes = self._probes(all_params)
        with torch.enable_grad():
            products = hvp(all_grads, all_params, probes)
        return {p: (v, h) for p, v, h in zip(all_params, probes, products) if p in due}

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


_DDP_HINT = (
    "; a model wrapped in DistributedDataParallel must run forward and backward inside model.no_sync(), "
    "since this optimizer averages gradients and H·v over the process group itself"
)


def _same_tensors(first: list[torch.Tensor], second: list[torch.Tensor]) -> bool:
    """The same tensors in the same order (by identity: ``==`` on tensors compares values)."""
    return len(first) == len(second) and all(a is b for a, b in zip(first, second))


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
