"""Options every standalone task shares, and the field they build from them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from nf_precond_plugin.fields import CoordinateMLP

ActivationName = Literal["gaussian", "sine", "wavelet", "relu-pe", "relu"]


@dataclass
class FitConfig:
    activation: ActivationName = "gaussian"
    """Activation of the coordinate MLP."""
    optimizer: str = "esgd"
    """One of adam, sgd, esgd, esgd-max, adahessian, adahessian-j, shampoo, kfac."""
    compare: str | None = None
    """Comma-separated optimizers trained side by side from the same init and data, e.g. adam,esgd (overrides --optimizer)."""
    lr: float | None = None
    """Learning rate; default: the paper's for each optimizer and activation."""
    epochs: int = 200
    batch_size: int = 512
    """Samples per minibatch."""
    hidden_features: int = 256
    num_layers: int = 5
    """Linear layers including the output (the paper: 5 × 256)."""
    sigma: float = 0.05
    """Gaussian σ."""
    omega: float = 30.0
    """Sine frequency ω (SIREN: 30)."""
    eval_every: int = 1
    """Evaluate every this many epochs."""
    seed: int = 0
    """Seed of the initialisation, the data order and the probes."""
    output_dir: Path = Path("outputs")
    """Each run writes into a new directory under this one."""
    resume: Path | None = None
    """Continue an interrupted run from its directory."""


def build_field(config: FitConfig, in_features: int, out_features: int) -> CoordinateMLP:
    return CoordinateMLP(
        in_features,
        out_features,
        config.hidden_features,
        config.num_layers,
        config.activation,
        sigma=config.sigma,
        omega=config.omega,
    )
