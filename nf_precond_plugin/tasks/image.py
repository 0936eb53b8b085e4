"""2D image fitting (the paper's §5.1): a coordinate MLP maps pixel centres in [−1, 1]² to RGB.

PSNR = −10 · log10(MSE) over the full image with colours in [0, 1] (torchmetrics).

The field is fitted on a square: a non-square image is cropped to its centre square, then resized
to ``--size``. The crop is printed as a note when the task is built and recorded in ``describe()``
(hence in summary.json), so a result is never silently about part of a photograph.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from nf_precond_plugin.data.images import load_target, pixel_coordinates
from nf_precond_plugin.presets import IMAGE_SIZE
from nf_precond_plugin.tasks.common import FitConfig, build_field, model_device


@dataclass
class ImageConfig(FitConfig):
    """Fit a coordinate MLP to an image and report PSNR per epoch."""

    image: Path | None = None
    """Image file (anything imageio reads). Default: scikit-image's astronaut, shipped in its wheel."""
    size: int = IMAGE_SIZE
    """Side of the square target after resizing (the paper: 256). A non-square image is first
    cropped to its centre square."""


class ImageTask:
    name = "image"
    metric = "psnr"

    def __init__(self, config: ImageConfig) -> None:
        self.config = config
        loaded = load_target(config.image, config.size)
        self.target, self.source, self.crop = loaded.target, loaded.source, loaded.crop
        if loaded.note is not None and os.environ.get("RANK", "0") == "0":  # once per data-parallel run
            from rich.console import Console
            from rich.markup import escape

            Console(stderr=True, highlight=False, soft_wrap=True, emoji=False).print(
                f"[cyan]note:[/cyan] {escape(loaded.note)}"
            )
        self.coords = pixel_coordinates(config.size, config.size)
        self.colors = self.target.reshape(-1, 3)
        self.samples_per_epoch = self.coords.shape[0]  # every pixel once

    def build_model(self) -> torch.nn.Module:
        return build_field(self.config, 2, 3)

    def epoch_data(self, epoch: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        order = torch.randperm(self.coords.shape[0], generator=generator)
        return self.coords[order], self.colors[order]

    def loss(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return (prediction - target).square().mean()

    @torch.no_grad()
    def render(self, model: torch.nn.Module) -> torch.Tensor:
        device = model_device(model)
        pixels = torch.cat([model(chunk.to(device)).cpu() for chunk in self.coords.split(65536)])
        return pixels.reshape(self.target.shape)

    @torch.no_grad()
    def evaluate(self, model, last_batch) -> dict[str, float]:
        from torchmetrics.functional.image import peak_signal_noise_ratio

        rendered = self.render(model).clamp(0, 1)
        psnr = peak_signal_noise_ratio(rendered, self.target, data_range=1.0)
        return {"psnr": float(psnr)}

    def export(self, model: torch.nn.Module, run_dir: Path, tag: str) -> list[Path]:
        import imageio.v3 as iio
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from torchmetrics.functional.image import structural_similarity_index_measure

        rendered = self.render(model).clamp(0, 1)
        recon = run_dir / f"reconstruction-{tag}.png"
        iio.imwrite(recon, (rendered.numpy() * 255 + 0.5).astype("uint8"))
        error = (rendered - self.target).abs().mean(dim=-1)
        ssim = float(
            structural_similarity_index_measure(
                rendered.permute(2, 0, 1)[None], self.target.permute(2, 0, 1)[None], data_range=1.0
            )
        )
        fig, ax = plt.subplots(figsize=(5, 4.4), dpi=120)
        shown = ax.imshow(error.numpy(), cmap="magma", vmin=0, vmax=max(float(error.max()), 1e-6))
        fig.colorbar(shown, ax=ax, fraction=0.046, label="|error| (mean over RGB)")
        ax.set_title(f"{tag}: mean |error| {float(error.mean()):.4f}, SSIM {ssim:.3f}", fontsize=9)
        ax.axis("off")
        errmap = run_dir / f"error-{tag}.png"
        fig.savefig(errmap, bbox_inches="tight")
        plt.close(fig)
        return [recon, errmap]

    def describe(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "crop": self.crop,
            "size": self.config.size,
            "pixels": int(self.coords.shape[0]),
        }
