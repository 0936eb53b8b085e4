"""What the field and the NeRF advisors share: the curvature measurements and the one recommendation.

The measured H·v density picks the side: dense → ``esgd``, sparse (at least ``SPARSE_FIELD`` of
the entries exactly zero) → ``muon`` for image and occupancy fields (Newton–Schulz-orthogonalised
momentum on the hidden weights, cosine), ``adam`` for a NeRF (the plugin has no Muon method). For
an activation the fair league measured, its winner there replaces that choice (``LEAGUE_WINNERS``:
SOAP on Gaussian and ReLU-PE fields, schedule-free AdamW on wavelet ones, ESGD on sine).
Of the chosen optimizer's probed values (its lr, or for the NeRF's ESGD its clip), those whose
probe loss is within ``PROBE_TIE`` of the best count as tied, and the smallest of them wins. The
advice names the schedule too (the optimizer's default in the registry), so that it pastes into
a run.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import torch

from nf_precond_plugin.curvature import SPARSE_FIELD, hvp_samples, zero_fraction
from nf_precond_plugin.errors import UserInputError
from nf_precond_plugin.optim.factory import DEFAULT_OPTIMIZER, RELU_LIKE, default_optimizer

PROBE_TIE = 0.05
"""Probe losses within this relative margin of the best count as tied."""
PROBES = 3
"""Rademacher probes of the curvature measurements."""
FIELD_CHOICES: dict[str, str] = {"dense": DEFAULT_OPTIMIZER["dense"], "sparse": DEFAULT_OPTIMIZER["sparse"]}
"""The optimizer recommended for an image or occupancy field by its H·v density: the project's
default for such a field (``field_choices`` adapts it to a field without hidden layers)."""


LEAGUE_WINNERS: dict[str, str] = {"gaussian": "soap", "sine": "esgd", "wavelet": "sf-adamw", "relu-pe": "soap"}
"""The fair league's winner at epoch 30 (mean over photos, each optimizer at its best lr and
schedule; benchmarks/README.md) for each activation it measured."""


def field_choices(num_layers: int, activation: str | None = None) -> dict[str, str]:
    """The recommendation for a field of ``num_layers`` linear layers by its measured H·v density:
    the fair league's winner for ``activation`` on the side its H·v usually falls (dense for
    smooth activations, sparse for ReLU-like ones), else the runs' default for that density."""
    choices = {"dense": default_optimizer("gaussian", num_layers), "sparse": default_optimizer("relu-pe", num_layers)}
    winner = LEAGUE_WINNERS.get(activation or "")
    if winner is not None:
        side = "sparse" if activation in RELU_LIKE else "dense"
        if winner != "muon" or choices[side] == "muon":  # Muon needs a hidden weight matrix
            choices[side] = winner
    return choices


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
    knobs: Mapping[str, str] | None = None,
    choices: Mapping[str, str] = FIELD_CHOICES,
    activation: str | None = None,
) -> dict[str, Any]:
    """``{"recommended": name, knobs[name]: value, "schedule": ..., "reason": ...}`` from the
    measurements and the probe's losses (``probe[name][f"{value:g}"]``, None where it diverged)."""
    from nf_precond_plugin.optim.factory import optimizer_spec

    sparse = measured["hvp_zero_fraction"] >= SPARSE_FIELD
    name = choices["sparse" if sparse else "dense"]
    knob = (knobs or {}).get(name, "lr")  # the probed knob: the lr unless said otherwise (the NeRF's clip)
    finite = {value: loss for value, loss in probe[name].items() if loss is not None and math.isfinite(loss)}
    if not finite:
        raise UserInputError(
            f"every probed {knob} of {name} diverged on this field; check the data and the model options"
        )
    # A short probe favours aggressive values: of those within PROBE_TIE of the best, take the smallest.
    best = min(finite.values())
    chosen = min(float(value) for value, loss in finite.items() if loss <= best * (1 + PROBE_TIE))
    named = {"muon": "Muon on the hidden weights", "adam": "Adam", "esgd": "ESGD", "soap": "SOAP",
             "sf-adamw": "schedule-free AdamW"}.get(name, name)  # fmt: skip
    if sparse:
        reason = (
            f"{measured['hvp_zero_fraction']:.0%} of the H·v entries are exactly zero (sparse curvature): "
            "a diagonal curvature estimate has nothing to work with on most coordinates"
        )
    else:
        reason = (
            f"H·v is dense ({measured['hvp_zero_fraction']:.1%} zeros) and the curvature spans "
            f"{measured['curvature_spread_log10']:.1f} decades across coordinates"
        )
    if activation is not None and LEAGUE_WINNERS.get(activation) == name:
        reason += f"; on {activation} fields the fair league's best at epoch 30 is {named} (benchmarks/README.md)"
    else:
        reason += f", so {named}" + (" (equilibration pays off)" if name == "esgd" else "")
    return {"recommended": name, knob: chosen, "schedule": optimizer_spec(name).schedule, "reason": reason}
