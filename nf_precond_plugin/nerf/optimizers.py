"""nerfstudio ``OptimizerConfig`` wrappers around the project's curvature optimizers.

nerfstudio builds an optimizer as ``config._target(params, **fields)`` (minus ``max_norm``), so each
field below is a constructor argument of the same class the standalone tasks use, with the
constructor's default, and shows up on the command line as ``--optimizers.fields.optimizer.<field>``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Literal

from nerfstudio.engine.optimizers import OptimizerConfig
from nerfstudio.engine.schedulers import ExponentialDecayScheduler, ExponentialDecaySchedulerConfig
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from nf_precond_plugin.optim.adahessian import AdaHessian
from nf_precond_plugin.optim.esgd import ESGD
from nf_precond_plugin.optim.factory import constructor_default


def _default(cls: type, name: str):
    """The constructor's default: nerfstudio's dataclass copies it, a test checks the copy."""
    return constructor_default(cls, name)


@dataclass
class ESGDOptimizerConfig(OptimizerConfig):
    """ESGD: EMA (or decayed max) of (Hv)², with a Hessian-vector product on the first ``d_warmup``
    steps, then every ``update_d_every``."""

    _target: type = ESGD
    lr: float = _default(ESGD, "lr")
    """Learning rate."""
    eps: float = _default(ESGD, "eps")
    """Added to the preconditioner's square root before dividing."""
    betas: tuple[float, float] = _default(ESGD, "betas")
    """Momentum and curvature-EMA coefficients."""
    weight_decay: float = _default(ESGD, "weight_decay")
    """Decoupled weight decay."""
    update_d_every: int = _default(ESGD, "update_d_every")
    """Steps between Hessian-vector products after the warm-up."""
    d_warmup: int = _default(ESGD, "d_warmup")
    """Every one of the first ``d_warmup`` steps takes a Hessian-vector product."""
    variant: Literal["ema", "max"] = _default(ESGD, "variant")
    """Accumulate (Hv)² by an EMA (ESGD) or a decayed running max (ESGD-max)."""
    bias_correction: Literal["paper", "hvp"] = _default(ESGD, "bias_correction")
    """Debias the curvature EMA by optimizer steps (the paper's code) or by Hessian-vector products taken."""


@dataclass
class AdaHessianOptimizerConfig(OptimizerConfig):
    """AdaHessian: Adam with the squared-gradient EMA replaced by an EMA of a Hessian-diagonal estimate."""

    _target: type = AdaHessian
    lr: float = _default(AdaHessian, "lr")
    """Learning rate."""
    eps: float = _default(AdaHessian, "eps")
    """Added to the preconditioner before dividing."""
    betas: tuple[float, float] = _default(AdaHessian, "betas")
    """Momentum and curvature-EMA coefficients."""
    weight_decay: float = _default(AdaHessian, "weight_decay")
    """L2 penalty added to the step."""
    estimator: Literal["equilibration", "jacobi"] = _default(AdaHessian, "estimator")
    """Curvature sample: (Hv)² (AdaHessian(E)) or v ⊙ Hv (AdaHessian(J), the original)."""
    hessian_power: float = _default(AdaHessian, "hessian_power")
    """Exponent k of the preconditioner D^(k/2)."""
    update_d_every: int = _default(AdaHessian, "update_d_every")
    """Steps between Hessian-vector products after the warm-up."""
    d_warmup: int = _default(AdaHessian, "d_warmup")
    """Every one of the first ``d_warmup`` steps takes a Hessian-vector product."""


CURVATURE_OPTIMIZER_CONFIGS: tuple[type[OptimizerConfig], ...] = (ESGDOptimizerConfig, AdaHessianOptimizerConfig)
"""The configs whose fields copy a curvature optimizer's constructor."""


@dataclass
class DecayToFractionSchedulerConfig(ExponentialDecaySchedulerConfig):
    """Exponential decay from the optimizer's lr to ``final_fraction`` × lr over ``max_steps``.

    Unlike nerfstudio's absolute ``lr_final``, the end point follows ``--optimizers.fields.optimizer.lr``,
    and ``max_steps`` = None follows ``--max-num-iterations`` (the trainer fills it in).
    """

    _target: type = field(default_factory=lambda: DecayToFractionScheduler)
    final_fraction: float = 0.1
    """lr at ``max_steps`` ÷ the optimizer's lr."""
    max_steps: int | None = None  # type: ignore[assignment]
    """Steps of the decay; None: the run's --max-num-iterations."""


class DecayToFractionScheduler(ExponentialDecayScheduler):
    config: DecayToFractionSchedulerConfig

    def get_scheduler(self, optimizer: Optimizer, lr_init: float) -> LRScheduler:
        if not 0.0 < self.config.final_fraction <= 1.0:
            raise ValueError(f"Invalid final_fraction: {self.config.final_fraction} (expected 0 < f <= 1)")
        absolute = dataclasses.replace(
            self.config,
            lr_final=lr_init * self.config.final_fraction,
            max_steps=self.config.max_steps if self.config.max_steps is not None else 100_000,
        )
        return ExponentialDecayScheduler(absolute).get_scheduler(optimizer, lr_init)
