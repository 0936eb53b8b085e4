"""The one training-step contract every loop of the project uses (runner, NeRF trainer, diagnostics).

    optimizer.zero_grad(set_to_none=True)
    loss = compute_loss()
    loss.backward(create_graph=any optimizer's coming step takes a Hessian-vector product)
    optimizer.step()

A curvature optimizer differentiates the gradient again on its H·v steps, so backward must keep
the gradient's graph exactly then (``should_create_graph()``), and only then: a graph on every step
would cost memory and time for nothing. Optimizers without that method never need one.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

import torch

AuxT = TypeVar("AuxT")


class NonFiniteLossError(FloatingPointError):
    """The loss was NaN or ±inf before backward; nothing was updated."""

    def __init__(self, value: float) -> None:
        super().__init__(f"the loss became {value}")
        self.value = value


def needs_create_graph(*optimizers: torch.optim.Optimizer) -> bool:
    """Whether backward must build a graph for the coming ``step()`` of any of ``optimizers``."""
    return any(getattr(opt, "should_create_graph", lambda: False)() for opt in optimizers)


@dataclass
class StepResult(Generic[AuxT]):
    loss: torch.Tensor
    """The loss, detached."""
    aux: AuxT
    """Whatever ``compute_loss`` returned next to the loss (a prediction, say)."""
    optimizer_seconds: float
    """Time spent inside the optimizers' ``step()`` (where the H·v is taken)."""


def training_step(
    optimizers: Sequence[torch.optim.Optimizer],
    compute_loss: Callable[[], tuple[torch.Tensor, AuxT]],
    *,
    inputs: Sequence[torch.Tensor] | None = None,
    apply_step: Callable[[], None] | None = None,
    check_finite: bool = True,
) -> StepResult[AuxT]:
    """One step of the contract above over ``optimizers``.

    Args:
        optimizers: every optimizer the loss's parameters belong to.
        compute_loss: the forward pass, returning ``(loss, aux)``.
        inputs: if given, gradients are accumulated into these tensors only (``backward(inputs=)``).
        apply_step: replaces ``opt.step()`` for each optimizer (nerfstudio's ``optimizer_step_all``).
        check_finite: raise ``NonFiniteLossError`` before backward when the loss is NaN or ±inf
            (one host synchronisation).
    """
    for opt in optimizers:
        opt.zero_grad(set_to_none=True)
    loss, aux = compute_loss()
    if check_finite:
        value = float(loss.detach())
        if not math.isfinite(value):
            raise NonFiniteLossError(value)
    loss.backward(create_graph=needs_create_graph(*optimizers), inputs=None if inputs is None else list(inputs))
    start = time.perf_counter()
    if apply_step is None:
        for opt in optimizers:
            opt.step()
    else:
        apply_step()
    return StepResult(loss.detach(), aux, time.perf_counter() - start)
