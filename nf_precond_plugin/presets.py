"""The paper's settings (§5) in one place, so every task and diagnostic agrees on them."""

from __future__ import annotations

from typing import Any

# Image fitting (§5.1): 5 layers × 256, batch 512; σ = 0.05 (Gaussian), ω = 30 (sine), ω₀ = s₀ = 10 (wavelet).
IMAGE_SIGMA = 0.05
IMAGE_HIDDEN = 256
IMAGE_LAYERS = 5
IMAGE_BATCH = 512


def image_field_kwargs(
    activation: str, hidden_features: int = IMAGE_HIDDEN, num_layers: int = IMAGE_LAYERS
) -> dict[str, Any]:
    return dict(
        in_features=2,
        out_features=3,
        hidden_features=hidden_features,
        num_layers=num_layers,
        activation=activation,
        sigma=IMAGE_SIGMA,
        omega=30.0,
        wavelet_omega=10.0,
        wavelet_scale=10.0,
    )


def paper_lr(optimizer: str, activation: str) -> float:
    """Adam 1e-4 (1e-3 for ReLU-PE); ESGD and AdaHessian 0.15 (0.1 for ReLU-PE)."""
    relu_like = activation in ("relu-pe", "relu")
    if optimizer == "adam":
        return 1e-3 if relu_like else 1e-4
    if optimizer in ("esgd", "esgd-max", "adahessian", "adahessian-j"):
        return 0.1 if relu_like else 0.15
    raise ValueError(f"no paper learning rate for optimizer {optimizer!r}")
