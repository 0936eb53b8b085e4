"""`nf-precond advise`: the recommendation follows the measured H·v density; bad input gets one line."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest

from nf_precond_plugin.advisor import SPARSE_FIELD, AdviseCommand, AdviseImage, curvature_measurements, run_advise

SMALL = dict(size=32, probe_steps=8)  # the paper's 5 × 256 field: ReLU-PE sparsity needs its width


def test_the_zero_fraction_of_a_known_hessian_is_exact():
    import torch

    # L = ½ θᵀ diag(a) θ: H v = a ⊙ v, zero exactly where a is, whatever the probe
    theta = torch.nn.Parameter(torch.ones(8, dtype=torch.float64))
    a = torch.tensor([1.0, 0.0, 2.0, 0.0, 0.0, 3.0, 4.0, 0.0], dtype=torch.float64)
    measured = curvature_measurements([theta], lambda: 0.5 * (a * theta.square()).sum(), probes=2)
    assert measured["hvp_zero_fraction"] == 0.5
    # √E[h²] = |a| on the nonzero entries: p10/p90 of (1, 2, 3, 4) by linear interpolation
    assert measured["curvature_spread_log10"] == pytest.approx(math.log10(3.7 / 1.3))


def test_a_gaussian_and_a_relu_pe_field_on_the_same_image_get_different_advice():
    gaussian = run_advise(AdviseCommand(task=AdviseImage(activation="gaussian", **SMALL)))
    relu_pe = run_advise(AdviseCommand(task=AdviseImage(activation="relu-pe", **SMALL)))
    assert gaussian["hvp_zero_fraction"] < SPARSE_FIELD <= relu_pe["hvp_zero_fraction"]
    # the fair league's winners, both SOAP (cosine): a curvature-aware optimizer where H·v is dense
    # and where it is sparse; the measured density tells the two apart
    assert (gaussian["recommended"], relu_pe["recommended"]) == ("soap", "soap")
    assert (gaussian["schedule"], relu_pe["schedule"]) == ("cosine", "cosine")
    assert "fair league" in gaussian["reason"] and "fair league" in relu_pe["reason"]
    for advice in (gaussian, relu_pe):
        assert f"{advice['lr']:g}" in advice["probe"][advice["recommended"]]  # a probed lr, not a made-up one


def _cli(*args: str, cwd) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run(
        [sys.executable, "-m", "nf_precond_plugin.cli", *args], capture_output=True, text=True, cwd=cwd, env=env,
        timeout=300,
    )  # fmt: skip


def test_json_has_the_recommendation_and_the_measurements(tmp_path):
    small = [f"--{k.replace('_', '-')}={v}" for k, v in SMALL.items()]
    result = _cli("advise", "image", "--activation", "sine", *small, "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    advice = json.loads(result.stdout)
    assert advice["recommended"] in ("esgd", "muon") and advice["lr"] > 0
    from nf_precond_plugin.training.schedules import SCHEDULES

    assert advice["schedule"] in SCHEDULES  # a value --schedule accepts, to paste into standalone/image.py
    assert {"hvp_zero_fraction", "curvature_spread_log10", "probe"} <= set(advice)


@pytest.mark.parametrize(
    "args, named",
    [
        (("advise", "volume"), "volume"),
        (("advise", "image", "--image", "missing.png"), "missing.png"),
        (("advise", "occupancy", "--mesh", "missing.obj"), "missing.obj"),
    ],
)
def test_bad_input_gets_one_line_naming_it(tmp_path, args, named):
    result = _cli(*args, cwd=tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and named in lines[0] and "Traceback" not in result.stderr, result.stderr


def test_the_league_winner_replaces_the_density_choice_only_on_its_own_side():
    """A smooth activation's winner replaces the dense choice, a ReLU-like one's the sparse choice;
    the other side keeps the density default (a field measured against its activation's usual
    density), and Muon still needs a hidden weight matrix."""
    from nf_precond_plugin.advisor.recommend import LEAGUE_WINNERS, field_choices
    from nf_precond_plugin.optim.factory import DEFAULT_OPTIMIZER

    for activation, winner in LEAGUE_WINNERS.items():
        choices = field_choices(5, activation)
        side, other = ("sparse", "dense") if activation == "relu-pe" else ("dense", "sparse")
        assert choices[side] == winner and choices[other] == DEFAULT_OPTIMIZER[other]
    assert field_choices(5, "relu") == {"dense": DEFAULT_OPTIMIZER["dense"], "sparse": DEFAULT_OPTIMIZER["sparse"]}
    assert field_choices(2, "relu")["sparse"] == DEFAULT_OPTIMIZER["sparse, no hidden layer"]
