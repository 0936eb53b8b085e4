"""nerfstudio's VanillaPipeline, except that evaluation reports LPIPS as null when it could not be computed.

The model leaves LPIPS out of its per-image metrics when AlexNet's weights are not on disk, and
nerfstudio averages only the keys it gets; ``ns-eval``'s JSON then says ``"lpips": null`` rather
than silently lacking the key. (The trainer's own all-image evaluation just lacks the key.)
"""

from __future__ import annotations

from dataclasses import dataclass, field

from nerfstudio.pipelines.base_pipeline import VanillaPipeline, VanillaPipelineConfig


@dataclass
class CurvaturePipelineConfig(VanillaPipelineConfig):
    _target: type = field(default_factory=lambda: CurvaturePipeline)


class CurvaturePipeline(VanillaPipeline):
    def get_average_image_metrics(self, data_loader, image_prefix, step=None, output_path=None, get_std=False):
        metrics = super().get_average_image_metrics(data_loader, image_prefix, step, output_path, get_std)
        # Only ns-eval asks for standard deviations; the trainer's writers would call float(None).
        if get_std:
            metrics.setdefault("lpips", None)
            metrics.setdefault("lpips_std", None)
        return metrics
