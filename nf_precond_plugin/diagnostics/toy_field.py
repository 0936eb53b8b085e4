"""The small neural field of the paper's Fig. 2, and its exact loss Hessian.

A 2×16 Gaussian MLP (``CoordinateMLP(1, 1, hidden_features=16, num_layers=3,
activation="gaussian")``, P = 321 parameters, float64) fits f(x) = sin(2πx) + sin(6πx) on N evenly
spaced points of [−1, 1] with L(θ) = (1/N) Σᵢ (F(xᵢ; θ) − yᵢ)². The exact P×P Hessian H = ∇²L is
``torch.func.hessian`` (forward-over-reverse) of the loss as a function of the flattened parameter
vector through ``torch.func.functional_call``; it equals ``torch.autograd.functional.hessian`` to
rounding and is ~4× faster.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch.func import functional_call

from nf_precond_plugin.fields import CoordinateMLP


def target_signal(x: torch.Tensor) -> torch.Tensor:
    return torch.sin(2 * math.pi * x) + torch.sin(6 * math.pi * x)


def make_problem(samples: int, dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.linspace(-1.0, 1.0, samples, dtype=dtype)[:, None]
    return x, target_signal(x)


def make_field(sigma: float, seed: int, hidden_features: int = 16, num_layers: int = 3) -> CoordinateMLP:
    """The paper's 2×16 Gaussian MLP (``num_layers`` counts linear layers), in float64."""
    torch.manual_seed(seed)
    model = CoordinateMLP(
        1, 1, hidden_features=hidden_features, num_layers=num_layers, activation="gaussian", sigma=sigma
    )
    return model.double()


def flat_parameters(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()]).clone()


def mse_loss_function(
    model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor
) -> Callable[[torch.Tensor], torch.Tensor]:
    """L(θ) = mean((F(x; θ) − y)²) as a pure function of the flattened parameter vector θ."""
    names = [name for name, _ in model.named_parameters()]
    shapes = [p.shape for _, p in model.named_parameters()]
    sizes = [math.prod(s) for s in shapes]

    def loss(theta: torch.Tensor) -> torch.Tensor:
        chunks = torch.split(theta, sizes)
        params = {n: c.view(s) for n, c, s in zip(names, chunks, shapes)}
        return (functional_call(model, params, (x,)) - y).square().mean()

    return loss


def exact_hessian(loss: Callable[[torch.Tensor], torch.Tensor], theta: torch.Tensor) -> torch.Tensor:
    """The exact P×P Hessian of ``loss`` at ``theta`` (forward-over-reverse), symmetrised."""
    h = torch.func.hessian(loss)(theta.detach())
    return 0.5 * (h + h.T)
