"""Checkpoints (``nf_precond_plugin.checkpoints`` and the runner's ``training.run_checkpoints``):
atomic writes, numpy scalars stored as Python numbers, every registry optimizer's state loaded
back exactly with ``weights_only=True``, and unreadable files reported as one line naming them."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from nf_precond_plugin.checkpoints import keep_only, load_checkpoint, save_atomically
from nf_precond_plugin.errors import UserInputError
from nf_precond_plugin.fields import CoordinateMLP
from nf_precond_plugin.optim.factory import OPTIMIZERS, default_lr
from nf_precond_plugin.training.run_checkpoints import resume_run, save_checkpoint
from nf_precond_plugin.training.runner import OptimizerRun, RunSettings, build_run
from nf_precond_plugin.training.step import training_step

STEPS = 3


class TinyFieldTask:
    """Just enough of a runner task for ``build_run``: a 2-D Gaussian field, two hidden layers of 8."""

    name = "tiny"
    metric = "psnr"
    samples_per_epoch = 64

    def build_model(self) -> torch.nn.Module:
        return CoordinateMLP(2, 1, hidden_features=8, num_layers=3, activation="gaussian", sigma=0.5)


def tiny_run(name: str, run_dir: Path) -> OptimizerRun:
    torch.manual_seed(0)
    task = TinyFieldTask()
    initial_state = task.build_model().state_dict()
    settings = RunSettings([name], {name: default_lr(name, "gaussian")}, epochs=1, batch_size=16)
    (run_dir / "checkpoints").mkdir(exist_ok=True)
    return build_run(task, settings, name, initial_state, run_dir)


def take_steps(run: OptimizerRun, steps: int) -> None:
    x = torch.linspace(-1, 1, 32).reshape(16, 2)
    y = torch.sin(3 * x).prod(dim=1, keepdim=True)
    for _ in range(steps):
        training_step([run.optimizer], lambda: ((run.model(x) - y).square().mean(), None))
        run.step += 1
        run.history.append({"optimizer": run.name, "epoch": run.epoch, "step": run.step, "loss": 0.5})


def assert_identical(got: Any, want: Any, where: str = "state") -> None:
    """Same structure, same Python types, tensors equal bit for bit (dtype and values)."""
    if isinstance(want, torch.Tensor):
        assert isinstance(got, torch.Tensor), where
        assert got.dtype == want.dtype and got.shape == want.shape, where
        assert torch.equal(got, want.to(got.device)), where
    elif isinstance(want, dict):
        assert isinstance(got, dict) and list(got) == list(want), where
        for key in want:
            assert_identical(got[key], want[key], f"{where}[{key!r}]")
    elif isinstance(want, (list, tuple)):
        assert type(got) is type(want) and len(got) == len(want), where
        for index, (g, w) in enumerate(zip(got, want)):
            assert_identical(g, w, f"{where}[{index}]")
    else:
        assert type(got) is type(want) and got == want, where


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_every_registry_optimizer_round_trips_through_a_weights_only_load(name, tmp_path):
    run = tiny_run(name, tmp_path)
    take_steps(run, STEPS)
    save_checkpoint(run)

    loaded = load_checkpoint(run.checkpoint_path)  # weights_only=True
    assert_identical(loaded["optimizer"], run.optimizer.state_dict(), "optimizer")
    assert_identical(loaded["model"], run.model.state_dict(), "model")
    assert_identical(loaded["torch_rng"], torch.get_rng_state(), "torch_rng")
    assert_identical(loaded["history"], run.history, "history")
    assert (loaded["epoch"], loaded["step"]) == (run.epoch, run.step)

    # resumed into a fresh run, the next step is the uninterrupted run's, bit for bit
    resumed = tiny_run(name, tmp_path)
    assert resume_run(resumed)
    take_steps(run, 1)
    take_steps(resumed, 1)
    assert_identical(resumed.model.state_dict(), run.model.state_dict(), "model after one more step")


def test_an_interrupted_save_leaves_no_partial_file_and_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    target = tmp_path / "esgd.pt"
    save_atomically({"weights": torch.arange(4.0)}, target)
    real_save = torch.save

    def write_half_then_fail(obj, f, *args, **kwargs):
        buffer = io.BytesIO()
        real_save(obj, buffer)
        data = buffer.getvalue()
        if isinstance(f, (str, Path)):
            Path(f).write_bytes(data[: len(data) // 2])
        else:
            f.write(data[: len(data) // 2])
            f.flush()
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", write_half_then_fail)
    with pytest.raises(OSError, match="No space left"):
        save_atomically({"weights": torch.arange(1000.0)}, target)
    with pytest.raises(KeyboardInterrupt):
        monkeypatch.setattr(torch, "save", lambda *args, **kwargs: (_ for _ in ()).throw(KeyboardInterrupt))
        save_atomically({"weights": torch.arange(1000.0)}, target)
    assert sorted(tmp_path.iterdir()) == [target]
    assert torch.equal(load_checkpoint(target)["weights"], torch.arange(4.0))


def test_the_temporary_file_lives_in_the_scratch_directory(tmp_path, monkeypatch):
    checkpoints, scratch = tmp_path / "nerfstudio_models", tmp_path
    checkpoints.mkdir()
    seen: list[Path] = []
    real_save = torch.save

    def spy(obj, f, *args, **kwargs):
        seen.append(Path(f.name))
        assert list(checkpoints.iterdir()) == []  # nothing half-written where nerfstudio looks
        real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", spy)
    save_atomically({"step": 3}, checkpoints / "step-000000003.ckpt", scratch_dir=scratch)
    assert [p.parent for p in seen] == [scratch]
    assert list(checkpoints.iterdir()) == [checkpoints / "step-000000003.ckpt"]
    assert sorted(p.name for p in scratch.iterdir()) == ["nerfstudio_models"]


def test_numpy_scalars_come_back_as_python_numbers(tmp_path):
    path = tmp_path / "state.pt"
    state = {
        "lr": np.float64(0.1),
        "groups": [{"lr": np.float64(1e-3), "betas": (np.float32(0.5), 0.999), "step": np.int64(7)}],
        "tensor": torch.ones(2, dtype=torch.float64),
    }
    save_atomically(state, path)
    loaded = load_checkpoint(path)
    assert type(loaded["lr"]) is float and loaded["lr"] == 0.1
    group = loaded["groups"][0]
    assert type(group["lr"]) is float and group["lr"] == 1e-3
    assert type(group["betas"]) is tuple and type(group["betas"][0]) is float and group["betas"] == (0.5, 0.999)
    assert type(group["step"]) is int and group["step"] == 7
    assert torch.equal(loaded["tensor"], torch.ones(2, dtype=torch.float64))


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_a_damaged_checkpoint_gives_one_line_naming_it(tmp_path, damage):
    path = tmp_path / "adam.pt"
    save_atomically({"weights": torch.randn(256)}, path)
    data = path.read_bytes()
    path.write_bytes({"truncated": data[: len(data) // 2], "garbage": b"\x00garbage\xff" * 50, "empty": b""}[damage])
    with pytest.raises(UserInputError) as caught:
        load_checkpoint(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: ") and "\n" not in message
    assert "truncated, or not a torch checkpoint" in message


def test_a_checkpoint_holding_objects_weights_only_refuses_names_them(tmp_path):
    path = tmp_path / "old.pt"
    torch.save({"lr": np.float64(0.1)}, path)  # written without save_atomically's conversion
    with pytest.raises(UserInputError, match=r"old\.pt: .*numpy.*which weights_only loading refuses") as caught:
        load_checkpoint(path)
    assert "\n" not in str(caught.value)


def test_a_missing_checkpoint_gives_one_line_naming_it(tmp_path):
    with pytest.raises(UserInputError, match=r"nothing\.pt: not a usable checkpoint \(no such file or directory\)"):
        load_checkpoint(tmp_path / "nothing.pt")


def test_resuming_from_a_damaged_or_foreign_checkpoint_names_it(tmp_path):
    run = tiny_run("adam", tmp_path)
    run.checkpoint_path.write_bytes(b"not a checkpoint")
    with pytest.raises(UserInputError, match=rf"^{run.checkpoint_path}: "):
        resume_run(run)
    save_atomically({"model": {}, "optimizer": {}}, run.checkpoint_path)  # readable, but not this run's
    with pytest.raises(UserInputError, match=rf"^{run.checkpoint_path}: this checkpoint does not fit adam's"):
        resume_run(run)


def test_keep_only_deletes_the_other_checkpoints(tmp_path):
    for step in (1, 2, 3):
        (tmp_path / f"step-{step:09d}.ckpt").write_bytes(b"x")
    (tmp_path / "notes.txt").write_text("kept")
    keep_only(tmp_path / "step-000000003.ckpt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt", "step-000000003.ckpt"]


def test_optimizer_args_reach_the_optimizer_and_override_the_tasks(tmp_path):
    class WithOverrides(TinyFieldTask):
        def optimizer_overrides(self, name: str) -> dict[str, Any]:
            return {"betas": (0.5, 0.5), "eps": 1e-6}

    task = WithOverrides()
    settings = RunSettings(
        ["adam"], {"adam": 1e-3}, epochs=1, batch_size=16, optimizer_args={"adam": {"betas": (0.8, 0.99)}}
    )
    run = build_run(task, settings, "adam", task.build_model().state_dict(), tmp_path)
    assert isinstance(run.optimizer, torch.optim.Adam)
    group = run.optimizer.param_groups[0]
    assert group["betas"] == (0.8, 0.99) and group["eps"] == 1e-6
    plain = build_run(TinyFieldTask(), settings, "adam", task.build_model().state_dict(), tmp_path)
    assert plain.optimizer.param_groups[0]["betas"] == (0.8, 0.99)
