"""What is read from a trained occupancy field: IoU against the labels, the surface by marching
cubes, and a shaded preview of that surface.

IoU = |A ∩ B| / |A ∪ B| of predicted and true inside sets. The surface is the 0-level set of the
field's logit on a regular grid over [−1, 1]³ (scikit-image's marching cubes).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import trimesh


def _as_bool(values: np.ndarray | torch.Tensor) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    return np.asarray(values).astype(bool).reshape(-1)


def iou(predicted: np.ndarray | torch.Tensor, target: np.ndarray | torch.Tensor) -> float:
    """|A ∩ B| / |A ∪ B| of two boolean arrays of the same size; 1.0 when both are empty."""
    a, b = _as_bool(predicted), _as_bool(target)
    if a.shape != b.shape:
        raise ValueError(f"iou: predicted has {a.size} entries, target {b.size}")
    union = int(np.count_nonzero(a | b))
    if union == 0:
        return 1.0
    return int(np.count_nonzero(a & b)) / union


def extract_mesh(
    logits_fn: Callable[[torch.Tensor], torch.Tensor],
    resolution: int = 128,
    chunk: int = 65536,
    level: float = 0.0,
    device: torch.device | str | None = None,
) -> trimesh.Trimesh:
    """The surface {logit = level} by marching cubes on a resolution³ grid over [−1, 1]³.

    Grid nodes include ±1 (spacing 2/(resolution − 1)); ``logits_fn`` gets (≤chunk, 3) float32
    points on ``device`` (default CPU) under torch.no_grad(). The grid is padded with "outside", so
    a surface cut by the cube is closed on the cube's faces. No crossing (all inside or all
    outside) gives an empty Trimesh. Non-finite logits are treated as outside, with a warning.
    """
    from skimage.measure import marching_cubes

    if resolution < 2:
        raise ValueError(f"extract_mesh: resolution must be ≥ 2, got {resolution}")
    axis = torch.linspace(-1.0, 1.0, resolution, device=device)
    gx, gy, gz = torch.meshgrid(axis, axis, axis, indexing="ij")
    grid = torch.stack([gx, gy, gz], dim=-1).reshape(-1, 3)
    values = np.empty(grid.shape[0], dtype=np.float32)
    with torch.no_grad():
        for start in range(0, grid.shape[0], chunk):
            logits = logits_fn(grid[start : start + chunk])
            values[start : start + chunk] = logits.detach().reshape(-1).float().cpu().numpy()
    if not np.isfinite(values).all():
        warnings.warn(
            f"extract_mesh: {np.count_nonzero(~np.isfinite(values))} non-finite logits treated as outside",
            stacklevel=2,
        )
        values = np.where(np.isfinite(values), values, np.float32(level - 1.0))
    volume = values.reshape(resolution, resolution, resolution)
    inside = volume > level
    if inside.all() or not inside.any():
        return trimesh.Trimesh()
    outside = float(min(level - 1.0, level - 1e6 * max(1.0, float(np.abs(volume - level).max()))))
    padded = np.pad(volume, 1, constant_values=outside)
    spacing = 2.0 / (resolution - 1)
    # values are larger inside: "ascent" orients the faces outwards (positive volume)
    vertices, faces, _, _ = marching_cubes(padded, level, spacing=(spacing,) * 3, gradient_direction="ascent")
    vertices = (vertices - 1.0 - spacing).clip(-1.0, 1.0)
    return trimesh.Trimesh(vertices, faces, process=False)


def render_preview(mesh: trimesh.Trimesh, path: Path, size: int = 512, title: str | None = None) -> Path:
    """A Lambert-shaded, orthographic ray-cast PNG of a mesh in [−1, 1]³ (headless: matplotlib Agg).

    Two views side by side, each size × size pixels: from the front-right (0.5, 0.35, 1) and from
    the back-left (−0.5, 0.35, −1), y up, two-sided shading. The PNG is 2·size × size. An empty
    mesh gives a PNG that says "empty mesh".
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    path = Path(path)
    dpi = 100
    figure = Figure(figsize=(2 * size / dpi, size / dpi), dpi=dpi, facecolor="white")
    FigureCanvasAgg(figure)
    top = 0.93 if title else 1.0
    if len(mesh.faces) == 0:
        axes = figure.add_axes((0.0, 0.0, 1.0, top))
        axes.set_axis_off()
        axes.text(
            0.5, 0.5, "empty mesh", ha="center", va="center", fontsize=max(8, size // 20), transform=axes.transAxes
        )
    else:
        pixels = size if trimesh.ray.has_embree else min(size, 160)  # trimesh's own rays are slow
        for column, eye in enumerate(((0.5, 0.35, 1.0), (-0.5, 0.35, -1.0))):
            axes = figure.add_axes((0.5 * column, 0.0, 0.5, top))
            axes.set_axis_off()
            axes.imshow(_shade(mesh, pixels, np.array(eye)), interpolation="bilinear")
    if title:
        figure.suptitle(title, fontsize=max(6, size // 40), y=0.985)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=dpi, facecolor="white")
    return path


def _shade(mesh: trimesh.Trimesh, pixels: int, eye: np.ndarray) -> np.ndarray:
    """(pixels, pixels, 3) image seen from direction ``eye``: orthographic rays over [−1.05, 1.05]²,
    Lambert shading with a light above and to the left of the viewer."""
    eye = eye / np.linalg.norm(eye)
    right = np.cross([0.0, 1.0, 0.0], eye)
    right /= np.linalg.norm(right)
    up = np.cross(eye, right)
    light = eye + 0.6 * up - 0.4 * right
    light /= np.linalg.norm(light)
    coords = (np.arange(pixels) + 0.5) / pixels * 2.1 - 1.05
    u, v = np.meshgrid(coords, -coords)  # row 0 at the top
    origins = 3.0 * eye + u.reshape(-1, 1) * right + v.reshape(-1, 1) * up
    directions = np.broadcast_to(-eye, origins.shape).copy()
    hit = np.asarray(mesh.ray.intersects_first(origins, directions))
    image = np.ones((pixels * pixels, 3))
    found = hit >= 0
    normals = np.asarray(mesh.face_normals)[hit[found]]
    normals *= np.where(normals @ eye < 0, -1.0, 1.0)[:, None]  # two-sided
    shade = 0.18 + 0.82 * np.clip(normals @ light, 0.0, 1.0)
    image[found] = shade[:, None] * np.array([0.72, 0.78, 0.9])
    return image.reshape(pixels, pixels, 3)
