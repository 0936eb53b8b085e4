"""The coordinate MLP shared by the image, occupancy and NeRF fields.

F₀ = x (or γ(x) for relu-pe),  F_k = φ(F_{k−1} W_k + b_k) for k < L,  F_L = F_{L−1} W_L + b_L,
with ``num_layers`` = L linear layers of width ``hidden_features`` (the paper's "5 layers × 256").
A layer listed in ``skip_layers`` also sees the network input, concatenated to its own input.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal, get_args

import torch
from torch import nn

from nf_precond_plugin.fields.activations import Gaussian, PositionalEncoding, RealGabor, Sine

ActivationName = Literal["gaussian", "sine", "wavelet", "relu-pe", "relu"]
ACTIVATIONS: tuple[str, ...] = get_args(ActivationName)


class CoordinateMLP(nn.Module):
    def __init__(
        self,
        in_features: int,
        out_features: int,
        hidden_features: int = 256,
        num_layers: int = 5,
        activation: ActivationName = "gaussian",
        sigma: float = 0.1,
        omega: float = 30.0,
        wavelet_omega: float = 10.0,
        wavelet_scale: float = 10.0,
        pe_octaves: int = 8,
        skip_layers: Sequence[int] = (),
    ) -> None:
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"Unknown activation {activation!r}; expected one of {', '.join(ACTIVATIONS)}")
        if num_layers < 1:
            raise ValueError(f"Invalid num_layers: {num_layers} (expected >= 1)")
        if hidden_features < 1:
            raise ValueError(f"Invalid hidden_features: {hidden_features} (expected >= 1)")
        bad_skips = [k for k in skip_layers if not 0 < k < num_layers]
        if bad_skips:
            raise ValueError(f"Invalid skip_layers {bad_skips}: expected indices in 1..{num_layers - 1}")
        self.activation_name = activation
        self.skip_layers = tuple(skip_layers)
        self.encoding = PositionalEncoding(in_features, pe_octaves) if activation == "relu-pe" else nn.Identity()
        encoded = self.encoding.out_features if activation == "relu-pe" else in_features
        # The Gabor wavelet needs two pre-activations per unit: one linear of twice the width.
        width_factor = 2 if activation == "wavelet" else 1

        self.layers = nn.ModuleList()
        features = encoded
        for index in range(num_layers):
            if index in self.skip_layers:
                features += encoded
            last = index == num_layers - 1
            self.layers.append(nn.Linear(features, out_features if last else hidden_features * width_factor))
            features = hidden_features

        if activation == "gaussian":
            self.activation: nn.Module = Gaussian(sigma)
        elif activation == "sine":
            self.activation = Sine(omega)
            self._siren_init(omega)
        elif activation == "wavelet":
            self.activation = RealGabor(wavelet_omega, wavelet_scale)
        else:
            self.activation = nn.ReLU()

    @torch.no_grad()
    def _siren_init(self, omega: float) -> None:
        """SIREN: first layer U(±1/n), later layers U(±√(6/n)/ω), n = fan-in; keeps sin(ωz) in range."""
        for index, layer in enumerate(self.layers):
            fan_in = layer.in_features
            bound = 1.0 / fan_in if index == 0 else math.sqrt(6.0 / fan_in) / omega
            layer.weight.uniform_(-bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(*self.trunk(x))

    def trunk(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Features of the last hidden layer, and the encoded input (for a skip into the head)."""
        encoded = self.encoding(x)
        h = encoded
        for index, layer in enumerate(self.layers[:-1]):
            if index in self.skip_layers:
                h = torch.cat([h, encoded], dim=-1)
            h = self.activation(layer(h))
        return h, encoded

    def head(self, hidden: torch.Tensor, encoded: torch.Tensor) -> torch.Tensor:
        last = len(self.layers) - 1
        if last in self.skip_layers:
            hidden = torch.cat([hidden, encoded], dim=-1)
        return self.layers[last](hidden)
