"""Several processes for the standalone runner: torchrun's environment → one process group.

    torchrun --nproc-per-node N standalone/image.py --compare adam,esgd

Each rank trains the same model on its contiguous 1/N of every global minibatch, so the global
batch, its order and (with the curvature optimizers' own probe generator) the probes are those
of the one-process run; gradients and H·v are averaged before every update (``optim.base``), so
the ranks' parameters stay identical. Rank 0 alone writes the run directory and shows progress.

A rank that dies makes its peers' next collective fail (gloo: the connection closes) or time out
after ``COLLECTIVE_TIMEOUT_ENV`` seconds, so no run hangs.
"""

from __future__ import annotations

import gc
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from nf_precond_plugin.errors import PeerProcessLost, UserInputError

COLLECTIVE_TIMEOUT_ENV = "NF_PRECOND_COLLECTIVE_TIMEOUT"
"""Seconds a collective may wait for a peer before the run fails (default 1800, torch's own).

Long enough for rank 0's evaluation and exports, which the other ranks wait out in their next
collective; a peer that dies is noticed at once anyway (its connections close)."""
DEFAULT_COLLECTIVE_TIMEOUT_S = 1800.0

T = TypeVar("T")


@dataclass(frozen=True)
class Ranks:
    """This process's place among the data-parallel processes."""

    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def current_ranks() -> Ranks:
    """The default process group's ranks, or a single process when torch.distributed is not initialised."""
    if dist.is_available() and dist.is_initialized():
        return Ranks(dist.get_rank(), dist.get_world_size())
    return Ranks()


def collective_timeout() -> timedelta:
    raw = os.environ.get(COLLECTIVE_TIMEOUT_ENV, str(DEFAULT_COLLECTIVE_TIMEOUT_S))
    try:
        seconds = float(raw)
    except ValueError:
        seconds = -1.0
    if not seconds > 0:
        raise UserInputError(f"{COLLECTIVE_TIMEOUT_ENV}={raw}: expected a number of seconds > 0")
    return timedelta(seconds=seconds)


def join_process_group(device_type: str = "cpu") -> Ranks:
    """Initialise the default process group from torchrun's environment (gloo on the CPU, nccl on
    CUDA) when it names more than one process; a no-op otherwise."""
    if dist.is_available() and dist.is_initialized():
        return current_ranks()
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return Ranks()
    if not dist.is_available():  # pragma: no cover - every supported torch build has it
        raise UserInputError(f"WORLD_SIZE={world_size}: this torch build has no torch.distributed")
    backend = "nccl" if device_type == "cuda" else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend, timeout=collective_timeout())
    return current_ranks()


def training_device(requested: str) -> torch.device:
    """The device ``--device`` names, checked; under torchrun, ``cuda`` is this rank's own GPU."""
    try:
        device = torch.device(requested)
    except RuntimeError:
        raise UserInputError(f"--device {requested}: expected cpu, cuda or cuda:N") from None
    if device.type not in ("cpu", "cuda"):
        raise UserInputError(f"--device {requested}: expected cpu, cuda or cuda:N")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UserInputError(f"--device {requested}: this machine has no CUDA device; use --device cpu")
        if int(os.environ.get("WORLD_SIZE", "1")) > 1 and device.index is not None:
            raise UserInputError(
                f"--device {requested}: under torchrun each rank takes its own GPU (cuda:LOCAL_RANK); "
                "pass --device cuda"
            )
        if device.index is None:
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        if device.index >= torch.cuda.device_count():
            raise UserInputError(f"--device {requested}: only {torch.cuda.device_count()} CUDA device(s) here")
    return device


def leave_process_group(finished: bool = True) -> None:
    """Tear the process group down; after a finished run, only once every rank got there (gloo
    aborts a process whose peer closes while it still sends)."""
    if dist.is_available() and dist.is_initialized():
        if finished and dist.get_world_size() > 1:
            with peers_watched(current_ranks(), "the run itself had finished"):
                dist.barrier()
        dist.destroy_process_group()
        # Drop what still refers to the group now: a gloo group torn down during interpreter
        # finalisation can abort the process ("terminate called without an active exception").
        gc.collect()


def from_main(value: T) -> T:
    """Rank 0's ``value`` on every rank (``value`` itself in one process)."""
    if current_ranks().world_size == 1:
        return value
    carrier: list[Any] = [value]
    dist.broadcast_object_list(carrier, src=0)
    return carrier[0]


def broadcast_module_(module: torch.nn.Module) -> None:
    """Rank 0's parameters and buffers into every rank's ``module``, in place: what
    DistributedDataParallel does when it wraps a module, for processes seeded apart."""
    if current_ranks().world_size == 1:
        return
    for tensor in module.state_dict(keep_vars=True).values():
        dist.broadcast(tensor.data, src=0)


def local_shard(batch: torch.Tensor, ranks: Ranks) -> torch.Tensor:
    """This rank's contiguous 1/N of a global minibatch (the batch size is checked to divide)."""
    if ranks.world_size == 1:
        return batch
    size = batch.shape[0] // ranks.world_size
    return batch[ranks.rank * size : (ranks.rank + 1) * size]


def _is_collective_failure(error: BaseException) -> bool:
    if isinstance(error, dist.DistError):
        return True
    # gloo reports a closed or reset peer connection as a plain RuntimeError
    text = str(error)
    return isinstance(error, RuntimeError) and any(
        marker in text for marker in ("gloo", "Connection reset", "Connection closed", "NCCL", "timed out")
    )


@contextmanager
def peers_watched(ranks: Ranks, kept: str) -> Iterator[None]:
    """Turn a failed collective into ``PeerProcessLost`` (one line) naming this rank and what is kept."""
    try:
        yield
    except Exception as error:
        if ranks.world_size == 1 or not _is_collective_failure(error):
            raise
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise PeerProcessLost(
            f"rank {ranks.rank} of {ranks.world_size}: a collective failed, so another process of this run "
            f"died or hung ({first_line[:160]}); {kept}"
        ) from None
