"""3D binary occupancy (the paper's §5.2, SAPE's protocol): a coordinate MLP maps points in
[−1, 1]³ to an inside/outside logit, trained with BCE on 1M fresh points per epoch.

IoU = |predicted ∩ true| / |predicted ∪ true| at probability 0.5, on a held-out point set drawn
once per run. The paper's figure reports IoU on the last training minibatch; both are recorded.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nf_precond_plugin.presets import OCCUPANCY_BATCH, OCCUPANCY_POINTS_PER_EPOCH, OCCUPANCY_SIGMA
from nf_precond_plugin.tasks.common import FitConfig, build_field, model_device


@dataclass
class OccupancyConfig(FitConfig):
    """Fit a binary occupancy field to a mesh and report IoU per epoch."""

    mesh: Path | None = None
    """Mesh file (obj/ply/off/stl, via trimesh).
    Default: the Stanford bunny in pymeshlab's wheel, else a generated torus knot."""
    points_per_epoch: int = OCCUPANCY_POINTS_PER_EPOCH
    """Fresh training points each epoch (the paper: 1M):
    1/3 surface + N(0, 0.01²), 1/3 surface + N(0, 0.1²), 1/3 uniform."""
    batch_size: int = OCCUPANCY_BATCH
    """Points per minibatch (the paper: 50k)."""
    sigma: float = OCCUPANCY_SIGMA
    """Gaussian σ (the paper: 0.09)."""
    heldout_points: int = 200_000
    """Held-out points for IoU (drawn once per run: half uniform, half near the surface)."""
    mesh_resolution: int = 128
    """Marching-cubes grid for the exported surface."""


class OccupancyTask:
    name = "occupancy"
    metric = "iou"

    def __init__(self, config: OccupancyConfig) -> None:
        from nf_precond_plugin.data import meshes

        self.config = config
        self.samples_per_epoch = config.points_per_epoch  # fresh points every epoch
        self.mesh, self.source = meshes.load_mesh(config.mesh)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            self.labeler = meshes.OccupancyLabeler(self.mesh)
        for warning in caught:
            from rich.console import Console

            Console(stderr=True).print(f"[yellow]warning:[/yellow] {warning.message}")
        rng = np.random.default_rng(config.seed + 7919)
        points = meshes.heldout_points(self.mesh, config.heldout_points, rng)
        self.heldout = torch.from_numpy(np.asarray(points, dtype=np.float32))
        self.heldout_labels = torch.from_numpy(self.labeler(points))

    def build_model(self) -> torch.nn.Module:
        return build_field(self.config, 3, 1)

    def epoch_data(self, epoch: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        from nf_precond_plugin.data.meshes import sample_occupancy_points

        seed = int(torch.randint(0, 2**62, (1,), generator=generator))
        points = sample_occupancy_points(self.mesh, self.config.points_per_epoch, np.random.default_rng(seed))
        labels = self.labeler(points)
        return torch.from_numpy(np.asarray(points, dtype=np.float32)), torch.from_numpy(labels.astype(np.float32))[
            :, None
        ]

    def optimizer_overrides(self, name: str) -> dict[str, Any]:
        # K-FAC's factors come from the model's Fisher: Bernoulli for a BCE-on-logits loss
        return {"fisher": "classif_binary_logits"} if name == "kfac" else {}

    def loss(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.binary_cross_entropy_with_logits(prediction, target)

    @torch.no_grad()
    def evaluate(self, model, last_batch) -> dict[str, float]:
        from nf_precond_plugin.data.occupancy_readout import iou

        device = model_device(model)
        logits = torch.cat([model(chunk.to(device)).cpu() for chunk in self.heldout.split(65536)])[:, 0]
        result = {"iou": iou(logits > 0, self.heldout_labels)}
        if last_batch is not None:
            _, target, prediction = last_batch
            result["iou_last_batch"] = iou(prediction[:, 0].cpu() > 0, target[:, 0].cpu() > 0.5)
        return result

    def export(self, model: torch.nn.Module, run_dir: Path, tag: str) -> list[Path]:
        from nf_precond_plugin.data.occupancy_readout import extract_mesh, render_preview

        model.eval()
        device = model_device(model)
        surface = extract_mesh(lambda x: model(x)[:, 0], resolution=self.config.mesh_resolution, device=device)
        mesh_path = run_dir / f"mesh-{tag}.ply"
        surface.export(mesh_path)
        preview = render_preview(surface, run_dir / f"preview-{tag}.png", title=f"{tag}: {len(surface.faces)} faces")
        return [mesh_path, preview]

    def describe(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "labels": self.labeler.method,
            "faces": int(len(self.mesh.faces)),
            "watertight": bool(self.mesh.is_watertight),
            "heldout_points": int(self.heldout.shape[0]),
            "heldout_inside_fraction": float(self.heldout_labels.float().mean()),
        }
