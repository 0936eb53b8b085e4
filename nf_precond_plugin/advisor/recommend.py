"""What the field and the NeRF advisors share: the curvature measurements and the one recommendation.

Dense H·v → ``esgd``; sparse H·v (at least ``SPARSE_FIELD`` of the entries exactly zero) → the
sparse field's choice: ``muon`` for image and occupancy fields (Newton–Schulz-orthogonalised
momentum on the hidden weights, under its cosine schedule: the fair league's winner on ReLU-PE,
benchmarks/README.md), ``adam`` for a NeRF (the plugin has no Muon method). Of the chosen
optimizer's probed values (its lr, or for the NeRF's ESGD its clip), those whose probe loss is
within ``PROBE_TIE`` of the best count as tied, and the smallest of them wins. The advice names
the schedule too (the optimizer's default in the registry), so that it pastes into a run.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import torch

from nf_precond_plugin.curvature import SPARSE_FIELD, hvp_samples, zero_fraction
from nf_precond_plugin.errors import UserInputError
from nf_precond_plugin.optim.factory import DEFAULT_OPTIMIZER, default_optimizer

PROBE_TIE = 0.05
"""Probe losses within this relative margin of the best count as tied."""
PROBES = 3
"""Rademacher probes of the curvature measurements."""
LR_KNOBS: dict[str, str] = {"esgd": "lr", "muon": "lr", "adam": "lr"}
"""The probed knob of each optimizer, when the probe sweeps the lr (the field advisor)."""
FIELD_CHOICES: dict[str, str] = {"dense": DEFAULT_OPTIMIZER["dense"], "sparse": DEFAULT_OPTIMIZER["sparse"]}
"""The optimizer recommended for an image or occupancy field by its H·v density: the project's
default for such a field (``field_choices`` adapts it to a field without hidden layers)."""


def field_choices(num_layers: int) -> dict[str, str]:
    """``FIELD_CHOICES`` for a field of ``num_layers`` linear layers: the runs' defaults."""
    return {"dense": default_optimizer("gaussian", num_layers), "sparse": default_optimizer("relu-pe", num_layers)}


def curvature_measurements(
    params: list[torch.Tensor], loss_fn: Callable[[], torch.Tensor], probes: int = PROBES
) -> dict[str, float]:
    """H·v zero fraction (mean over probes) and the log₁₀ p90/p10 spread of √(mean h²).

    Parameters the loss does not use (a NeRF's unused heads, say) are left out of both.
    """
    samples = hvp_samples(loss_fn, params, probes=probes)
    total = sum(p.numel() for p in samples.params)
    squares = [torch.zeros_like(p) for p in samples.params]
    zeros = 0.0
    for _, products in samples:
        zeros += sum(float(zero_fraction(h)) * h.numel() for h in products) / total
        for square, h in zip(squares, products):
            square.add_(h.square(), alpha=1.0 / probes)
    scale = torch.cat([s.flatten() for s in squares]).sqrt()
    positive = scale[scale > 0]
    if positive.numel() < 2:
        spread = math.inf
    else:
        sample = positive[:: max(1, positive.numel() // 100_000)].double()
        low, high = torch.quantile(sample, torch.tensor([0.1, 0.9], dtype=torch.float64))
        spread = float(torch.log10(high / low))
    return {"hvp_zero_fraction": zeros / probes, "curvature_spread_log10": spread}


def recommend(
    measured: dict[str, float],
    probe: dict[str, dict[str, float | None]],
    knobs: Mapping[str, str] = LR_KNOBS,
    choices: Mapping[str, str] = FIELD_CHOICES,
) -> dict[str, Any]:
    """``{"recommended": name, knobs[name]: value, "schedule": ..., "reason": ...}`` from the
    measurements and the probe's losses (``probe[name][f"{value:g}"]``, None where it diverged)."""
    from nf_precond_plugin.optim.factory import optimizer_spec

    sparse = measured["hvp_zero_fraction"] >= SPARSE_FIELD
    name = choices["sparse" if sparse else "dense"]
    knob = knobs[name]
    finite = {value: loss for value, loss in probe[name].items() if loss is not None and math.isfinite(loss)}
    if not finite:
        raise UserInputError(
            f"every probed {knob} of {name} diverged on this field; check the data and the model options"
        )
    # A short probe favours aggressive values: of those within PROBE_TIE of the best, take the smallest.
    best = min(finite.values())
    chosen = min(float(value) for value, loss in finite.items() if loss <= best * (1 + PROBE_TIE))
    sparse_choice = "Muon on the hidden weights" if name == "muon" else "Adam"
    reason = (
        f"{measured['hvp_zero_fraction']:.0%} of the H·v entries are exactly zero (sparse curvature): "
        f"a diagonal curvature estimate has nothing to work with on most coordinates, so {sparse_choice}"
        if sparse
        else f"H·v is dense ({measured['hvp_zero_fraction']:.1%} zeros) and the curvature spans "
        f"{measured['curvature_spread_log10']:.1f} decades across coordinates: equilibration pays off, so ESGD"
    )
    return {"recommended": name, knob: chosen, "schedule": optimizer_spec(name).schedule, "reason": reason}
