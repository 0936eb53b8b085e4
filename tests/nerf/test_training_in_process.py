"""nerfstudio training in-process: curvature steps, the checkpoint's curvature state, resume, refusals."""

from __future__ import annotations

import copy
import math
import re
import shlex
from pathlib import Path

import pytest
import torch

pytest.importorskip("nerfstudio")

from tiny_nerf import EVERY, WARMUP, tiny_config  # noqa: E402

from nf_precond_plugin.data.demo_scene import generate_demo_scene  # noqa: E402
from nf_precond_plugin.errors import (  # noqa: E402
    EXIT_BAD_INPUT,
    EXIT_INTERRUPTED,
    EXIT_TRAINING_STOPPED,
    UserInputError,
)
from nf_precond_plugin.nerf import methods  # noqa: E402
from nf_precond_plugin.nerf.trainer import CurvatureTrainer, resume_command  # noqa: E402
from nf_precond_plugin.nerf.trainer_policy import check_supported  # noqa: E402


@pytest.fixture(scope="module")
def scene(tmp_path_factory) -> Path:
    return generate_demo_scene(tmp_path_factory.mktemp("scene") / "demo", num_views=9, width=32, height=24)


def train(config) -> CurvatureTrainer:
    trainer = config.setup(local_rank=0, world_size=1)
    trainer.setup()
    trainer.train()
    return trainer


def hvp_steps(num_steps: int) -> list[int]:
    """The schedule as the paper states it: every one of the first WARMUP steps, then every EVERY steps."""
    steps = list(range(min(WARMUP, num_steps)))
    while steps and steps[-1] + EVERY < num_steps:
        steps.append(steps[-1] + EVERY)
    return steps


def latest_checkpoint(trainer) -> Path:
    (path,) = sorted(trainer.checkpoint_dir.glob("step-*.ckpt"))
    return path


def test_esgd_trains_with_curvature_steps_and_the_checkpoint_carries_their_state(scene, tmp_path):
    trainer = train(tiny_config(methods.gaussian_esgd_cpu, scene, tmp_path, iterations=8))
    # weights_only: what torch >= 2.6 loads by default; no numpy scalars or pickled classes inside.
    state = torch.load(latest_checkpoint(trainer), map_location="cpu", weights_only=True)
    assert state["step"] == 7
    optimizer = state["optimizers"]["fields"]
    group = optimizer["param_groups"][0]
    expected = hvp_steps(8)
    assert expected == [0, 1, 4, 7]
    assert group["step_count"] == 8 and group["last_hvp_step"] == expected[-1]
    per_param = list(optimizer["state"].values())
    assert per_param and all(s["hvp_count"] == len(expected) for s in per_param)
    assert all(torch.all(s["curvature"] >= 0) and torch.any(s["curvature"] > 0) for s in per_param)
    params = dict(trainer.pipeline.model.field.named_parameters())
    assert len(per_param) == len(params)


def test_the_run_directory_gets_a_convergence_table_and_plot(scene, tmp_path):
    trainer = train(tiny_config(methods.gaussian_esgd_cpu, scene, tmp_path, iterations=4))
    import csv

    with open(trainer.base_dir / "convergence.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [int(r["iteration"]) for r in rows] == [1, 2, 3, 4]
    losses = [float(r["loss"]) for r in rows]
    # Windowed PSNR: the first row is one batch, the last the mean of all four (window 50 > 4).
    assert float(rows[0]["train_psnr"]) == pytest.approx(-10 * math.log10(losses[0]))
    assert float(rows[-1]["train_psnr"]) == pytest.approx(-10 * math.log10(sum(losses) / 4))
    assert all(float(a["wall_seconds"]) < float(b["wall_seconds"]) for a, b in zip(rows, rows[1:]))
    assert (trainer.base_dir / "convergence.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_load_dir_resumes_the_schedule_and_the_curvature_state(scene, tmp_path):
    first = train(tiny_config(methods.gaussian_esgd_cpu, scene, tmp_path / "a", iterations=5))
    saved = torch.load(latest_checkpoint(first), map_location="cpu", weights_only=True)

    config = tiny_config(methods.gaussian_esgd_cpu, scene, tmp_path / "b", iterations=5)
    config.load_dir = first.checkpoint_dir
    resumed = config.setup(local_rank=0, world_size=1)
    resumed.setup()
    assert resumed._start_step == 5
    loaded = resumed.optimizers.optimizers["fields"].state_dict()
    for key, value in saved["optimizers"]["fields"]["state"].items():
        torch.testing.assert_close(loaded["state"][key]["curvature"], value["curvature"], rtol=0, atol=0)
    for name, value in saved["pipeline"].items():
        torch.testing.assert_close(resumed.pipeline.state_dict()[name], value, rtol=0, atol=0)
    resumed.train()
    state = torch.load(latest_checkpoint(resumed), map_location="cpu", weights_only=True)
    group = state["optimizers"]["fields"]["param_groups"][0]
    # Ten steps in all, as if uninterrupted: HVPs at 0, 1, 4, 7 — the resumed run takes the one at 7.
    assert state["step"] == 9 and group["step_count"] == 10 and group["last_hvp_step"] == hvp_steps(10)[-1] == 7
    assert all(s["hvp_count"] == len(hvp_steps(10)) for s in state["optimizers"]["fields"]["state"].values())
    assert resumed.checkpoint_dir != first.checkpoint_dir  # the first run's files are untouched
    assert latest_checkpoint(first).exists()


def test_adam_method_trains_through_the_same_trainer(scene, tmp_path):
    trainer = train(tiny_config(methods.gaussian_adam_cpu, scene, tmp_path, iterations=3))
    state = torch.load(latest_checkpoint(trainer), map_location="cpu", weights_only=True)
    assert isinstance(trainer, CurvatureTrainer)
    assert all(s["step"] == 3 for s in state["optimizers"]["fields"]["state"].values())


def test_a_non_finite_loss_stops_with_one_line_and_keeps_the_last_checkpoint(scene, tmp_path, monkeypatch, capsys):
    config = tiny_config(methods.gaussian_esgd_cpu, scene, tmp_path, iterations=6)
    config.steps_per_save = 2
    trainer = config.setup(local_rank=0, world_size=1)
    trainer.setup()
    model = trainer.pipeline.model
    original = model.get_loss_dict

    def poisoned(outputs, batch, metrics_dict=None):
        losses = original(outputs, batch, metrics_dict)
        if trainer.step == 3:
            losses["rgb_loss"] = losses["rgb_loss"] * float("nan")
        return losses

    monkeypatch.setattr(model, "get_loss_dict", poisoned)
    with pytest.raises(SystemExit) as failure:
        trainer.train()
    assert failure.value.code == EXIT_TRAINING_STOPPED
    message = capsys.readouterr().err.strip()
    assert re.search(r"^ns-train: training stopped: the loss became nan at step 3.*last checkpoint", message), message
    assert "\n" not in message
    kept = torch.load(latest_checkpoint(trainer), map_location="cpu", weights_only=True)
    assert kept["step"] == 2
    assert all(torch.isfinite(v).all() for v in kept["pipeline"].values() if v.is_floating_point())


def uneven_accumulation(config) -> None:
    config.optimizers["other"] = copy.deepcopy(config.optimizers["fields"])
    config.gradient_accumulation_steps.update({"fields": 4})  # "other" takes nerfstudio's default, 1


@pytest.mark.parametrize(
    ("change", "option"),
    [
        (uneven_accumulation, "--gradient-accumulation-steps"),
        (lambda c: setattr(c, "mixed_precision", True), "--mixed-precision"),
        (lambda c: setattr(c.optimizers["fields"]["optimizer"], "max_norm", 1.0), "max-norm"),
    ],
)
@pytest.mark.parametrize("spec", [methods.gaussian_esgd, methods.gaussian_adahessian])
def test_curvature_optimizers_refuse_what_they_cannot_honour(spec, change, option, capsys):
    config = copy.deepcopy(spec.config)
    change(config)
    with pytest.raises(UserInputError, match=option) as failure:
        check_supported(config, world_size=1)
    assert "\n" not in str(failure.value)
    with pytest.raises(SystemExit) as stop:
        CurvatureTrainer(config)
    assert stop.value.code == EXIT_BAD_INPUT
    message = capsys.readouterr().err.strip()
    assert message.startswith("ns-train: error: ") and option in message and "\n" not in message


@pytest.mark.parametrize("spec", [methods.gaussian_esgd, methods.gaussian_adahessian, methods.gaussian_adam])
def test_accumulation_and_several_devices_are_accepted(spec):
    config = copy.deepcopy(spec.config)
    config.gradient_accumulation_steps = {"fields": 4}
    config.machine.num_devices = 2
    check_supported(config, world_size=2)


def test_mixed_precision_across_devices_is_refused_even_for_adam():
    config = copy.deepcopy(methods.gaussian_adam.config)
    config.mixed_precision = True
    check_supported(config, world_size=1)  # one device: nerfstudio's own loop takes it
    with pytest.raises(UserInputError, match="--mixed-precision.*averages gradients over the 2 devices"):
        check_supported(config, world_size=2)


def test_the_learning_rate_decays_to_a_tenth_of_the_command_line_lr_over_the_run(scene, tmp_path):
    config = tiny_config(methods.gaussian_esgd_cpu, scene, tmp_path, iterations=6)
    config.optimizers["fields"]["optimizer"].lr = 0.01  # as `--optimizers.fields.optimizer.lr 0.01` would
    trainer = train(config)
    lr = trainer.optimizers.optimizers["fields"].param_groups[0]["lr"]
    # nerfstudio's exponential decay: lr_k = exp((1 − k/K)·ln lr₀ + (k/K)·ln lr_final), here after 6 of 6 steps.
    assert lr == pytest.approx(0.001, rel=1e-6)


def test_an_interrupted_save_leaves_no_partial_file_among_the_checkpoints(scene, tmp_path, monkeypatch):
    trainer = train(tiny_config(methods.gaussian_esgd_cpu, scene, tmp_path, iterations=2))
    good = latest_checkpoint(trainer)

    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        trainer.save_checkpoint(5)
    assert sorted(trainer.checkpoint_dir.iterdir()) == [good]  # what nerfstudio's loaders list and parse


def interrupt_at(trainer, monkeypatch, step: int) -> None:
    """Ctrl-C arrives during iteration ``step``."""
    original = trainer.train_iteration

    def iteration(current: int):
        if current == step:
            raise KeyboardInterrupt
        return original(current)

    monkeypatch.setattr(trainer, "train_iteration", iteration)


def test_ctrl_c_names_the_checkpoint_kept_and_the_command_that_resumes_from_it(scene, tmp_path, monkeypatch, capsys):
    config = tiny_config(methods.gaussian_esgd_cpu, scene, tmp_path, iterations=6)
    config.steps_per_save = 2
    trainer = config.setup(local_rank=0, world_size=1)
    trainer.setup()
    interrupt_at(trainer, monkeypatch, 3)
    with pytest.raises(SystemExit) as stop:
        trainer.train()
    assert stop.value.code == EXIT_INTERRUPTED
    message = capsys.readouterr().err.strip()
    kept = trainer.checkpoint_dir / "step-000000002.ckpt"
    assert message.startswith(f"ns-train: interrupted: at step 3; kept {kept}; resume with: "), message
    assert "\n" not in message and "--resume" not in message and "summary.json" not in message
    args = shlex.split(message.split("resume with: ", 1)[1])
    # In-process (not ns-train's argv): the method, the kept checkpoints and the scene.
    assert Path(args[0]).name == "ns-train"
    assert args[1:] == ["gaussian-esgd-cpu", "--load-dir", str(trainer.checkpoint_dir), "--data", str(scene)]


def test_ctrl_c_before_the_first_checkpoint_says_nothing_was_kept(scene, tmp_path, monkeypatch, capsys):
    trainer = tiny_config(methods.gaussian_esgd_cpu, scene, tmp_path, iterations=6).setup(local_rank=0, world_size=1)
    trainer.setup()
    interrupt_at(trainer, monkeypatch, 1)
    with pytest.raises(SystemExit) as stop:
        trainer.train()
    assert stop.value.code == EXIT_INTERRUPTED
    message = capsys.readouterr().err.strip()
    assert message == (
        f"ns-train: interrupted: at step 1, before the first checkpoint: nothing was kept; "
        f"the run directory {trainer.base_dir} can be deleted"
    )


def test_the_resume_command_is_the_users_own_with_load_dir_and_without_the_timestamp():
    config = copy.deepcopy(methods.gaussian_esgd_cpu.config)
    argv = ["/x/.venv/bin/ns-train", "gaussian-esgd-cpu", "--timestamp", "T", "--load-dir=old", "--data", "my scene"]
    args = shlex.split(resume_command(config, Path("out/run/nerfstudio_models"), argv=argv))
    assert args[1:] == ["gaussian-esgd-cpu", "--load-dir", "out/run/nerfstudio_models", "--data", "my scene"]


@pytest.mark.parametrize(
    ("option", "value", "refusal"),
    [
        ("lr", -1.0, "--optimizers.fields.optimizer.lr -1.0: ESGD refuses it (Invalid learning rate"),
        ("betas", (0.9, 1.5), "--optimizers.fields.optimizer.betas 0.9 1.5: ESGD refuses it (Invalid beta"),
        ("lr", math.inf, "--optimizers.fields.optimizer.lr inf: expected a finite learning rate > 0"),
    ],
)
def test_a_refused_optimizer_setting_is_one_line_before_the_config_is_printed(
    scene, tmp_path, capsys, option, value, refusal
):
    config = tiny_config(methods.gaussian_esgd_cpu, scene, tmp_path, iterations=2)
    setattr(config.optimizers["fields"]["optimizer"], option, value)
    with pytest.raises(SystemExit) as stop:
        config.print_to_terminal()  # ns-train's first call on the config
    assert stop.value.code == EXIT_BAD_INPUT
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.startswith(f"ns-train: error: {refusal}"), captured
    assert captured.err.count("\n") == 1 and not list(tmp_path.iterdir())


def test_a_missing_scene_of_another_dataparser_is_refused_before_the_config_is_printed(tmp_path, capsys):
    from nerfstudio.data.dataparsers.nerfstudio_dataparser import NerfstudioDataParserConfig

    config = copy.deepcopy(methods.gaussian_esgd_cpu.config)
    config.pipeline.datamanager.dataparser = NerfstudioDataParserConfig()
    config.data = config.pipeline.datamanager.data = tmp_path / "no-such-scene"
    config.output_dir = tmp_path / "outputs"
    for hook in (config.print_to_terminal, config.save_config):  # in-process callers may skip the first
        with pytest.raises(SystemExit) as stop:
            hook()
        assert stop.value.code == EXIT_BAD_INPUT
        captured = capsys.readouterr()
        assert captured.out == "" and captured.err.startswith(f"ns-train: error: --data {tmp_path / 'no-such-scene'}: ")
    assert not config.output_dir.exists()
