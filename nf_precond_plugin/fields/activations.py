"""Activations of coordinate MLPs (neural fields).

- Gaussian:  φ(z) = exp(−z² / 2σ²)                                  (Ramasinghe & Lucey, 2022)
- sine:      φ(z) = sin(ω z), ω = 30                                   (SIREN, Sitzmann et al., 2020)
- wavelet:   φ(z₁, z₂) = cos(ω₀ z₁) · exp(−(s₀ z₂)²), ω₀ = s₀ = 10      (real Gabor, WIRE)
- ReLU, optionally after a positional encoding
      γ(x) = [x, sin(2ᵏπx), cos(2ᵏπx)]_{k=0..K−1},  K = 8            (NeRF)
The Gaussian factors exp(−x) (x = z²/2σ² and x = (s₀z₂)²) are cut to exactly 0 below c = ∛tiny,
tiny = torch.finfo(dtype).tiny being the smallest normal float of the input's dtype:
      exp(−x) ↦ exp(−x) for x ≤ T,   0 for x > T,      T = −ln c = −⅓ ln tiny
(float32: c = 2.3e-13, T = 29.1; float64: c = 2.8e-103, T = 236). Their derivatives (the
Gaussian's hand-written −z/σ² · φ, the wavelet's by autograd) are then exactly 0 there too.
Why: a trained field has many units far from their centre, and without the cut their φ is a
normal float just above tiny that backward multiplies by gradients ≪ 1 (grad · φ · z, the next
layer's weight gradient φᵀ δ, the double backward of an H·v step), giving subnormals, on which
x86 arithmetic takes a slow path unless the process flushes them (``torch.set_flush_denormal``),
as a library user's own training loop does not. With the cut, a product of up to two kept
factors ≥ c (φ of one layer times the δ ∝ φ of the next, as in a weight gradient) and one more
factor ≥ c (a gradient, a probe) stays normal, since c³ = tiny, and a product with a cut factor
is exactly 0. c is also at least 2¹⁰ times below the dtype's eps, so even a thousand cut units,
each with a weight ≤ 1, change a sum of O(1) by less than eps. For x ≤ T the value and
its first and second derivatives are exactly those without the cut. The exponent is clamped at
T before exp, whose vectorised form also leaves its fast path for arguments below ln tiny.
float16's range is too narrow for that (∛tiny = 0.039 > eps); there c = tiny, which keeps its
outputs normal.

All are smooth except ReLU, whose second derivative vanishes almost everywhere, which is why
Hessian-vector products of ReLU fields are sparse.
"""

from __future__ import annotations

import functools
import math

import torch
from torch import nn


@functools.cache
def exponent_cut(dtype: torch.dtype) -> float:
    """T of the cut exp(−x) ↦ 0 for x > T: T = −ln c, c = ∛tiny (tiny where that is not ≤ eps/2¹⁰)."""
    info = torch.finfo(dtype)
    cut = info.tiny ** (1 / 3)
    if not cut <= info.eps * 2**-10:
        cut = info.tiny
    return -math.log(cut)


def _exp_neg(exponent: torch.Tensor) -> torch.Tensor:
    """exp(−exponent) for exponent ≥ 0, exactly 0 beyond the cut (differentiable, NaN kept)."""
    limit = exponent_cut(exponent.dtype)
    return torch.exp(-exponent.clamp(max=limit)).masked_fill(exponent > limit, 0.0)


def _exp_neg_(exponent: torch.Tensor) -> torch.Tensor:
    """``_exp_neg`` reusing ``exponent``'s storage, outside autograd (a Function's forward)."""
    limit = exponent_cut(exponent.dtype)
    beyond = exponent > limit
    return exponent.clamp_(max=limit).neg_().exp_().masked_fill_(beyond, 0.0)


class _GaussianFunction(torch.autograd.Function):
    """φ(z) = exp(−z²/2σ²), cut to 0 below c, with the hand-written derivative φ'(z) = −z φ(z) / σ².

    Autograd of the composed expression records six elementwise ops per layer, and the double
    backward of an H·v step differentiates each of them again. The backward here is three
    differentiable ops on the saved (z, φ), so second derivatives stay exact and cheap.
    """

    generate_vmap_rule = True  # torch.func.hessian / vmap over a batch of parameters

    @staticmethod
    def forward(z: torch.Tensor, sigma: float) -> torch.Tensor:
        return _exp_neg_(z.square().mul_(0.5 / sigma**2))

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
