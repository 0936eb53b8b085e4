"""Optimizers by name, with their default learning rates: ``build_optimizer(name, model, lr)``.

``OPTIMIZERS`` is the one registry of names: the CLIs, the configs and the tests derive their
choices from it. Each name has two learning-rate facts: the paper's (§5: Adam 1e-4, ESGD and
AdaHessian 0.15; 1e-3 and 0.1 for ReLU(-PE)), which the paper-reproduction configs use, and the
project's default, the best of a sweep where the paper's is not (``benchmarks/league.py``,
``benchmarks/results/optimizer_defaults.md``): every comparison runs against a tuned Adam.

``overrides`` go to the constructor (e.g. ``momentum=0.9`` for sgd, ``damping=...`` for kfac).
Every optimizer supports ``state_dict()``/``load_state_dict()`` with bit-identical resumption,
and all of them train with ``nf_precond_plugin.training.step.training_step``.
"""

from __future__ import annotations

import importlib
import inspect
import math
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

import torch
from torch import nn

from nf_precond_plugin.optim.base import PAPER_LR

OptimizerName = Literal[
    "adam",
    "sf-adamw",
    "sgd",
    "esgd",
    "esgd-paper",
    "esgd-max",
    "adahessian",
    "adahessian-j",
    "shampoo",
    "soap",
    "kfac",
    "muon",
    "sophiah",
]
OPTIMIZERS: tuple[str, ...] = get_args(OptimizerName)

RELU_LIKE = ("relu-pe", "relu")
"""Activations whose H·v is sparse; the paper gives them their own learning rates."""


def constructor_default(cls: type, name: str) -> Any:
    """The default of ``cls(...)``'s parameter ``name``: the one place such a default is written."""
    return inspect.signature(cls).parameters[name].default


PAPER_RELU_LR = 0.1
"""The paper's lr (§5) for ESGD and AdaHessian on ReLU(-PE) fields (smooth fields: their signatures')."""


@dataclass(frozen=True)
class OptimizerSpec:
    """How to build one named optimizer and which lr it starts from."""

    description: str
    target: str
    """``module:Class`` of the constructor, imported when first used."""
    takes_model: bool = False
    """The constructor takes the model (to find its layers) instead of the parameters."""
    lr: float | None = None
    """The project's default lr where it differs from the constructor's (a sweep's, see the module docstring)."""
    relu_lr: float | None = None
    """The lr for ReLU(-PE) fields, where it differs."""
    fixed: dict[str, Any] = field(default_factory=dict)
    """Constructor arguments this name implies (overrides may still change them)."""
    paper_lrs: tuple[float, float] | None = None
    """The paper's lr for (smooth, ReLU(-PE)) fields; None where the paper gives none."""
    single_process: str | None = None
    """Why it cannot train data-parallel (its statistics are per process), or None if it can."""
    schedule: str = "constant"
    """Its default lr schedule in the standalone runs (``training.schedules.SCHEDULES``)."""

    def constructor(self) -> type:
        module, name = self.target.split(":")
        return getattr(importlib.import_module(module), name)

    def default_lr(self) -> float:
        return self.lr if self.lr is not None else constructor_default(self.constructor(), "lr")

    def build(self, model: nn.Module, params: list[nn.Parameter], lr: float, kwargs: dict[str, Any]):
        return self.constructor()(model if self.takes_model else params, lr=lr, **kwargs)


_ESGD = "nf_precond_plugin.optim.esgd"
_ADAHESSIAN = "nf_precond_plugin.optim.adahessian:AdaHessian"
_CURVATURE_PAPER_LRS = dict(relu_lr=PAPER_RELU_LR, paper_lrs=(PAPER_LR, PAPER_RELU_LR))
_SPECS: dict[str, OptimizerSpec] = {
    # torch's default lr, 1e-3, is the tuned one: the paper's 1e-4 trails it by 3.8 dB after one epoch on the lion
    # cosine: Adam's best schedule over the fair league's four fields (mean at epoch 30; constant is its worst)
    "adam": OptimizerSpec("torch.optim.Adam", "torch.optim:Adam", paper_lrs=(1e-4, 1e-3), schedule="cosine"),
    "sf-adamw": OptimizerSpec(
        "pytorch_optimizer.ScheduleFreeAdamW: AdamW without a schedule, evaluated at its weight average",
        "pytorch_optimizer:ScheduleFreeAdamW",
        lr=1e-3,
    ),
    "sgd": OptimizerSpec(
        "torch.optim.SGD without momentum (the paper's plain SGD, Fig. 3)",
        "torch.optim:SGD",
        lr=0.1,
        fixed={"momentum": 0.0},
    ),
    "esgd": OptimizerSpec(
        "ESGD, the project's rule (bounded steps, sparse-curvature fallback), schedule-free",
        f"{_ESGD}:ESGD",
        # the fair league's best schedule for it (benchmarks/README.md), with β₁ = 0 there (the
        # runner's rule for schedule-free); `--schedule inverse-time` is its former default
        schedule="schedule-free",
    ),
    "esgd-paper": OptimizerSpec("ESGD, the paper's rule and settings", f"{_ESGD}:PaperESGD", **_CURVATURE_PAPER_LRS),
    "esgd-max": OptimizerSpec(
        "the paper's ESGD with a decayed running max of (Hv)²", f"{_ESGD}:ESGDMax", **_CURVATURE_PAPER_LRS
    ),
    "adahessian": OptimizerSpec("AdaHessian(E): EMA of (Hv)²", _ADAHESSIAN, **_CURVATURE_PAPER_LRS),
    "adahessian-j": OptimizerSpec(
        "AdaHessian(J): EMA of v ⊙ Hv", _ADAHESSIAN, fixed={"estimator": "jacobi"}, **_CURVATURE_PAPER_LRS
    ),
    "shampoo": OptimizerSpec(
        "pytorch_optimizer.Shampoo, inverse roots every step",
        "pytorch_optimizer:Shampoo",
        lr=1e-2,
        fixed=dict(momentum=0.0, preconditioning_compute_steps=1, matrix_eps=1e-6),
    ),
    "soap": OptimizerSpec(
        "pytorch_optimizer.SOAP: Adam in Shampoo's eigenbasis, refreshed every 10 steps",
        "pytorch_optimizer:SOAP",
        fixed=dict(weight_decay=0.0),
        schedule="cosine",
    ),
    "kfac": OptimizerSpec(
        "KFACAdam: K-FAC factors (NNGeometry), then Adam",
        "nf_precond_plugin.optim.kfac:KFACAdam",
        takes_model=True,
        schedule="cosine",
        single_process="its Kronecker factors come from each process's own activations, so ranks would diverge",
    ),
    "muon": OptimizerSpec(
        "torch.optim.Muon on hidden weights (float32 Newton–Schulz on the CPU), Adam 1e-3 on the rest",
        "nf_precond_plugin.optim.hybrids:MuonAdam",
        takes_model=True,
        relu_lr=0.02,  # the fair league's best on ReLU-PE fields (the advisor probes it too)
        schedule="cosine",  # the INR recipe: Muon and its Adam both cosine
    ),
    "sophiah": OptimizerSpec(
        "pytorch_optimizer.SophiaH: clipped Hutchinson-diagonal steps, H·v every 10 steps",
        "nf_precond_plugin.optim.hybrids:SophiaHContract",
        single_process="its Hutchinson probes and H·v are per process and are not averaged",
    ),
}
if tuple(_SPECS) != OPTIMIZERS:  # pragma: no cover - caught by any import
    raise AssertionError("the optimizer registry and OptimizerName disagree")


DEFAULT_OPTIMIZER = {"dense": "esgd", "sparse": "muon", "sparse, no hidden layer": "adam"}
"""The project's default optimizer by the density of the field's H·v: its own ESGD where H·v is
dense, Muon where it is sparse (within 0.7 dB of SOAP, the fair league's winner on ReLU-PE).
Muon needs a hidden weight matrix (a field of at least 3 linear layers); without one, Adam. The
advisor may recommend another optimizer for a smooth activation where the league measured one
ahead of ESGD (``advisor.recommend.LEAGUE_WINNERS``)."""


def default_optimizer(activation: str, num_layers: int) -> str:
    """The optimizer a run uses when none is named: by whether the activation's H·v is sparse."""
    if activation not in RELU_LIKE:
        return DEFAULT_OPTIMIZER["dense"]
    return DEFAULT_OPTIMIZER["sparse" if num_layers >= 3 else "sparse, no hidden layer"]


def without_momentum(name: str) -> dict[str, Any]:
    """Constructor arguments that turn off ``name``'s gradient momentum (β₁ = 0, its β₂ kept), for
    schedule-free averaging: there the interpolation between the base sequence and its average
    takes momentum's place (schedule-free AdamW is Adam with β₁ = 0 inside the averaging). {} for
    an optimizer without ``betas``."""
    spec = optimizer_spec(name)
    parameters = inspect.signature(spec.constructor()).parameters
    if "betas" not in parameters:
        return {}
    betas = spec.fixed.get("betas", parameters["betas"].default)
    return {"betas": (0.0, betas[1])}


def optimizer_spec(name: str) -> OptimizerSpec:
    if name not in _SPECS:
        raise ValueError(f"unknown optimizer {name!r}; expected one of {', '.join(OPTIMIZERS)}")
    return _SPECS[name]


def default_lr(optimizer: str, activation: str) -> float:
    """The optimizer's default lr for a field with this activation."""
    spec = optimizer_spec(optimizer)
    if activation in RELU_LIKE and spec.relu_lr is not None:
        return spec.relu_lr
    return spec.default_lr()


def paper_lr(optimizer: str, activation: str) -> float | None:
    """The paper's lr for this optimizer and activation, or None where the paper gives none."""
    lrs = optimizer_spec(optimizer).paper_lrs
    return None if lrs is None else lrs[1 if activation in RELU_LIKE else 0]


def check_data_parallel(name: str) -> None:
    """ValueError naming the optimizer if it cannot train over several processes."""
    reason = optimizer_spec(name).single_process
    if reason is not None:
        raise ValueError(f"{name} cannot train data-parallel: {reason}; run it in one process")


def build_optimizer(name: str, model: nn.Module, lr: float, **overrides: Any) -> torch.optim.Optimizer:
    """A fresh optimizer over ``model``'s parameters; ``overrides`` go to its constructor."""
    spec = optimizer_spec(name)
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not (0 < lr < math.inf):
        raise ValueError(f"invalid lr={lr!r} for optimizer {name!r} (expected a finite learning rate > 0)")
    params = [p for p in model.parameters() if p.requires_grad]
    return spec.build(model, params, float(lr), {**spec.fixed, **overrides})


NOT_OPTIMIZER_ARGS = frozenset({"params", "model", "lr", "process_group"})
"""Constructor parameters that are not settings: the parameters or model, the lr (its own option)
and a live process group."""


def optimizer_arguments(name: str) -> dict[str, inspect.Parameter]:
    """The constructor arguments of optimizer ``name`` a user may set, with their defaults."""
    spec = optimizer_spec(name)
    return {
        key: parameter
        for key, parameter in inspect.signature(spec.constructor()).parameters.items()
        if key not in NOT_OPTIMIZER_ARGS
        and parameter.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    }
