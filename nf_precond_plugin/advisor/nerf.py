"""The NeRF probe, through the plugin's trainer (needs the nerfstudio extra, imported on use).

The curvature measurements are taken on the first probe's trainer at its initial weights; then
ESGD at two clips and Adam at two lrs each train a few iterations from seed 0, scored by the mean
RGB loss of the last quarter. The recommendation names the ``ns-train`` command to run.

The probe's trainers run inside ``errors_raised()``: a bad scene is this command's error (``--data
<dir>: …``, reported by nf-precond), not one printed under ns-train's name.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from nf_precond_plugin.advisor.recommend import curvature_measurements, recommend
from nf_precond_plugin.commands import printed_command
from nf_precond_plugin.errors import UserInputError

if TYPE_CHECKING:
    from nf_precond_plugin.advisor import AdviseNerf


def advise_nerf(config: AdviseNerf) -> dict[str, Any]:
    """The measurements, the probe and the recommendation of a NeRF scene."""
    try:
        from nf_precond_plugin.data.demo_scene import ensure_demo_scene
        from nf_precond_plugin.nerf import methods
        from nf_precond_plugin.nerf.llff import check_llff_scene
        from nf_precond_plugin.nerf.trainer import errors_raised
    except ImportError as error:
        raise UserInputError(f"advise nerf needs nerfstudio: pip install -e '.[nerfstudio]' ({error})") from None
    data = ensure_demo_scene() if config.data is None else config.data
    if not Path(data).exists():
        raise UserInputError(f"--data {data}: no such scene directory")
    check_llff_scene(Path(data))  # poses_bounds.npy and the images, before any trainer is built

    import shutil
    import tempfile

    from nerfstudio.utils import writer

    scratch = Path(tempfile.mkdtemp(prefix="nf-precond-advise-"))
    writers = list(writer.EVENT_WRITERS)  # nerfstudio's writers are process-global: restore them after
    try:
        with errors_raised():
            return _probe_nerf(config, Path(data), scratch, methods)
    finally:
        writer.EVENT_WRITERS[:] = writers
        shutil.rmtree(scratch, ignore_errors=True)


def _probe_trainer(config: AdviseNerf, spec, data: Path, scratch: Path, overrides: dict[str, float]):
    """A CurvatureTrainer of ``spec`` on ``data`` for the probe, from seed 0, writing into ``scratch``."""
    trainer_config = copy.deepcopy(spec.config)
    trainer_config.data = trainer_config.pipeline.datamanager.data = data
    trainer_config.machine.device_type = config.device
    trainer_config.vis = "tensorboard"
    trainer_config.output_dir = scratch  # the probe's checkpoints and logs are thrown away
    trainer_config.max_num_iterations = config.probe_steps
    trainer_config.steps_per_save = 10**9
    for key, value in overrides.items():
        setattr(trainer_config.optimizers["fields"]["optimizer"], key, value)
    trainer_config.set_timestamp()
    torch.manual_seed(0)
    trainer = trainer_config.setup(local_rank=0, world_size=1)
    trainer.setup()
    return trainer


def _probe_nerf(config: AdviseNerf, data: Path, scratch: Path, methods) -> dict[str, Any]:
    probe: dict[str, dict[str, float | None]] = {"esgd": {}, "adam": {}}
    measured: dict[str, float] = {}
    candidates = [
        ("esgd", methods.gaussian_esgd_cpu, "clip", (1e-3, 3e-3)),
        ("adam", methods.gaussian_adam_cpu, "lr", (1e-3, 2e-3)),
    ]
    for name, spec, knob, values in candidates:
        for value in values:
            trainer = _probe_trainer(config, spec, data, scratch, {knob: value})
            if not measured:
                model = trainer.pipeline.model
                params = [p for p in model.parameters() if p.requires_grad]

                def loss_fn(trainer=trainer) -> torch.Tensor:
                    _, losses, _ = trainer.pipeline.get_train_loss_dict(step=0)
                    return sum(losses.values())

                measured = curvature_measurements(params, loss_fn, probes=1)
            losses = []
            for step in range(config.probe_steps):
                _, loss_dict, _ = trainer.train_iteration(step)
                losses.append(float(loss_dict["rgb_loss"]))
            tail = losses[-max(1, len(losses) // 4) :]
            probe[name][f"{value:g}"] = sum(tail) / len(tail)
    advice: dict[str, Any] = {"task": "nerf", "data": str(data), **measured, "probe": probe}
    knobs = {name: knob for name, _, knob, _ in candidates}
    chosen = recommend(measured, probe, knobs, choices={"dense": "esgd", "sparse": "adam"})  # no Muon method
    if chosen["recommended"] == "esgd":
        clip = chosen["clip"]
        advice.update(
            recommended="esgd",
            lr=methods.ESGDOptimizerConfig().lr,
            clip=clip,
            command=printed_command(
                "ns-train", "gaussian-esgd-cpu", "--data", data, "--optimizers.fields.optimizer.clip", f"{clip:g}"
            ),
            reason=f"{chosen['reason']} (gaussian-esgd-cpu) with the probed clip",
        )
    else:
        lr = chosen["lr"]
        advice.update(
            recommended="adam",
            lr=lr,
            command=printed_command(
                "ns-train", "gaussian-adam-cpu", "--data", data, "--optimizers.fields.optimizer.lr", f"{lr:g}"
            ),
            reason=f"{chosen['reason']} (gaussian-adam-cpu)",
        )
    return advice
