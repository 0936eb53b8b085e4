"""nerfstudio ``OptimizerConfig`` wrappers around the project's curvature optimizers.

nerfstudio builds an optimizer as ``config._target(params, **fields)`` (minus ``max_norm``), so each
field below is a constructor argument of the same class the standalone tasks use, with the
constructor's default, and shows up on the command line as ``--optimizers.fields.optimizer.<field>``.
All but ``process_group``: a live object, not a setting; the trainer leaves it at the default
group, which is every device of the run.
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
from nf_precond_plugin.optim.esgd import ESGD, RULE_DEFAULTS
from nf_precond_plugin.optim.factory import constructor_default


def _default(cls: type, name: str):
    """The constructor's default: nerfstudio's dataclass copies it, a test checks the copy."""
    return constructor_default(cls, name)


@dataclass
class ESGDOptimizerConfig(OptimizerConfig):
    """ESGD: the clipped rule by default (bounded steps ρ, inverse-time lr, Adam-like steps for
    sparse-curvature tensors), or the paper's with ``rule=paper``. A field left at None takes its
    rule's default (``nf_precond_plugin.optim.esgd.RULE_DEFAULTS``)."""

    _target: type = ESGD
    lr: float | None = _default(ESGD, "lr")  # type: ignore[assignment]
    """Learning rate (None: the rule's, 1.0 clipped / 0.15 paper)."""
    eps: float | None = _default(ESGD, "eps")  # type: ignore[assignment]
    """Added to the preconditioner's square root before dividing."""
    betas: tuple[float, float] | None = _default(ESGD, "betas")
    """Momentum and per-sample curvature-EMA coefficients."""
    weight_decay: float = _default(ESGD, "weight_decay")
    """Decoupled weight decay."""
    update_d_every: int | None = _default(ESGD, "update_d_every")
    """Steps between Hessian-vector products after the warm-up."""
    d_warmup: int | None = _default(ESGD, "d_warmup")
    """Every one of the first ``d_warmup`` steps takes a Hessian-vector product."""
    rule: Literal["clipped", "paper"] = _default(ESGD, "rule")
    """The project's clipped ESGD, or the paper's."""
    clip: float | None = _default(ESGD, "clip")
    """ρ: the bound of each preconditioned step before the lr (clipped rule)."""
    lr_decay_steps: int | None = _default(ESGD, "lr_decay_steps")
    """T of the optimizer's own decay lr/(1 + t/T); 0 leaves decay to the scheduler (clipped rule)."""
    sparse_threshold: float = _default(ESGD, "sparse_threshold")
    """Fraction of exactly-zero H·v entries from which a tensor takes Adam-like steps (clipped rule)."""
    variant: Literal["ema", "max"] = _default(ESGD, "variant")
    """Accumulate (Hv)² by an EMA (ESGD) or a decayed running max (ESGD-max); paper rule."""
    bias_correction: Literal["paper", "hvp"] = _default(ESGD, "bias_correction")
    """Debias the curvature EMA by optimizer steps (the paper's code) or by Hessian-vector products; paper rule."""
    probe_seed: int | None = _default(ESGD, "probe_seed")
    """Seed of the probe generator (None: drawn from torch's RNG, which --machine.seed seeds)."""

    def __post_init__(self) -> None:
        # nerfstudio's schedulers read ``lr`` before the optimizer exists: resolve the rule's
        # defaults here, as the constructor would.
        for name, value in RULE_DEFAULTS[self.rule].items():
            if getattr(self, name) is None and value is not None:
                setattr(self, name, value)


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
    probe_seed: int | None = _default(AdaHessian, "probe_seed")
    """Seed of the probe generator (None: drawn from torch's RNG, which --machine.seed seeds)."""


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
