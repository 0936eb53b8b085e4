"""nerfstudio ``OptimizerConfig`` wrappers around the project's curvature optimizers.

nerfstudio builds an optimizer as ``config._target(params, **fields)`` (minus ``max_norm``), so each
field below is a constructor argument of the same class the standalone tasks use, with the
constructor's default, and shows up on the command line as ``--optimizers.fields.optimizer.<field>``.
All but ``process_group``: a live object, not a setting; the trainer leaves it at the default
group, which is every device of the run. The ESGD configs add ``rule``, which picks the class.
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
from nf_precond_plugin.optim.esgd import ESGD, ESGDMax, PaperESGD
from nf_precond_plugin.optim.factory import constructor_default

EsgdRule = Literal["clipped", "paper", "max"]


def _default(cls: type, name: str):
    """The constructor's default: nerfstudio's dataclass copies it, a test checks the copy."""
    return constructor_default(cls, name)


@dataclass
class _CurvatureOptimizerConfig(OptimizerConfig):
    """Builds ``_target`` from the fields that are its constructor's arguments."""

    def setup(self, params) -> Optimizer:
        kwargs = {key: value for key, value in vars(self).items() if key not in ("_target", "max_norm", "rule")}
        return self._target(params, **kwargs)


@dataclass
class ESGDOptimizerConfig(_CurvatureOptimizerConfig):
    """The project's ESGD (bounded steps ρ, Adam-like steps for sparse-curvature tensors; the lr
    follows the method's scheduler); ``rule`` switches to the paper's ESGD or ESGD-max."""

    _target: type = ESGD
    rule: EsgdRule = "clipped"
    """Which ESGD: clipped (the project's), paper or max (the paper's ESGD, ESGD-max). Switching
    keeps the fields set away from this config's defaults, where the other rule has them, and
    gives every other field the other rule's default."""
    lr: float = _default(ESGD, "lr")
    """Learning rate: the scale of the ρ-bounded steps."""
    eps: float = _default(ESGD, "eps")
    """Added to the preconditioner's square root before dividing."""
    betas: tuple[float, float] = _default(ESGD, "betas")
    """Momentum and per-sample curvature-EMA coefficients."""
    weight_decay: float = _default(ESGD, "weight_decay")
    """Decoupled weight decay."""
    update_d_every: int = _default(ESGD, "update_d_every")
    """Steps between Hessian-vector products after the warm-up."""
    d_warmup: int = _default(ESGD, "d_warmup")
    """Every one of the first ``d_warmup`` steps takes a Hessian-vector product."""
    clip: float = _default(ESGD, "clip")
    """ρ: the bound of each preconditioned step before the lr."""
    sparse_threshold: float = _default(ESGD, "sparse_threshold")
    """Fraction of exactly-zero H·v entries from which a tensor takes Adam-like steps."""
    probe_seed: int | None = _default(ESGD, "probe_seed")
    """Seed of the probe generator (None: drawn from torch's RNG, which --machine.seed seeds)."""


@dataclass
class _PaperRuleConfig(_CurvatureOptimizerConfig):
    """The fields the paper's two rules share; ESGD-max has the same defaults as the paper's ESGD
    (a test checks every field against its own class's constructor)."""

    rule: EsgdRule = "paper"
    """Which ESGD: clipped (the project's), paper or max (the paper's ESGD, ESGD-max). Switching
    keeps the fields set away from this config's defaults, where the other rule has them, and
    gives every other field the other rule's default."""
    lr: float = _default(PaperESGD, "lr")
    """Learning rate."""
    eps: float = _default(PaperESGD, "eps")
    """Added to the preconditioner's square root before dividing."""
    betas: tuple[float, float] = _default(PaperESGD, "betas")
    """Momentum and curvature-accumulator coefficients."""
    weight_decay: float = _default(PaperESGD, "weight_decay")
    """Decoupled weight decay."""
    update_d_every: int = _default(PaperESGD, "update_d_every")
    """Steps between Hessian-vector products after the warm-up."""
    d_warmup: int = _default(PaperESGD, "d_warmup")
    """Every one of the first ``d_warmup`` steps takes a Hessian-vector product."""
    probe_seed: int | None = _default(PaperESGD, "probe_seed")
    """Seed of the probe generator (None: drawn from torch's RNG, which --machine.seed seeds)."""


@dataclass
class PaperESGDOptimizerConfig(_PaperRuleConfig):
    """The paper's ESGD; ``rule`` switches to the project's (clipped) or ESGD-max."""

    _target: type = PaperESGD
    bias_correction: Literal["paper", "hvp"] = _default(PaperESGD, "bias_correction")
    """Debias the curvature EMA by optimizer steps (the paper's code) or by Hessian-vector products."""


@dataclass
class ESGDMaxOptimizerConfig(_PaperRuleConfig):
    """The paper's ESGD-max (decayed running max of (Hv)²); ``rule`` switches to another ESGD."""

    _target: type = ESGDMax
    rule: EsgdRule = "max"


ESGD_RULE_CONFIGS: dict[str, type[OptimizerConfig]] = {
    "clipped": ESGDOptimizerConfig,
    "paper": PaperESGDOptimizerConfig,
    "max": ESGDMaxOptimizerConfig,
}
"""The config of each ESGD rule, which the ``rule`` field of any of them selects."""


def with_chosen_rule(config: OptimizerConfig) -> OptimizerConfig:
    """``config`` as the config of the ESGD rule its ``rule`` field names.

    Fields set away from ``config``'s own defaults carry over where the chosen rule has them
    (a tuned lr, say); the chosen rule's defaults fill in the rest, and fields only the former
    rule has (clip, sparse_threshold, bias_correction) are dropped. Any other
    config is returned as it is.
    """
    own = type(config)
    if own not in ESGD_RULE_CONFIGS.values() or ESGD_RULE_CONFIGS[config.rule] is own:
        return config
    chosen = ESGD_RULE_CONFIGS[config.rule]()
    own_defaults = own()
    for item in dataclasses.fields(chosen):
        if item.name in ("_target", "rule") or not hasattr(config, item.name):
            continue
        value = getattr(config, item.name)
        if value != getattr(own_defaults, item.name):
            setattr(chosen, item.name, value)
    return chosen


def resolve_esgd_rules(optimizers: dict[str, dict]) -> None:
    """Replace, in place, each ESGD config whose ``rule`` names another rule by that rule's config
    (before nerfstudio reads the lr for its scheduler, and before the config is saved)."""
    for entry in optimizers.values():
        entry["optimizer"] = with_chosen_rule(entry["optimizer"])


@dataclass
class AdaHessianOptimizerConfig(_CurvatureOptimizerConfig):
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


CURVATURE_OPTIMIZER_CONFIGS: tuple[type[OptimizerConfig], ...] = (
    *ESGD_RULE_CONFIGS.values(),
    AdaHessianOptimizerConfig,
)
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
