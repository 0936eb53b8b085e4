"""Peers of the league that need a little glue to follow the project's training-step contract.

- ``MuonAdam``: ``torch.optim.Muon`` on the hidden weight matrices (every ``nn.Linear`` weight but
  the first and the last, as Muon's authors recommend), ``torch.optim.Adam`` on everything else.
  Muon's update is momentum orthogonalised by a Newton–Schulz iteration,
      X₀ = M / ‖M‖_F,   X ← a X + (b A + c A²) X,  A = X Xᵀ   (5 steps, (a, b, c) = (3.4445, −4.775, 2.0315)),
  which torch runs in bfloat16; bfloat16 matrix products are slow on most CPUs, so on the CPU
  (``newton_schulz_dtype=None``: float32 there, bfloat16 elsewhere) we run the same iteration in float32.
- ``SophiaHContract``: ``pytorch_optimizer.SophiaH`` (the clipped update
  θ ← θ − lr · clip(m / max(γ h, ε), 1), h an EMA of Hutchinson diag-H samples every
  ``update_period`` steps) with ``should_create_graph()``, so that backward builds a graph only on
  the steps where SophiaH takes its H·v, and with the graph released after every step.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch
from pytorch_optimizer import SophiaH
from torch import nn

from nf_precond_plugin.curvature import release_graph


def hidden_weight_matrices(model: nn.Module) -> list[nn.Parameter]:
    """The weights of every ``nn.Linear`` but the first and the last (in module order)."""
    linears = [m for m in model.modules() if type(m) is nn.Linear and m.weight.requires_grad]
    return [m.weight for m in linears[1:-1]]


@contextlib.contextmanager
def _newton_schulz_in(dtype: torch.dtype) -> Iterator[None]:
    """Run torch's Muon Newton–Schulz iteration in ``dtype`` instead of bfloat16."""
    from torch.optim import _muon

    original = _muon._zeropower_via_newtonschulz

    def iteration(grad, ns_coefficients, ns_steps, eps):
        # torch 2.14's iteration, step for step, in ``dtype`` (torch's casts to bfloat16 first)
        a, b, c = ns_coefficients
        x = grad.to(dtype)
        tall = grad.size(0) > grad.size(1)
        if tall:
            x = x.T
        x = x / x.norm().clamp(min=eps)
        for _ in range(ns_steps):
            gram = x @ x.T
            x = torch.addmm(x, torch.addmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
        return (x.T if tall else x).to(grad.dtype)

    _muon._zeropower_via_newtonschulz = iteration
    try:
        yield
    finally:
        _muon._zeropower_via_newtonschulz = original


class MuonAdam(torch.optim.Optimizer):
    """Muon on the hidden weight matrices, Adam on the rest, as one optimizer.

    Args:
        model: the network; its hidden ``nn.Linear`` weights go to Muon.
        lr: Muon's learning rate.
        adam_lr: Adam's learning rate for the first and last layers and all biases.
        momentum: Muon's momentum.
        weight_decay: Muon's decoupled weight decay (0: none, unlike torch's default of 0.1).
        newton_schulz_dtype: dtype of the Newton–Schulz iteration; None: float32 on the CPU,
            torch's bfloat16 elsewhere.
    """

    def __init__(
        self,
        model: nn.Module,
        lr: float = 0.005,
        adam_lr: float = 1e-3,
        momentum: float = 0.95,
        weight_decay: float = 0.0,
        newton_schulz_dtype: torch.dtype | None = None,
    ) -> None:
        hidden = hidden_weight_matrices(model)
        if not hidden:
            raise ValueError("MuonAdam: the model has no hidden nn.Linear weight matrix for Muon")
        hidden_ids = {id(p) for p in hidden}
        rest = [p for p in model.parameters() if p.requires_grad and id(p) not in hidden_ids]
        self.muon = torch.optim.Muon(hidden, lr=lr, momentum=momentum, weight_decay=weight_decay)
        self.adam = torch.optim.Adam(rest, lr=adam_lr)
        self.newton_schulz_dtype = newton_schulz_dtype
        super().__init__([{"params": hidden}, {"params": rest}], dict(lr=lr))
        # one set of groups: the two inner optimizers' (so schedulers and state_dict see them)
        self.param_groups = self.muon.param_groups + self.adam.param_groups

    def _dtype(self) -> torch.dtype | None:
        if self.newton_schulz_dtype is not None:
            return self.newton_schulz_dtype
        device = self.muon.param_groups[0]["params"][0].device
        return torch.float32 if device.type == "cpu" else None

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None) -> torch.Tensor | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        dtype = self._dtype()
        with _newton_schulz_in(dtype) if dtype is not None else contextlib.nullcontext():
            self.muon.step()
        self.adam.step()
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.muon.zero_grad(set_to_none)
        self.adam.zero_grad(set_to_none)

    def state_dict(self) -> dict[str, Any]:
        return {"muon": self.muon.state_dict(), "adam": self.adam.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.muon.load_state_dict(state_dict["muon"])
        self.adam.load_state_dict(state_dict["adam"])
        # torch's load_state_dict gives the inner optimizers new group dicts: share those again,
        # or an lr scheduler over this optimizer would write lrs nobody reads
        self.param_groups = self.muon.param_groups + self.adam.param_groups


class SophiaHContract(SophiaH):
    """``pytorch_optimizer.SophiaH`` that says when backward must build a graph, and frees it after."""

    def should_create_graph(self) -> bool:
        # SophiaH takes its Hutchinson sample when (step − 1) % update_period == 0, step from 1
        return self.param_groups[0].get("step", 0) % self.update_period == 0

    @torch.no_grad()
    def step(self, closure=None):
        try:
            return super().step(closure)
        finally:
            release_graph([p for group in self.param_groups for p in group["params"]])
