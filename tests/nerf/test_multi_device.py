"""The CurvatureTrainer on several devices (two gloo processes on the CPU, nerfstudio's own
``train_loop`` in each) and with gradient accumulation.

nerfstudio's launcher asserts CUDA for several devices, so the processes are started here the way
torchrun would start them. Each rank traces its own rays, so there is no one-process oracle;
what must hold is that the ranks' fields are bit-identical after training (every update used the
averaged gradient and H·v, and the same probe although nerfstudio seeds each rank apart), that
training moved them, and that rank 0 alone wrote the checkpoint.
"""

from __future__ import annotations

import subprocess
import sys
import unittest.mock
from pathlib import Path

import pytest
import torch

pytest.importorskip("nerfstudio")

from rank_environment import free_port, rank_environment  # noqa: E402
from tiny_nerf import tiny_config  # noqa: E402

from nf_precond_plugin.data.demo_scene import generate_demo_scene  # noqa: E402
from nf_precond_plugin.nerf import methods  # noqa: E402
from nf_precond_plugin.optim.base import LAST_HVP_STEP, STEP_COUNT  # noqa: E402

WORKER = Path(__file__).with_name("multi_device_worker.py")
ITERATIONS = 8


@pytest.fixture(scope="module")
def scene(tmp_path_factory) -> Path:
    return generate_demo_scene(tmp_path_factory.mktemp("scene") / "demo", num_views=9, width=32, height=24)


def run_devices(
    method: str, scene: Path, out: Path, accumulation: int = 1, *flags: str, world_size: int = 2
) -> list[dict]:
    port = free_port()
    arguments = [method, str(scene), str(out), str(ITERATIONS), "fixed", str(accumulation), *flags]
    processes = [
        subprocess.Popen(
            [sys.executable, str(WORKER), *arguments],
            env=rank_environment(rank, world_size, port),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank in range(world_size)
    ]
    errors = [process.communicate(timeout=300)[1] for process in processes]
    failed = {rank: text[-6000:] for rank, (process, text) in enumerate(zip(processes, errors)) if process.returncode}
    assert not failed, failed
    return [torch.load(out / f"rank{rank}.pt") for rank in range(world_size)]


@pytest.mark.parametrize(
    ("method", "accumulation"), [("gaussian-esgd-cpu", 1), ("gaussian-esgd-cpu", 2), ("gaussian-adam-cpu", 1)]
)
def test_two_devices_keep_identical_fields_and_rank_zero_writes(scene, tmp_path, method, accumulation):
    rank0, rank1 = run_devices(method, scene, tmp_path, accumulation)
    assert all(torch.equal(a, b) for a, b in zip(rank0["params"], rank1["params"])), "the devices' fields differ"
    assert rank0["steps"] == rank1["steps"] == ITERATIONS // accumulation
    # both ranks started from rank 0's field (nerfstudio seeds them apart), and training moved it
    assert all(torch.equal(a, b) for a, b in zip(rank0["initial"], rank1["initial"]))
    assert any(not torch.equal(a, b) for a, b in zip(rank0["initial"], rank0["params"]))
    checkpoints = sorted(Path(rank0["base_dir"]).glob("nerfstudio_models/step-*.ckpt"))
    assert [c.name for c in checkpoints] == [f"step-{ITERATIONS - 1:09d}.ckpt"]


@pytest.mark.parametrize("method", ["gaussian-esgd-cpu", "gaussian-adam-cpu"])
def test_two_devices_tracing_the_same_rays_are_the_one_device_run(scene, tmp_path, method):
    """The mean of two equal gradients (and H·v) is each of them, exactly: so, seeded alike, two
    devices must reproduce one device bit for bit, which checks the initial broadcast, the shared
    probe and the averaging together."""
    from nerfstudio.scripts.train import train_loop

    from nf_precond_plugin.nerf.trainer import CurvatureTrainer

    rank0, _ = run_devices(method, scene, tmp_path / "two", 1, "same-rays")
    config = tiny_config(getattr(methods, method.replace("-", "_")), scene, tmp_path / "one", ITERATIONS)
    trainers: list[CurvatureTrainer] = []
    original_train = CurvatureTrainer.train

    def train_and_keep(trainer: CurvatureTrainer) -> None:
        original_train(trainer)
        trainers.append(trainer)

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the workers: another thread count sums in another order
    try:
        with unittest.mock.patch.object(CurvatureTrainer, "train", train_and_keep):
            train_loop(local_rank=0, world_size=1, config=config)  # seeds machine.seed + 0, as rank 0
    finally:
        torch.set_num_threads(threads)
    one_device = [p.detach() for p in trainers[0].pipeline.model.parameters()]
    difference = max(float((a - b).abs().max()) for a, b in zip(rank0["params"], one_device) if a.numel())
    assert difference == 0.0


def test_gradient_accumulation_updates_once_per_micro_batches_with_curvature_steps(scene, tmp_path):
    config = tiny_config(methods.gaussian_esgd_cpu, scene, tmp_path, iterations=ITERATIONS)
    config.gradient_accumulation_steps = {"fields": 4}
    trainer = config.setup(local_rank=0, world_size=1)
    trainer.setup()
    field = [p.detach().clone() for p in trainer.pipeline.model.parameters()]
    trainer.train()
    group = trainer.optimizers.optimizers["fields"].param_groups[0]
    assert group[STEP_COUNT] == ITERATIONS // 4  # two updates, each over four micro-batches of rays
    assert group[LAST_HVP_STEP] == 1  # both were H·v steps (warm-up 2)
    moved = [not torch.equal(a, b.detach()) for a, b in zip(field, trainer.pipeline.model.parameters())]
    assert any(moved)


def test_a_checkpoint_due_inside_an_accumulation_cycle_waits_for_its_update(scene, tmp_path):
    """Resumed at step + 1, a run must start a fresh cycle: checkpoints land on a cycle's last
    micro-batch, and a run that ends mid-cycle saves the state of its last update."""
    config = tiny_config(methods.gaussian_esgd_cpu, scene, tmp_path, iterations=5)
    config.gradient_accumulation_steps = {"fields": 2}
    config.steps_per_save = 2  # nerfstudio asks at steps 2 and 4 (mid-cycle) and at the end (4)
    trainer = config.setup(local_rank=0, world_size=1)
    trainer.setup()
    trainer.train()
    checkpoints = sorted(trainer.checkpoint_dir.glob("step-*.ckpt"))
    assert [c.name for c in checkpoints] == ["step-000000003.ckpt"]
    state = torch.load(checkpoints[0], map_location="cpu", weights_only=True)
    assert state["step"] == 3
    assert state["optimizers"]["fields"]["param_groups"][0][STEP_COUNT] == 2  # steps 0+1 and 2+3
