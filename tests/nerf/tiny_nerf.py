"""Tiny nerfstudio configurations of a method on the generated scene (CPU, seconds per run)."""

from __future__ import annotations

import copy
from pathlib import Path

WARMUP, EVERY = 2, 3

TINY_MODEL = [
    "--pipeline.model.num-layers", "2",
    "--pipeline.model.hidden-dim", "32",
    "--pipeline.model.geo-feat-dim", "16",
    "--pipeline.model.hidden-dim-color", "16",
    "--pipeline.model.num-coarse-samples", "16",
    "--pipeline.datamanager.train-num-rays-per-batch", "256",
    "--pipeline.datamanager.eval-num-rays-per-batch", "1024",
    "--pipeline.model.eval-num-rays-per-chunk", "4096",
]  # fmt: skip
"""The command-line options that shrink a method to a test-sized field (what ns-train tests pass)."""


def tiny_config(spec, scene: Path, output: Path, iterations: int):
    """``spec``'s config shrunk to a 2×16 field and 64 rays; H·v on steps 0, 1, then every 3rd."""
    config = copy.deepcopy(spec.config)
    config.data = scene
    config.pipeline.datamanager.data = scene
    config.output_dir = output
    config.vis = "tensorboard"
    config.machine.device_type = "cpu"
    config.max_num_iterations = iterations
    config.steps_per_save = 1000
    config.steps_per_eval_batch = config.steps_per_eval_image = config.steps_per_eval_all_images = 10_000
    config.pipeline.datamanager.train_num_rays_per_batch = 64
    config.pipeline.datamanager.eval_num_rays_per_batch = 64
    model = config.pipeline.model
    model.num_layers, model.hidden_dim, model.geo_feat_dim, model.hidden_dim_color, model.num_coarse_samples = (
        2,
        16,
        8,
        8,
        8,
    )
    optimizer = config.optimizers["fields"]["optimizer"]
    if hasattr(optimizer, "d_warmup"):
        optimizer.d_warmup, optimizer.update_d_every = WARMUP, EVERY
    config.set_timestamp()
    return config
