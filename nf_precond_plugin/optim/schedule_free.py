"""Schedule-free averaging (Defazio et al., 2024) around any optimizer, curvature ones included.

The base optimizer's update Δ_t moves a sequence z; the model is evaluated at x, a weighted
average of the z's, and trained (gradients and H·v taken) at y, between the two:

    Δ_t = (base step taken at y_t) − y_t           the base optimizer's own update
    z_{t+1} = z_t + Δ_t
    x_{t+1} = (1 − c_{t+1}) x_t + c_{t+1} z_{t+1},   c_{t+1} = γ_t² / Σ_{i≤t} γ_i²   (γ_t: the group's lr)
    y_{t+1} = (1 − β) z_{t+1} + β x_{t+1}

with x_0 = y_0 = z_0 = θ_0. With a constant lr, c_{t+1} = 1/(t + 1): x is the plain average of the
z's. The base optimizer steps first, from y, on the graph backward just built there (a wrapper
that first moved the parameters to z would break the H·v of a curvature optimizer); the averages
move after it (``pytorch_optimizer.ScheduleFreeWrapper`` moves the parameters to z in place before
the base step, under a graph that saved them, so a curvature optimizer would differentiate the wrong
point). ``eval()`` puts x into the parameters for evaluation, checkpoints and exports;
``train()`` puts y back, exactly.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch


class ScheduleFree(torch.optim.Optimizer):
    """Schedule-free averaging over ``base``'s updates (module docstring).

    Args:
        base: the optimizer whose update moves z; its param groups are this optimizer's, so a
            learning-rate scheduler over either acts on both.
        beta: β, the interpolation between z and x at which gradients are taken.
    """

    def __init__(self, base: torch.optim.Optimizer, beta: float = 0.9) -> None:
        if not 0.0 <= beta < 1.0:
            raise ValueError(f"Invalid beta: {beta} (expected 0 <= beta < 1)")
        self.base = base
        self.beta = beta
        self.train_mode = True
        self.weight_sums: list[float] = []
        self.averages: dict[torch.Tensor, dict[str, torch.Tensor]] = {}
        # torch.optim.Optimizer's bookkeeping, over the base's groups (not re-registered)
        self.defaults = base.defaults
        self.param_groups = base.param_groups
        self.state = base.state
        self._optimizer_step_pre_hooks = {}
        self._optimizer_step_post_hooks = {}
        self._optimizer_state_dict_pre_hooks = {}
        self._optimizer_state_dict_post_hooks = {}
        self._optimizer_load_state_dict_pre_hooks = {}
        self._optimizer_load_state_dict_post_hooks = {}

    def _params(self) -> list[torch.Tensor]:
        return [p for group in self.param_groups for p in group["params"]]

    # -- what the training step asks of an optimizer (nf_precond_plugin.training.step) --------
    @property
    def reduces_gradients(self) -> bool:
        return bool(getattr(self.base, "reduces_gradients", False))

    def should_create_graph(self) -> bool:
        ask = getattr(self.base, "should_create_graph", None)
        return bool(ask()) if ask is not None else False

    def accumulate(self) -> None:
        self.base.accumulate()

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.base.zero_grad(set_to_none=set_to_none)

    # -- the averaging ---------------------------------------------------------------------
    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None) -> torch.Tensor | None:
        if not self.train_mode:
            raise RuntimeError("ScheduleFree.step() in eval mode: call train() before training")
        params = self._params()
        for p in params:
            if p not in self.averages:
                self.averages[p] = {"z": p.detach().clone(), "x": p.detach().clone()}
        before = {p: p.detach().clone() for p in params}
        loss = self.base.step(closure)
        if all(torch.equal(p, before[p]) for p in params):
            return loss  # the base skipped this step (a non-finite gradient, say): nothing to average
        if len(self.weight_sums) != len(self.param_groups):
            self.weight_sums = [0.0] * len(self.param_groups)
        for index, group in enumerate(self.param_groups):
            weight = float(group["lr"]) ** 2  # γ_t²: each group weighs its iterates by its own lr
            self.weight_sums[index] += weight
            c = weight / self.weight_sums[index] if self.weight_sums[index] > 0 else 0.0
            for p in group["params"]:
                z, x = self.averages[p]["z"], self.averages[p]["x"]
                z.add_(p).sub_(before[p])  # z ← z + Δ
                x.lerp_(z, c)  # x ← (1 − c) x + c z
                torch.lerp(z, x, self.beta, out=p.data)  # y ← (1 − β) z + β x
        return loss

    def eval(self) -> None:
        """Parameters ← x (the averaged weights), keeping y to restore exactly."""
        if not self.train_mode:
            return
        for p in self._params():
            if p in self.averages:
                self.averages[p]["y"] = p.detach().clone()
                p.data.copy_(self.averages[p]["x"])
        self.train_mode = False

    def train(self) -> None:
        """Parameters ← y (the training point), exactly as before ``eval()``."""
        if self.train_mode:
            return
        for p in self._params():
            if p in self.averages:
                p.data.copy_(self.averages[p].pop("y"))
        self.train_mode = True

    def state_dict(self) -> dict[str, Any]:
        params = self._params()
        return {
            "base": self.base.state_dict(),
            "averages": {i: dict(self.averages[p]) for i, p in enumerate(params) if p in self.averages},
            "weight_sums": list(self.weight_sums),
            "train_mode": self.train_mode,
            "beta": self.beta,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.base.load_state_dict(state_dict["base"])
        self.param_groups = self.base.param_groups
        self.state = self.base.state
        params = self._params()
        self.averages = {
            params[int(i)]: {key: value.to(params[int(i)]).clone() for key, value in saved.items()}
            for i, saved in state_dict["averages"].items()
        }
        self.weight_sums = [float(w) for w in state_dict["weight_sums"]]
        self.train_mode = bool(state_dict["train_mode"])
        self.beta = float(state_dict["beta"])
