"""Activations of coordinate MLPs (neural fields).

- Gaussian:  φ(z) = exp(−z² / 2σ²)                                  (Ramasinghe & Lucey, 2022)
- sine:      φ(z) = sin(ω z), ω = 30                                   (SIREN, Sitzmann et al., 2020)
- wavelet:   φ(z₁, z₂) = cos(ω₀ z₁) · exp(−(s₀ z₂)²), ω₀ = s₀ = 10      (real Gabor, WIRE)
- ReLU, optionally after a positional encoding
      γ(x) = [x, sin(2ᵏπx), cos(2ᵏπx)]_{k=0..K−1},  K = 8            (NeRF)
All are smooth except ReLU, whose second derivative vanishes almost everywhere, which is why
Hessian-vector products of ReLU fields are sparse.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class Gaussian(nn.Module):
    def __init__(self, sigma: float = 0.1) -> None:
        super().__init__()
        if not sigma > 0:
            raise ValueError(f"Invalid Gaussian sigma: {sigma} (expected sigma > 0)")
        self.sigma = sigma

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return torch.exp(-0.5 * (z / self.sigma).square())

    def extra_repr(self) -> str:
        return f"sigma={self.sigma}"


class Sine(nn.Module):
    def __init__(self, omega: float = 30.0) -> None:
        super().__init__()
        self.omega = omega

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return torch.sin(self.omega * z)

    def extra_repr(self) -> str:
        return f"omega={self.omega}"


class RealGabor(nn.Module):
    """Takes the two pre-activations z₁ (frequency) and z₂ (scale) stacked on the last dimension."""

    def __init__(self, omega: float = 10.0, scale: float = 10.0) -> None:
        super().__init__()
        self.omega = omega
        self.scale = scale

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        z_freq, z_scale = z.chunk(2, dim=-1)
        return torch.cos(self.omega * z_freq) * torch.exp(-(self.scale * z_scale).square())

    def extra_repr(self) -> str:
        return f"omega={self.omega}, scale={self.scale}"


class PositionalEncoding(nn.Module):
    def __init__(self, in_features: int, octaves: int = 8) -> None:
        super().__init__()
        self.in_features = in_features
        self.octaves = octaves
        self.register_buffer("frequencies", (2.0 ** torch.arange(octaves)) * math.pi, persistent=False)

    @property
    def out_features(self) -> int:
        return self.in_features * (1 + 2 * self.octaves)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        angles = (x[..., :, None] * self.frequencies).flatten(-2)
        return torch.cat([x, torch.sin(angles), torch.cos(angles)], dim=-1)
