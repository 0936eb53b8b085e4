"""Hessian-vector products H·v without forming H.

Double backward (reverse-over-reverse): with g = ∇θ L built with ``create_graph=True``,
    H v = ∇θ (gᵀ v),
one extra backward pass through the graph of g.

Forward-over-reverse: H v = d/dε ∇θ L(θ + ε v) at ε = 0, a ``torch.func.jvp`` of
``torch.func.grad``; it needs the loss as a pure function of the parameters.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch

MISSING_GRAPH_HINT = (
    "gradients carry no autograd graph, so no Hessian-vector product can be taken; "
    "call loss.backward(create_graph=opt.should_create_graph()) before opt.step()"
)


def hvp(
    grads: Sequence[torch.Tensor],
    params: Sequence[torch.Tensor],
    vectors: Sequence[torch.Tensor],
    retain_graph: bool = False,
) -> list[torch.Tensor]:
    """H·v by double backward, from gradients computed with ``create_graph=True``.

    A gradient entry that does not depend on any parameter contributes a zero row of H.
    The graph is freed afterwards unless ``retain_graph`` is set.
    """
    if not (len(grads) == len(params) == len(vectors)):
        raise ValueError(
            f"hvp needs one gradient and one vector per parameter, got {len(grads)} gradients, "
            f"{len(params)} parameters and {len(vectors)} vectors"
        )
    with_graph = [i for i, g in enumerate(grads) if g.requires_grad]
    if not with_graph:
        raise RuntimeError(MISSING_GRAPH_HINT)
    products = torch.autograd.grad(
        outputs=[grads[i] for i in with_graph],
        inputs=list(params),
        grad_outputs=[vectors[i] for i in with_graph],
        retain_graph=retain_graph,
        allow_unused=True,
    )
    return [torch.zeros_like(p) if hv is None else hv for p, hv in zip(params, products)]


def release_graph(params: Sequence[torch.Tensor]) -> None:
    """Drop the autograd graph that ``backward(create_graph=True)`` hangs off ``p.grad`` (it
    references p: a param↔grad cycle, and it keeps the whole forward alive)."""
    for p in params:
        if p.grad is not None and p.grad.grad_fn is not None:
            p.grad = p.grad.detach()


def functional_hvp(
    loss_fn: Callable[[dict[str, torch.Tensor]], torch.Tensor],
    params: Mapping[str, torch.Tensor],
    vectors: Mapping[str, torch.Tensor],
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Gradient and H·v by forward-over-reverse for a loss that is a pure function of ``params``.

    Returns ``(grad, hvp)``, both dicts keyed like ``params``. Use with
    ``torch.func.functional_call`` to turn an ``nn.Module`` into such a function.
    """
    primals = {k: v.detach() for k, v in params.items()}
    tangents = {k: vectors[k] for k in primals}
    grad, hv = torch.func.jvp(torch.func.grad(loss_fn), (primals,), (tangents,))
    return grad, hv
