"""Options every standalone task shares, and the field they build from them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from nf_precond_plugin.fields import ActivationName, CoordinateMLP
from nf_precond_plugin.presets import HIDDEN_FEATURES, IMAGE_BATCH, IMAGE_SIGMA, NUM_LAYERS, SINE_OMEGA


@dataclass
class FitConfig:
    activation: ActivationName = "gaussian"
    """Activation of the coordinate MLP."""
    optimizer: str | None = None
    """A name from the optimizer registry (adam, esgd, muon, kfac, …); default: the project's choice
    for the activation (esgd where H·v is dense; muon for relu-pe and relu, adam if the field has no
    hidden layer for Muon)."""
    compare: str | None = None
    """Comma-separated optimizers trained side by side from the same init and data, e.g. adam,esgd
    (overrides --optimizer)."""
    lr: float | None = None
    """Learning rate; default: each optimizer's default for the activation (the paper's where it gives one)."""
    schedule: str | None = None
    """The lr schedule: constant, inverse-time, exponential, cosine or schedule-free; default: each
    optimizer's own (the registry's: esgd schedule-free; adam, muon, soap, kfac cosine; the rest constant).
    Under schedule-free, an optimizer's own momentum is off (β₁ = 0) unless --optimizer-arg sets betas."""
    warmup_epochs: float = 0.0
    """Linear lr warm-up over this many epochs (any schedule)."""
    decay_epochs: float = 1.0
    """inverse-time: the lr halves after this many epochs."""
    decay_end: float = 0.1
    """exponential and cosine: the lr at the end of the run ÷ the initial lr."""
    optimizer_arg: tuple[str, ...] = ()
    """Constructor arguments, as [OPTIMIZER:]NAME=VALUE (Python literals), e.g. clip=1e-3 or
    esgd:betas=0.8,0.95; without OPTIMIZER:, for every optimizer run. See each optimizer's signature."""
    epochs: int = 200
    batch_size: int = IMAGE_BATCH
    """Samples per minibatch."""
    hidden_features: int = HIDDEN_FEATURES
    num_layers: int = NUM_LAYERS
    """Linear layers including the output (the paper: 5 × 256)."""
    sigma: float = IMAGE_SIGMA
    """Gaussian σ."""
    omega: float = SINE_OMEGA
    """Sine frequency ω (SIREN: 30)."""
    eval_every: int = 1
    """Evaluate every this many epochs."""
    seed: int = 0
    """Seed of the initialisation, the data order and the probes."""
    device: str = "cpu"
    """Where to train: cpu, cuda or cuda:N (under torchrun, cuda means each rank's cuda:LOCAL_RANK)."""
    output_dir: Path = Path("outputs")
    """Each run writes into a new directory under this one."""
    resume: Path | None = None
    """Continue an interrupted run from its directory."""


def model_device(model: torch.nn.Module) -> torch.device:
    """Where ``model`` computes: its first parameter's (or buffer's) device; CPU if it has none."""
    for tensor in (*model.parameters(), *model.buffers()):
        return tensor.device
    return torch.device("cpu")


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
