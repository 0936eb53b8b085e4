"""Neural-field building blocks shared by every task (pure torch, no nerfstudio import)."""

from nf_precond_plugin.fields.activations import Gaussian, PositionalEncoding, RealGabor, Sine
from nf_precond_plugin.fields.mlp import ACTIVATIONS, ActivationName, CoordinateMLP

__all__ = ["ACTIVATIONS", "ActivationName", "CoordinateMLP", "Gaussian", "PositionalEncoding", "RealGabor", "Sine"]
