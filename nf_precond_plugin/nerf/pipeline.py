"""nerfstudio's VanillaPipeline, except that its model is never wrapped in DistributedDataParallel
and evaluation reports LPIPS as null when it could not be computed.

On several devices the CurvatureTrainer averages gradients (and the curvature optimizers H·v)
itself: DDP cannot reduce gradients that carry a graph, and its backward on a
``create_graph=True`` pass fails outright.

The model leaves LPIPS out of its per-image metrics when AlexNet's weights are not on disk, and
nerfstudio averages only the keys it gets; ``ns-eval``'s JSON then says ``"lpips": null`` rather
than silently lacking the key. (The trainer's own all-image evaluation just lacks the key.)
"""

from __future__ import annotations

from dataclasses import dataclass, field

from nerfstudio.pipelines.base_pipeline import VanillaPipeline, VanillaPipelineConfig

from nf_precond_plugin.training.distributed import broadcast_module_


@dataclass
class CurvaturePipelineConfig(VanillaPipelineConfig):
    _target: type = field(default_factory=lambda: CurvaturePipeline)


class CurvaturePipeline(VanillaPipeline):
    def __init__(self, config, device, test_mode="val", world_size=1, local_rank=0, grad_scaler=None):
        # world_size=1: no DDP wrapper (see above); the datamanager only sizes eval loaders with it.
        super().__init__(config, device, test_mode, world_size=1, local_rank=local_rank, grad_scaler=grad_scaler)
        if world_size > 1:
            broadcast_module_(self._model)  # nerfstudio seeds each rank apart; start from rank 0's field

    def get_average_image_metrics(self, data_loader, image_prefix, step=None, output_path=None, get_std=False):
        metrics = super().get_average_image_metrics(data_loader, image_prefix, step, output_path, get_std)
        # Only ns-eval asks for standard deviations; the trainer's writers would call float(None).
        if get_std:
            metrics.setdefault("lpips", None)
            metrics.setdefault("lpips_std", None)
        return metrics
