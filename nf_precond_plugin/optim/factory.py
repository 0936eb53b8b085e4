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

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

import torch
from torch import nn

OptimizerName = Literal[
    "adam", "sgd", "esgd", "esgd-paper", "esgd-max", "adahessian", "adahessian-j", "shampoo", "kfac", "muon", "sophiah"
]
OPTIMIZERS: tuple[str, ...] = get_args(OptimizerName)

RELU_LIKE = ("relu-pe", "relu")
"""Activations whose H·v is sparse; the paper gives them their own learning rates."""


def constructor_default(cls: type, name: str) -> Any:
    """The default of ``cls(...)``'s parameter ``name``: the one place such a default is written."""
    return inspect.signature(cls).parameters[name].default


@dataclass(frozen=True)
class OptimizerSpec:
    """How to build one named optimizer and which lr it starts from."""

    description: str
    build: Callable[[nn.Module, list[nn.Parameter], float, dict[str, Any]], torch.optim.Optimizer]
    default_lr: Callable[[], float]
    relu_lr: float | None = None
    """The lr for ReLU(-PE) fields, where it differs."""
    fixed: dict[str, Any] = field(default_factory=dict)
    """Constructor arguments this name implies (overrides may still change them)."""
    paper_lrs: tuple[float, float] | None = None
    """The paper's lr for (smooth, ReLU(-PE)) fields; None where the paper gives none."""
    single_process: str | None = None
    """Why it cannot train data-parallel (its statistics are per process), or None if it can."""


def _adam(model, params, lr, kwargs):
    return torch.optim.Adam(params, lr=lr, **kwargs)


def _sgd(model, params, lr, kwargs):
    return torch.optim.SGD(params, lr=lr, **kwargs)


def _esgd(model, params, lr, kwargs):
    from nf_precond_plugin.optim.esgd import ESGD

    return ESGD(params, lr=lr, **kwargs)


def _adahessian(model, params, lr, kwargs):
    from nf_precond_plugin.optim.adahessian import AdaHessian

    return AdaHessian(params, lr=lr, **kwargs)


def _shampoo(model, params, lr, kwargs):
    from pytorch_optimizer import Shampoo

    return Shampoo(params, lr=lr, **kwargs)


def _kfac(model, params, lr, kwargs):
    from nf_precond_plugin.optim.kfac import KFACAdam

    return KFACAdam(model, lr=lr, **kwargs)


def _muon(model, params, lr, kwargs):
    from nf_precond_plugin.optim.hybrids import MuonAdam

    return MuonAdam(model, lr=lr, **kwargs)


def _sophiah(model, params, lr, kwargs):
    from nf_precond_plugin.optim.hybrids import SophiaHContract

    return SophiaHContract(params, lr=lr, **kwargs)


def _esgd_lr(rule: str) -> Callable[[], float]:
    def lr() -> float:
        from nf_precond_plugin.optim.esgd import RULE_DEFAULTS

        return RULE_DEFAULTS[rule]["lr"]

    return lr


def _adahessian_lr() -> float:
    from nf_precond_plugin.optim.adahessian import AdaHessian

    return constructor_default(AdaHessian, "lr")


def _kfac_lr() -> float:
    from nf_precond_plugin.optim.kfac import KFACAdam

    return constructor_default(KFACAdam, "lr")


_SPECS: dict[str, OptimizerSpec] = {
    # tuned: the paper's 1e-4 trails 1e-3 by 3.8 dB after one epoch on the lion (league, README)
    "adam": OptimizerSpec("torch.optim.Adam", _adam, lambda: 1e-3, paper_lrs=(1e-4, 1e-3)),
    "sgd": OptimizerSpec(
        "torch.optim.SGD without momentum (the paper's plain SGD, Fig. 3)",
        _sgd,
        lambda: 0.1,
        fixed={"momentum": 0.0},
    ),
    "esgd": OptimizerSpec(
        "ESGD, the project's clipped rule (bounded steps, inverse-time lr, sparse-curvature fallback)",
        _esgd,
        _esgd_lr("clipped"),
    ),
    "esgd-paper": OptimizerSpec(
        "ESGD, the paper's rule and settings",
        _esgd,
        _esgd_lr("paper"),
        relu_lr=0.1,
        fixed={"rule": "paper"},
        paper_lrs=(0.15, 0.1),
    ),
    "esgd-max": OptimizerSpec(
        "the paper's ESGD with a decayed running max of (Hv)²",
        _esgd,
        _esgd_lr("paper"),
        relu_lr=0.1,
        fixed={"rule": "paper", "variant": "max"},
        paper_lrs=(0.15, 0.1),
    ),
    "adahessian": OptimizerSpec(
        "AdaHessian(E): EMA of (Hv)²", _adahessian, _adahessian_lr, relu_lr=0.1, paper_lrs=(0.15, 0.1)
    ),
    "adahessian-j": OptimizerSpec(
        "AdaHessian(J): EMA of v ⊙ Hv",
        _adahessian,
        _adahessian_lr,
        relu_lr=0.1,
        fixed={"estimator": "jacobi"},
        paper_lrs=(0.15, 0.1),
    ),
    "shampoo": OptimizerSpec(
        "pytorch_optimizer.Shampoo, inverse roots every step",
        _shampoo,
        lambda: 1e-2,
        fixed=dict(momentum=0.0, preconditioning_compute_steps=1, matrix_eps=1e-6),
    ),
    "kfac": OptimizerSpec(
        "KFACAdam: K-FAC factors (NNGeometry), then Adam",
        _kfac,
        _kfac_lr,
        single_process="its Kronecker factors come from each process's own activations, so ranks would diverge",
    ),
    "muon": OptimizerSpec(
        "torch.optim.Muon on hidden weights (float32 Newton–Schulz on the CPU), Adam 1e-3 on the rest",
        _muon,
        lambda: 0.005,
    ),
    "sophiah": OptimizerSpec(
        "pytorch_optimizer.SophiaH: clipped Hutchinson-diagonal steps, H·v every 10 steps",
        _sophiah,
        lambda: 0.06,
        single_process="its Hutchinson probes and H·v are per process and are not averaged",
    ),
}
if tuple(_SPECS) != OPTIMIZERS:  # pragma: no cover - caught by any import
    raise AssertionError("the optimizer registry and OptimizerName disagree")


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
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not lr > 0:
        raise ValueError(f"invalid lr={lr!r} for optimizer {name!r} (expected a learning rate > 0)")
    params = [p for p in model.parameters() if p.requires_grad]
    return spec.build(model, params, float(lr), {**spec.fixed, **overrides})
