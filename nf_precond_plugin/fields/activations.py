"""Activations of coordinate MLPs (neural fields).

- Gaussian:  φ(z) = exp(−z² / 2σ²)                                  (Ramasinghe & Lucey, 2022)
- sine:      φ(z) = sin(ω z), ω = 30                                   (SIREN, Sitzmann et al., 2020)
- wavelet:   φ(z₁, z₂) = cos(ω₀ z₁) · exp(−(s₀ z₂)²), ω₀ = s₀ = 10      (real Gabor, WIRE)
- ReLU, optionally after a positional encoding
      γ(x) = [x, sin(2ᵏπx), cos(2ᵏπx)]_{k=0..K−1},  K = 8            (NeRF)
The exponents are clamped at 87 (exp(−87) = 1.6e-38, the smallest normal float32 is 1.2e-38): on
x86, vectorised exp of a more negative argument leaves its fast path and runs 15–40× slower, and a
trained Gaussian field has many such pre-activations. The clamp changes values by < 1.7e-38 and
zeroes derivatives that were below ~1e-34 anyway.

All are smooth except ReLU, whose second derivative vanishes almost everywhere, which is why
Hessian-vector products of ReLU fields are sparse.
"""

from __future__ import annotations

import math

import torch
from torch import nn

EXPONENT_CLAMP = 87.0


def _exp_neg(exponent: torch.Tensor) -> torch.Tensor:
    """exp(−exponent) for exponent ≥ 0, kept inside exp's fast, normal-float range."""
    return torch.exp(-exponent.clamp(max=EXPONENT_CLAMP))


class _GaussianFunction(torch.autograd.Function):
    """φ(z) = exp(−z²/2σ²) with the hand-written derivative φ'(z) = −z φ(z) / σ².

    Autograd of the composed expression records six elementwise ops per layer, and the double
    backward of an H·v step differentiates each of them again. The backward here is three
    differentiable ops on the saved (z, φ), so second derivatives stay exact and cheap.
    """

    generate_vmap_rule = True  # torch.func.hessian / vmap over a batch of parameters

    @staticmethod
    def forward(z: torch.Tensor, sigma: float) -> torch.Tensor:
        return _exp_neg(z.square().mul_(0.5 / sigma**2))

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        z, sigma = inputs
        ctx.save_for_backward(z, output)
        ctx.save_for_forward(z, output)
        ctx.sigma = sigma

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        z, phi = ctx.saved_tensors
        return grad_output * phi * z * (-1.0 / ctx.sigma**2), None

    @staticmethod
    def jvp(ctx, z_tangent: torch.Tensor, _sigma_tangent) -> torch.Tensor:
        z, phi = ctx.saved_tensors
        return z_tangent * phi * z * (-1.0 / ctx.sigma**2)


class Gaussian(nn.Module):
    def __init__(self, sigma: float = 0.1) -> None:
        super().__init__()
        if not sigma > 0:
            raise ValueError(f"Invalid Gaussian sigma: {sigma} (expected sigma > 0)")
        self.sigma = sigma

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return _GaussianFunction.apply(z, self.sigma)

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
        return torch.cos(self.omega * z_freq) * _exp_neg((self.scale * z_scale).square())

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
