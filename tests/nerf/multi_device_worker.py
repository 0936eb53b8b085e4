"""One device of the multi-device nerfstudio test: nerfstudio's own per-process ``train_loop``
(seeded apart per rank, as ``ns-train`` does) over a gloo process group on the CPU.

    python tests/nerf/multi_device_worker.py METHOD SCENE OUT ITERATIONS TIMESTAMP [ACCUMULATION [same-rays]]

With ``same-rays`` every rank is seeded like rank 0, so all trace the same rays: then the average
over devices is each device's own gradient, and the run must be the one-device run.

RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT come from the environment; writes the field's final
parameters (before and after training) and the optimizer's step count to ``OUT/rank<r>.pt``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.distributed as dist
from nerfstudio.scripts.train import train_loop
from tiny_nerf import tiny_config

from nf_precond_plugin.nerf import methods
from nf_precond_plugin.optim.base import STEP_COUNT
from nf_precond_plugin.training.distributed import leave_process_group

captured = {}


def optimizer_steps(optimizer: torch.optim.Optimizer) -> int:
    """Updates taken: the curvature optimizers count them in their groups, torch.optim per parameter."""
    group = optimizer.param_groups[0]
    if STEP_COUNT in group:
        return group[STEP_COUNT]
    return int(optimizer.state[group["params"][0]]["step"])


def main(argv: list[str]) -> None:
    method, scene, out, iterations, timestamp = argv[0], Path(argv[1]), Path(argv[2]), int(argv[3]), argv[4]
    accumulation = int(argv[5]) if len(argv) > 5 else 1
    dist.init_process_group("gloo")
    rank, world_size = dist.get_rank(), dist.get_world_size()
    config = tiny_config(getattr(methods, method.replace("-", "_")), scene, out, iterations)
    config.timestamp = timestamp  # one run directory for all ranks, as ns-train's single config gives
    config.machine.num_devices = world_size
    config.steps_per_save = iterations  # rank 0 writes the last step's checkpoint
    config.gradient_accumulation_steps = {"fields": accumulation}
    if "same-rays" in argv:
        config.machine.seed -= rank  # train_loop seeds machine.seed + rank

    from nf_precond_plugin.nerf.trainer import CurvatureTrainer

    original_train = CurvatureTrainer.train

    def train_and_keep(trainer: CurvatureTrainer) -> None:
        captured["initial"] = [p.detach().clone() for p in trainer.pipeline.model.parameters()]
        original_train(trainer)
        captured["trainer"] = trainer

    CurvatureTrainer.train = train_and_keep
    train_loop(local_rank=rank, world_size=world_size, config=config, global_rank=rank)
    trainer = captured["trainer"]
    optimizer = trainer.optimizers.optimizers["fields"]
    torch.save(
        {
            "initial": captured["initial"],
            "params": [p.detach().clone() for p in trainer.pipeline.model.parameters()],
            "steps": optimizer_steps(optimizer),
            "base_dir": str(trainer.base_dir),
        },
        out / f"rank{rank}.pt",
    )
    leave_process_group()


if __name__ == "__main__":
    main(sys.argv[1:])
