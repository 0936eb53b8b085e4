"""H·v summed over micro-batches for one shared probe.

For L = Σₖ Lₖ (each micro-batch's loss already divided by their number K), H = Σₖ Hₖ, so for a
fixed probe v
    H v = Σₖ Hₖ v,
taken one micro-batch at a time: each Hₖ v is one double backward through micro-batch k's graph,
which is freed before the next micro-batch is built. Drawing a new probe per micro-batch would
instead sum products of different v, which estimates nothing.

After backward builds the graph, ``p.grad`` is (earlier micro-batches' gradients, constant) +
gₖ(θ), so differentiating ``p.grad · v`` gives exactly Hₖ v.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from nf_precond_plugin.curvature.hvp import hvp


class HvpSum:
    """Σₖ Hₖ v over micro-batches, for the probes ``probes`` of ``params`` (drawn once)."""

    def __init__(self, params: Sequence[torch.Tensor], probes: Sequence[torch.Tensor]) -> None:
        if len(params) != len(probes):
            raise ValueError(f"HvpSum needs one probe per parameter, got {len(params)} and {len(probes)}")
        self.params = list(params)
        self.probes = list(probes)
        self.total: list[torch.Tensor] = [torch.zeros_like(p) for p in self.params]

    def add(self, grads: Sequence[torch.Tensor]) -> None:
        """Add Hₖ v from gradients whose graph is micro-batch k's (built with ``create_graph=True``)."""
        with torch.enable_grad():
            products = hvp(grads, self.params, self.probes)
        torch._foreach_add_(self.total, products)
