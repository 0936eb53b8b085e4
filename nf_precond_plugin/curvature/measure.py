"""H·v samples for measuring curvature (diagnostics, the advisor, benchmarks), not for a step.

    hvp_samples(loss_fn, params, probes=k) → k Rademacher probes v and their products H v

at the current parameters. The loss is evaluated once; its gradient is taken with
``create_graph=True``, and each probe is one more backward pass through that gradient's graph
(:func:`~nf_precond_plugin.curvature.hvp.hvp`). Parameters the loss does not use are left out:
their H·v is trivially zero, and counting those zeros would make a field with an unused head look
sparse. The graph is freed after the last probe, unless ``retain_graph`` keeps it for a backward
pass that follows.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch

from nf_precond_plugin.curvature.hvp import hvp
from nf_precond_plugin.curvature.probes import rademacher_like


@dataclass(frozen=True)
class HvpSamples:
    """``products[k][i]`` = (H ``probes[k]``) at ``params[i]``, detached; iterates as (probe, product) pairs."""

    params: list[torch.Tensor]
    """The parameters the loss depends on, in the order given."""
    indices: list[int]
    """Their positions in the ``params`` passed to :func:`hvp_samples`."""
    probes: list[list[torch.Tensor]]
    products: list[list[torch.Tensor]]

    def __iter__(self) -> Iterator[tuple[list[torch.Tensor], list[torch.Tensor]]]:
        return iter(zip(self.probes, self.products))

    def __len__(self) -> int:
        return len(self.probes)


def hvp_samples(
    loss_fn: Callable[[], torch.Tensor],
    params: Sequence[torch.Tensor],
    probes: int = 1,
    generator: torch.Generator | None = None,
    retain_graph: bool = False,
) -> HvpSamples:
    """``probes`` Rademacher probes (from ``generator``, else the global RNG) and their H·v at one
    evaluation of ``loss_fn()``, over the parameters it uses.

    A loss whose gradient carries no graph (linear in the parameters) has H = 0: its products are
    zeros. A loss that uses none of the parameters is an error.
    """
    if probes < 1:
        raise ValueError(f"hvp_samples needs at least one probe, got {probes}")
    params = list(params)
    loss = loss_fn()
    grads = torch.autograd.grad(loss, params, create_graph=True, allow_unused=True)
    indices = [i for i, g in enumerate(grads) if g is not None]
    if not indices:
        raise ValueError("the loss depends on none of the parameters: there is no H·v to measure")
    used = [params[i] for i in indices]
    used_grads = [grads[i] for i in indices]
    del loss, grads
    with_graph = any(g.requires_grad for g in used_grads)
    drawn, products = [], []
    for k in range(probes):
        vectors = rademacher_like(used, generator)
        if with_graph:
            keep = retain_graph or k < probes - 1
            product = [h.detach() for h in hvp(used_grads, used, vectors, retain_graph=keep)]
        else:
            product = [torch.zeros_like(p) for p in used]
        drawn.append(vectors)
        products.append(product)
    del used_grads
    return HvpSamples(params=used, indices=indices, probes=drawn, products=products)
