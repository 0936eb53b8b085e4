"""The one training-step contract every loop of the project uses (runner, NeRF trainer, advisor,
diagnostics, benchmarks), and its one implementation, ``training_step``, the only caller of backward:

    optimizer.zero_grad(set_to_none=True)
    loss = compute_loss()
    loss.backward(create_graph=any optimizer's coming step takes a Hessian-vector product)
    optimizer.step()

A curvature optimizer differentiates the gradient again on its H·v steps, so backward must keep
the gradient's graph exactly then (``should_create_graph()``), and only then: a graph on every step
would cost memory and time for nothing. Optimizers without that method never need one.

What the loop needs from an optimizer is stated by two protocols: ``GraphOnDemand`` (it says when
backward must build a graph) and ``CurvatureStepper`` (it also averages its own gradients across
processes and folds micro-batches' H·v in); any other ``torch.optim.Optimizer`` is a plain one.

Across processes (torch.distributed initialised), an optimizer that ``reduces_gradients`` itself
(the curvature optimizers: they must take H·v from the local graph first) averages in its
``step()``; every other optimizer's gradients are averaged here before its ``step()``, one
all-reduce per bucket. A model wrapped in DistributedDataParallel runs forward and backward
inside ``no_sync()`` when a curvature optimizer is present, since DDP cannot reduce gradients
that carry a graph; with plain optimizers only, DDP does its own reduction (on the last
micro-batch of a step) and nothing is averaged here.

Gradient accumulation: ``micro_batch=(k, K)`` divides the loss by K, zeroes gradients at k = 0,
folds curvature optimizers' H·v in with ``accumulate()`` and steps at k = K − 1 only.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import ClassVar, Generic, Protocol, TypeVar, runtime_checkable

import torch
from torch.nn.parallel import DistributedDataParallel

from nf_precond_plugin.curvature import active_process_group, all_reduce_mean_, fill_missing_grads_, release_graph

AuxT = TypeVar("AuxT")


class NonFiniteLossError(FloatingPointError):
    """The loss was NaN or ±inf before backward; nothing was updated."""

    def __init__(self, value: float) -> None:
        super().__init__(f"the loss became {value}")
        self.value = value


@runtime_checkable
class GraphOnDemand(Protocol):
    """An optimizer whose coming ``step()`` may differentiate the gradient again."""

    def should_create_graph(self) -> bool:
        """Whether backward must keep the gradient's graph for the coming ``step()``."""
        ...


@runtime_checkable
class CurvatureStepper(GraphOnDemand, Protocol):
    """A curvature optimizer (``nf_precond_plugin.optim.base.CurvatureOptimizer``): it takes H·v from
    the local graph, so it averages gradients and H·v over the process group in its own ``step()``,
    and it folds each micro-batch's H·v into the step with ``accumulate()`` right after that
    micro-batch's backward."""

    reduces_gradients: ClassVar[bool]

    def accumulate(self) -> None: ...


def needs_create_graph(*optimizers: torch.optim.Optimizer) -> bool:
    """Whether backward must build a graph for the coming ``step()`` of any of ``optimizers``."""
    return any(isinstance(opt, GraphOnDemand) and opt.should_create_graph() for opt in optimizers)


def _params_of(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    return [p for group in optimizer.param_groups for p in group["params"]]


def reduces_own_gradients(optimizer: torch.optim.Optimizer) -> bool:
    """Whether ``optimizer.step()`` averages gradients over the process group itself."""
    return isinstance(optimizer, CurvatureStepper) and optimizer.reduces_gradients


def average_gradients(optimizers: Sequence[torch.optim.Optimizer]) -> int:
    """Average over the default process group the gradients of the optimizers that do not do it
    themselves, one all-reduce per bucket; returns the number of all-reduces (0 in one process)."""
    group = active_process_group()
    if group is None:
        return 0
    params = [p for opt in optimizers if not reduces_own_gradients(opt) for p in _params_of(opt) if p.requires_grad]
    fill_missing_grads_(params)  # the same tensors on every rank, as in the curvature optimizers' step()
    return all_reduce_mean_([p.grad for p in params], group)


@dataclass
class StepResult(Generic[AuxT]):
    loss: torch.Tensor
    """The loss, detached."""
    aux: AuxT
    """Whatever ``compute_loss`` returned next to the loss (a prediction, say)."""
    optimizer_seconds: float
    """Time spent inside the optimizers' ``step()`` (where the H·v is taken)."""
    stepped: bool = True
    """False for a micro-batch that only accumulated (all but the last of a step)."""


def training_step(
    optimizers: Sequence[torch.optim.Optimizer],
    compute_loss: Callable[[], tuple[torch.Tensor, AuxT]],
    *,
    inputs: Sequence[torch.Tensor] | None = None,
    apply_step: Callable[[], None] | None = None,
    check_finite: bool = True,
    micro_batch: tuple[int, int] = (0, 1),
    model: torch.nn.Module | None = None,
) -> StepResult[AuxT]:
    """One step (or one micro-batch of it) of the contract above over ``optimizers``.

    Args:
        optimizers: every optimizer the loss's parameters belong to.
        compute_loss: the forward pass, returning ``(loss, aux)``.
        inputs: if given, gradients are accumulated into these tensors only (``backward(inputs=)``).
        apply_step: replaces ``opt.step()`` for each optimizer (nerfstudio's ``optimizer_step_all``).
        check_finite: raise ``NonFiniteLossError`` before backward when the loss is NaN or ±inf
            (one host synchronisation).
        micro_batch: ``(k, K)``: this is micro-batch k of K of one step (gradient accumulation).
        model: the module, if it may be wrapped in DistributedDataParallel (see above).
    """
    index, count = micro_batch
    if not 0 <= index < count:
        raise ValueError(f"micro_batch: expected (k, K) with 0 <= k < K, got {micro_batch}")
    if index == 0:
        for opt in optimizers:
            opt.zero_grad(set_to_none=True)
    curvature = [opt for opt in optimizers if reduces_own_gradients(opt)]
    wrapped = isinstance(model, DistributedDataParallel)
    # DDP syncs only the last micro-batch of plain optimizers, and never for curvature ones
    unsynced = model.no_sync() if wrapped and (curvature or index < count - 1) else contextlib.nullcontext()
    with unsynced:
        loss, aux = compute_loss()
        if check_finite:
            value = float(loss.detach())
            if not math.isfinite(value):
                raise NonFiniteLossError(value)
        scaled = loss / count if count > 1 else loss
        create_graph = needs_create_graph(*optimizers)
        scaled.backward(create_graph=create_graph, inputs=None if inputs is None else list(inputs))
    if create_graph:
        # Only H·v optimizers differentiate their gradients again; a graph left on the others'
        # p.grad would keep every micro-batch's forward alive until the next zero_grad.
        for opt in optimizers:
            if not needs_create_graph(opt):
                release_graph(_params_of(opt))
    if count > 1:
        for opt in curvature:
            opt.accumulate()
    if index < count - 1:
        return StepResult(loss.detach(), aux, 0.0, stepped=False)
    start = time.perf_counter()
    if not (wrapped and not curvature):  # else DDP has averaged them in backward
        average_gradients(optimizers)
    if apply_step is None:
        for opt in optimizers:
            opt.step()
    else:
        apply_step()
    return StepResult(loss.detach(), aux, time.perf_counter() - start)
