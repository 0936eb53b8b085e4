"""A trained run's held-out views at a size one can look at: RGB, and depth with a labelled colour bar.

A field trained on small images (the demo scene is 80 × 60) can be rendered at any resolution: the
test cameras are scaled with nerfstudio's ``Cameras.rescale_output_resolution`` (focal lengths,
principal point and image size alike), so each rendered view is at least ``min_width`` pixels wide.

Depth is shown as depth along the camera's viewing axis (the renderer's ray distance t divided by
the ray's 1/cos θ stretch, nerfstudio's "directions_norm"), converted back to the units of the
scene's own poses by the dataparser's scale: for the demo scene the three planes are at 2.5, 3.5
and 6. The colour bar spans the rendered range, which its label states.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

MIN_WIDTH = 320
"""Renders are at least this many pixels wide (never smaller than the training images)."""


@dataclass
class RenderedView:
    name: str
    rgb: Path
    depth: Path
    width: int
    height: int
    depth_range: tuple[float, float]
    seconds: float


def output_scale(width: int, min_width: int = MIN_WIDTH) -> float:
    """The camera scale that makes an image ``width`` pixels wide at least ``min_width`` wide
    (nerfstudio floors the scaled size, hence the half pixel)."""
    return max(1.0, (min_width + 0.5) / width)


def save_depth_figure(depth: np.ndarray, path: Path, title: str) -> tuple[float, float]:
    """``depth`` (H, W) as a colour image with a colour bar whose label gives the range; returns it."""
    from matplotlib.figure import Figure  # no pyplot: no backend or global state involved

    low, high = float(np.min(depth)), float(np.max(depth))
    height, width = depth.shape
    figure = Figure(figsize=(max(width, 320) / 100 + 1.6, max(height, 240) / 100 + 0.6), dpi=100)
    axes = figure.subplots()
    image = axes.imshow(depth, cmap="turbo_r", vmin=low, vmax=high, interpolation="nearest")
    axes.set_axis_off()
    axes.set_title(title, fontsize=9)
    bar = figure.colorbar(image, ax=axes, fraction=0.05, pad=0.02)
    bar.set_label(f"depth along the view axis: {low:.2f} – {high:.2f} (scene units)", fontsize=8)
    bar.ax.tick_params(labelsize=7)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, bbox_inches="tight")
    return low, high


def render_views(
    config_path: Path,
    output_dir: Path,
    *,
    min_width: int = MIN_WIDTH,
    split: str = "test",
    on_view: Callable[[int, int, str, int, int], None] | None = None,
) -> list[RenderedView]:
    """Render every ``split`` view of the run at ``config_path`` into ``output_dir``/{split}/rgb and
    /depth (PNG). ``on_view(index, count, name, width, height)`` is called before each view."""
    import imageio.v3 as iio
    import torch
    from nerfstudio.utils.eval_utils import eval_setup

    _, pipeline, _, _ = eval_setup(Path(config_path), test_mode="test")
    datamanager = pipeline.datamanager
    dataset = datamanager.eval_dataset if split == "test" else datamanager.train_dataset
    outputs_info = getattr(datamanager, "train_dataparser_outputs", None)
    scene_scale = float(getattr(outputs_info, "dataparser_scale", 1.0) or 1.0)
    rendered = []
    count = len(dataset)
    for index in range(count):
        name = Path(dataset.image_filenames[index]).stem
        camera = dataset.cameras[index : index + 1].to(pipeline.device)
        camera.rescale_output_resolution(output_scale(int(camera.width[0, 0]), min_width))
        width, height = int(camera.width[0, 0]), int(camera.height[0, 0])
        if on_view is not None:
            on_view(index, count, name, width, height)
        started = time.perf_counter()
        with torch.no_grad():
            outputs = pipeline.model.get_outputs_for_camera(camera)
            stretch = camera.generate_rays(camera_indices=0, keep_shape=True).metadata["directions_norm"]
        rgb = (outputs["rgb"].clamp(0.0, 1.0).cpu().numpy() * 255.0 + 0.5).astype(np.uint8)
        depth = (outputs["depth"] / stretch.to(outputs["depth"].device)).squeeze(-1).cpu().numpy() / scene_scale
        rgb_path = output_dir / split / "rgb" / f"{name}.png"
        rgb_path.parent.mkdir(parents=True, exist_ok=True)
        iio.imwrite(rgb_path, rgb)
        depth_path = output_dir / split / "depth" / f"{name}.png"
        depth_range = save_depth_figure(depth, depth_path, f"{name}: depth ({width}×{height})")
        seconds = time.perf_counter() - started
        rendered.append(RenderedView(name, rgb_path, depth_path, width, height, depth_range, seconds))
    return rendered


def describe_size(views: list[RenderedView]) -> str:
    sizes = sorted({(view.width, view.height) for view in views})
    return ", ".join(f"{w}×{h}" for w, h in sizes) if sizes else "no views"
