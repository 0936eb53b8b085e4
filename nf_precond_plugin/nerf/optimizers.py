"""nerfstudio ``OptimizerConfig`` wrappers around the project's curvature optimizers.

nerfstudio builds an optimizer as ``config._target(params, **fields)`` (minus ``max_norm``), so each
field below is a constructor argument of the same class the standalone tasks use, and shows up on
the command line as ``--optimizers.fields.optimizer.<field>``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Tuple, Type

from nerfstudio.engine.optimizers import OptimizerConfig

from nf_precond_plugin.optim.adahessian import AdaHessian
from nf_precond_plugin.optim.esgd import ESGD


@dataclass
class ESGDOptimizerConfig(OptimizerConfig):
    """ESGD: EMA (or decayed max) of (Hv)², a Hessian-vector product on the first ``d_warmup`` steps, then every ``update_d_every``."""

    _target: Type = ESGD
    lr: float = 0.05
    """Learning rate."""
    eps: float = 1e-4
    """Added to the preconditioner's square root before dividing."""
    betas: Tuple[float, float] = (0.9, 0.999)
    """Momentum and curvature-EMA coefficients."""
    weight_decay: float = 0.0
    """L2 penalty added to the gradient."""
    update_d_every: int = 100
    """Steps between Hessian-vector products after the warm-up."""
    d_warmup: int = 50
    """Every one of the first ``d_warmup`` steps takes a Hessian-vector product."""
    variant: Literal["ema", "max"] = "ema"
    """Accumulate (Hv)² by an EMA (ESGD) or a decayed running max (ESGD-max)."""
    bias_correction: Literal["paper", "hvp"] = "paper"
    """Debias the curvature EMA by optimizer steps (the paper's code) or by Hessian-vector products taken."""


@dataclass
class AdaHessianOptimizerConfig(OptimizerConfig):
    """AdaHessian: Adam with the squared-gradient EMA replaced by an EMA of a Hessian-diagonal estimate."""

    _target: Type = AdaHessian
    lr: float = 0.05
    """Learning rate."""
    eps: float = 1e-4
    """Added to the preconditioner's square root before dividing."""
    betas: Tuple[float, float] = (0.9, 0.999)
    """Momentum and curvature-EMA coefficients."""
    weight_decay: float = 0.0
    """L2 penalty added to the gradient."""
    estimator: Literal["equilibration", "jacobi"] = "equilibration"
    """Curvature sample: (Hv)² (AdaHessian(E)) or v ⊙ Hv (AdaHessian(J), the original)."""
    hessian_power: float = 1.0
    """Exponent k of the preconditioner D^(k/2)."""
    update_d_every: int = 1
    """Steps between Hessian-vector products after the warm-up."""
    d_warmup: int = 1
    """Every one of the first ``d_warmup`` steps takes a Hessian-vector product."""
