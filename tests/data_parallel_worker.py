"""One rank of the data-parallel tests, and the toy problem they share with the one-process oracle.

Run as a script by ``test_data_parallel.py`` with RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT in
the environment (what torchrun sets); writes its final parameters and the size of every all-reduce
it made to ``OUT/rank<r>.pt``.

    python tests/data_parallel_worker.py OPTIMIZER STEPS OUT [--ddp] [--float64] [--own-group] [--micro-batches K]
        [--first-half-offset]

``--own-group`` hands the optimizer a group of its own (``process_group=``) instead of the default.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from nf_precond_plugin.fields import CoordinateMLP
from nf_precond_plugin.optim.factory import build_optimizer
from nf_precond_plugin.training.distributed import Ranks, leave_process_group, local_shard
from nf_precond_plugin.training.step import training_step

GLOBAL_BATCH = 64
NUM_POINTS = 512

# H·v on steps 0–9, then every 5th: 60 steps cross both kinds many times.
OPTIMIZER_CASES: dict[str, dict] = {
    "esgd": dict(d_warmup=10, update_d_every=5),
    "esgd-paper": dict(d_warmup=10, update_d_every=5),
    "adahessian": dict(d_warmup=10, update_d_every=5),
    "adam": {},
}
LEARNING_RATES = {"esgd": 1.0, "esgd-paper": 0.15, "adahessian": 0.01, "adam": 0.01}


def toy_data() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(7)
    x = torch.rand(NUM_POINTS, 2, generator=generator) * 2 - 1
    y = torch.sin(3 * x[:, :1]) * torch.cos(2 * x[:, 1:])
    return x, y


def train(
    name: str,
    steps: int,
    ranks: Ranks,
    *,
    micro_batches: int = 1,
    ddp: bool = False,
    dtype: torch.dtype = torch.float32,
    process_group=None,
    first_half_offset: bool = False,
) -> list[torch.Tensor]:
    """``steps`` steps on global minibatches of ``GLOBAL_BATCH``, this rank on its shard of each,
    each shard split into ``micro_batches``; returns the final parameters.

    ``first_half_offset`` adds a learnt offset to the predictions of the first half of every
    global batch only: with two ranks, rank 1 never gives it a gradient."""
    torch.manual_seed(0)
    model = CoordinateMLP(2, 1, 32, 3, "gaussian", sigma=0.3).to(dtype)
    if first_half_offset:
        model.register_parameter("offset", torch.nn.Parameter(torch.zeros(1, dtype=dtype)))
    # Different global RNGs on different ranks: the probes must still agree (seeded from rank 0).
    torch.manual_seed(1000 + ranks.rank)
    overrides = dict(OPTIMIZER_CASES[name], **({"process_group": process_group} if process_group else {}))
    optimizer = build_optimizer(name, model, LEARNING_RATES[name], **overrides)
    wrapped = torch.nn.parallel.DistributedDataParallel(model) if ddp else model
    x, y = (t.to(dtype) for t in toy_data())
    for step in range(steps):
        begin = (step * GLOBAL_BATCH) % NUM_POINTS
        x_local = local_shard(x[begin : begin + GLOBAL_BATCH], ranks)
        y_local = local_shard(y[begin : begin + GLOBAL_BATCH], ranks)
        first_half = local_shard(torch.arange(GLOBAL_BATCH) < GLOBAL_BATCH // 2, ranks)
        chunks = zip(x_local.chunk(micro_batches), y_local.chunk(micro_batches), first_half.chunk(micro_batches))
        for k, (xs, ys, mask) in enumerate(chunks):

            def compute_loss(xs=xs, ys=ys, mask=mask):
                prediction = wrapped(xs)
                if first_half_offset and bool(mask.any()):  # else the offset is not in this graph
                    prediction = prediction + model.offset * mask[:, None].to(dtype)
                return torch.nn.functional.mse_loss(prediction, ys), None

            training_step([optimizer], compute_loss, micro_batch=(k, micro_batches), model=wrapped)
    return [p.detach().clone() for p in model.parameters()]


def main(argv: list[str]) -> None:
    import torch.distributed as dist

    name, steps, out = argv[0], int(argv[1]), Path(argv[2])
    dist.init_process_group("gloo")
    ranks = Ranks(dist.get_rank(), dist.get_world_size())
    dtype = torch.float64 if "--float64" in argv else torch.float32
    own_group = dist.new_group(list(range(ranks.world_size))) if "--own-group" in argv else None
    all_reduce, calls, groups = dist.all_reduce, [], []

    def counted_all_reduce(tensor, *args, group=None, **kwargs):
        calls.append(tensor.numel())
        groups.append("own" if own_group is not None and group is own_group else "default")
        return all_reduce(tensor, *args, group=group, **kwargs)

    dist.all_reduce = counted_all_reduce
    micro_batches = int(argv[argv.index("--micro-batches") + 1]) if "--micro-batches" in argv else 1
    params = train(
        name,
        steps,
        ranks,
        micro_batches=micro_batches,
        ddp="--ddp" in argv,
        dtype=dtype,
        process_group=own_group,
        first_half_offset="--first-half-offset" in argv,
    )
    dist.all_reduce = all_reduce
    torch.save({"params": params, "all_reduce_sizes": calls, "groups": groups}, out / f"rank{ranks.rank}.pt")
    leave_process_group()  # together, as the runner does


if __name__ == "__main__":
    main(sys.argv[1:])
