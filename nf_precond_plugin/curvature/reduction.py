"""Data parallelism for curvature estimates: average gradients and H·v over a process group.

For a loss L = (1/K) Σₖ Lₖ split over K ranks (each on its shard of the batch), and one probe v
that every rank draws identically,
    g   = (1/K) Σₖ gₖ,
    H v = (1/K) Σₖ Hₖ v.
Both are averaged *before* an estimator squares them: averaging the squares would estimate
(1/K) Σₖ diag(Hₖ²), which is ≥ diag(H²) and grows with K. Tensors are packed into buckets of
``bucket_bytes`` so that each bucket costs one all-reduce, as DistributedDataParallel's buckets.
Without torch.distributed, or with a single process, every function here is a no-op.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
import torch.distributed as dist

DEFAULT_BUCKET_BYTES = 25 * 2**20
"""DistributedDataParallel's default ``bucket_cap_mb`` (25 MiB)."""


def active_process_group(group: dist.ProcessGroup | None = None) -> dist.ProcessGroup | None:
    """The group to reduce over (``group``, else the default one), or None if there is nothing to reduce."""
    if not (dist.is_available() and dist.is_initialized()):
        return None
    group = dist.group.WORLD if group is None else group
    return group if dist.get_world_size(group) > 1 else None


def fill_missing_grads_(params: Sequence[torch.Tensor]) -> None:
    """A zero gradient for every trainable parameter that has none on this rank.

    A parameter may get a gradient on some ranks only (a branch of the model no sample of this
    shard took); the collectives need the same tensors on every rank, and the mean over ranks
    then counts this rank's contribution as zero, as DDP does for unused parameters.
    """
    for p in params:
        if p.requires_grad and p.grad is None:
            p.grad = torch.zeros_like(p)


def buckets(tensors: Sequence[torch.Tensor], bucket_bytes: int = DEFAULT_BUCKET_BYTES) -> Iterator[list[int]]:
    """Indices of ``tensors`` in consecutive runs of one dtype and device, each at most ``bucket_bytes``
    (a single larger tensor is a bucket of its own)."""
    current: list[int] = []
    size = 0
    for index, tensor in enumerate(tensors):
        nbytes = tensor.numel() * tensor.element_size()
        first = tensors[current[0]] if current else tensor
        kind_changed = (tensor.dtype, tensor.device) != (first.dtype, first.device)
        if current and (kind_changed or size + nbytes > bucket_bytes):
            yield current
            current, size = [], 0
        current.append(index)
        size += nbytes
    if current:
        yield current


def all_reduce_mean_(
    tensors: Sequence[torch.Tensor],
    group: dist.ProcessGroup | None,
    bucket_bytes: int = DEFAULT_BUCKET_BYTES,
) -> int:
    """Replace every tensor by its mean over ``group``, in place; returns the number of all-reduces.

    ``group`` is what ``active_process_group`` returned: None reduces nothing. Every rank must
    pass tensors of the same shapes in the same order.
    """
    if group is None or not tensors:
        return 0
    world_size = dist.get_world_size(group)
    collectives = 0
    for bucket in buckets(tensors, bucket_bytes):
        members = [tensors[i] for i in bucket]
        flat = torch.cat([t.reshape(-1) for t in members])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=group)  # gloo has no AVG
        flat.div_(world_size)
        for tensor, chunk in zip(members, flat.split([t.numel() for t in members])):
            tensor.copy_(chunk.view_as(tensor))
        collectives += 1
    return collectives


def broadcast_int(value: int, group: dist.ProcessGroup | None, device: torch.device | str = "cpu") -> int:
    """The first rank of ``group``'s ``value`` on every rank (``value`` itself without a group).

    ``device`` is where this rank's tensors live: nccl needs each rank's own GPU (its current
    device may be another rank's, e.g. cuda:0, when the launcher never called set_device)."""
    if group is None:
        return value
    if dist.get_backend(group) != "nccl":
        device = "cpu"
    carrier = torch.tensor([value], dtype=torch.int64, device=device)
    dist.broadcast(carrier, src=dist.get_global_rank(group, 0), group=group)
    return int(carrier.item())
