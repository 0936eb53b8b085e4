"""Image metrics for evaluation: PSNR and SSIM (torchmetrics), and LPIPS only when it needs no download.

LPIPS(AlexNet) needs torchvision's ImageNet AlexNet weights. They are looked for in torch hub's
checkpoint folder only; when absent LPIPS is reported as ``None`` after one warning, because
building the metric would otherwise try to download them.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import Tensor
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

_lpips_cache: dict[str, torch.nn.Module] = {}
_warned_missing = False


def alexnet_weights_path() -> Path:
    """Where torchvision would cache the AlexNet weights LPIPS needs."""
    from torchvision.models import AlexNet_Weights

    url = AlexNet_Weights.IMAGENET1K_V1.url
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(url).name


def lpips_metric(device: torch.device) -> torch.nn.Module | None:
    """The LPIPS module on ``device``, or None (one warning per process) when its weights are not on disk."""
    global _warned_missing
    key = str(device)
    if key in _lpips_cache:
        return _lpips_cache[key]
    weights = alexnet_weights_path()
    if not weights.is_file():
        if not _warned_missing:
            warnings.warn(
                f"LPIPS skipped: AlexNet weights not found at {weights} (no download is attempted); "
                "LPIPS is reported as null",
                RuntimeWarning,
                stacklevel=2,
            )
            _warned_missing = True
        return None
    from torchmetrics.image.lpip import LearnedPerceptualImagePatchSimilarity

    metric = LearnedPerceptualImagePatchSimilarity(net_type="alex", normalize=True).to(device)
    _lpips_cache[key] = metric
    return metric


def image_metrics(prediction: Tensor, target: Tensor) -> dict[str, float | None]:
    """PSNR, SSIM and LPIPS (or None) of two [H, W, 3] images in [0, 1]."""
    pred = prediction.clamp(0.0, 1.0).permute(2, 0, 1)[None]
    gt = target.permute(2, 0, 1)[None]
    lpips = lpips_metric(pred.device)
    return {
        "psnr": float(peak_signal_noise_ratio(pred, gt, data_range=1.0)),
        "ssim": float(structural_similarity_index_measure(pred, gt, data_range=1.0)),
        "lpips": None if lpips is None else float(lpips(pred, gt)),
    }
