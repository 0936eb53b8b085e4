"""The methods also train on Blender-format and nerfstudio-format scenes (no near/far: the scene box bounds rays).

Both scenes are the demo scene rewritten in those formats, so the images and poses are known.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("nerfstudio")

from nerfstudio.data.dataparsers.blender_dataparser import BlenderDataParserConfig  # noqa: E402
from nerfstudio.data.dataparsers.nerfstudio_dataparser import NerfstudioDataParserConfig  # noqa: E402
from nerfstudio.model_components.scene_colliders import AABBBoxCollider  # noqa: E402

from nf_precond_plugin.data.demo_scene import generate_demo_scene  # noqa: E402
from nf_precond_plugin.nerf import methods  # noqa: E402

# The demo's planes lie at depths 2.5–6 in front of cameras near z = 0: move them around the origin
# and shrink them into Blender's [−1.5, 1.5]³ box.
CENTRE, SCALE = np.array([0.0, 0.0, -3.5]), 0.35


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    scene = generate_demo_scene(tmp_path_factory.mktemp("demo") / "scene", num_views=8, width=32, height=24)
    truth = np.load(scene / "ground_truth.npz")
    images = sorted((scene / "images_8").iterdir())
    poses = truth["camera_to_world"].astype(np.float64)
    poses[:, :, 3] = (poses[:, :, 3] - CENTRE) * SCALE
    return scene, images, poses, float(truth["focal"]), int(truth["width"]), int(truth["height"])


def homogeneous(pose: np.ndarray) -> list:
    return np.vstack([pose, [0.0, 0.0, 0.0, 1.0]]).tolist()


def write_blender(demo, root: Path) -> Path:
    _, images, poses, focal, width, _ = demo
    for split, indices in (("train", range(0, 8)), ("val", range(0, 8, 4)), ("test", range(0, 8, 4))):
        (root / split).mkdir(parents=True)
        frames = []
        for i in indices:
            (root / split / f"r_{i}.png").write_bytes(images[i].read_bytes())
            frames.append({"file_path": f"./{split}/r_{i}", "transform_matrix": homogeneous(poses[i])})
        meta = {"camera_angle_x": 2 * np.arctan(width / (2 * focal)), "frames": frames}
        (root / f"transforms_{split}.json").write_text(json.dumps(meta))
    return root


def write_nerfstudio(demo, root: Path) -> Path:
    _, images, poses, focal, width, height = demo
    (root / "images").mkdir(parents=True)
    frames = []
    for i, image in enumerate(images):
        (root / "images" / image.name).write_bytes(image.read_bytes())
        frames.append({"file_path": f"images/{image.name}", "transform_matrix": homogeneous(poses[i])})
    meta = dict(fl_x=focal, fl_y=focal, cx=width / 2, cy=height / 2, w=width, h=height, frames=frames)
    (root / "transforms.json").write_text(json.dumps(meta))
    return root


def train_briefly(dataparser, output: Path, steps: int = 6):
    config = copy.deepcopy(methods.gaussian_esgd_cpu.config)
    config.pipeline.datamanager.dataparser = dataparser
    config.data = dataparser.data
    config.output_dir = output
    config.vis = "tensorboard"
    config.machine.device_type = "cpu"
    config.max_num_iterations = steps
    config.steps_per_eval_batch = config.steps_per_eval_image = config.steps_per_eval_all_images = 10_000
    config.pipeline.datamanager.train_num_rays_per_batch = 64
    model = config.pipeline.model
    model.num_layers, model.hidden_dim, model.geo_feat_dim, model.hidden_dim_color, model.num_coarse_samples = (
        2,
        16,
        8,
        8,
        8,
    )
    config.set_timestamp()
    trainer = config.setup(local_rank=0, world_size=1)
    trainer.setup()
    losses = [float(trainer.train_iteration(step)[0]) for step in range(steps)]
    return trainer, losses


@pytest.mark.parametrize("fmt", ["blender-data", "nerfstudio-data"])
def test_methods_train_and_evaluate_on_other_formats(demo, tmp_path, fmt):
    if fmt == "blender-data":
        parser = BlenderDataParserConfig(data=write_blender(demo, tmp_path / "blender"))
    else:
        parser = NerfstudioDataParserConfig(data=write_nerfstudio(demo, tmp_path / "ns"), eval_mode="interval")
    trainer, losses = train_briefly(parser, tmp_path / "out")
    model = trainer.pipeline.model
    assert isinstance(model.collider, AABBBoxCollider)  # no near/far from these parsers: the box bounds rays
    assert all(np.isfinite(losses))
    optimizer = trainer.optimizers.optimizers["fields"]
    assert optimizer.param_groups[0]["last_hvp_step"] == 5  # the warm-up's curvature steps ran
    camera, batch = next(iter(trainer.pipeline.datamanager.fixed_indices_eval_dataloader))
    outputs = model.get_outputs_for_camera(camera)
    metrics, images = model.get_image_metrics_and_images(outputs, batch)
    assert np.isfinite(metrics["psnr"]) and 0 < metrics["ssim"] <= 1
    assert images["depth"].shape[:2] == (int(camera.height), int(camera.width))
    assert torch.isfinite(outputs["depth"]).all()
