"""HVP sparsity diagnostic (Fig. 4): dense for smooth activations, sparse for ReLU, checked against
an independent count of dead ReLU units."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from nf_precond_plugin.curvature import hvp, rademacher_like
from nf_precond_plugin.diagnostics.sparsity import SparsityConfig, layer_sparsity, run_sparsity
from nf_precond_plugin.fields import CoordinateMLP


def test_layer_sparsity_counts_a_hand_made_case():
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 1))
    products = [
        torch.tensor([[0.0, 1.0], [0.0, 0.0]]),  # layer 0 weight: 3 of 4 zero
        torch.tensor([2.0, 0.0]),  # layer 0 bias: 1 of 2 zero
        torch.tensor([[1e-9, -4.0]]),  # layer 1 weight: tiny but non-zero
        torch.tensor([0.0]),
    ]
    exact = layer_sparsity(model, products, tolerance=0.0)
    assert exact == pytest.approx({"0": 4 / 6, "1": 1 / 3, "overall": 5 / 9})
    # with τ = 1e-3 the 1e-9 entry (relative 2.5e-10 of max |h| = 4) counts as zero too
    relative = layer_sparsity(model, products, tolerance=1e-3)
    assert relative == pytest.approx({"0": 4 / 6, "1": 2 / 3, "overall": 6 / 9})


def test_relu_hvp_vanishes_exactly_on_units_dead_for_the_whole_batch():
    torch.manual_seed(3)
    model = CoordinateMLP(2, 1, hidden_features=32, num_layers=3, activation="relu")
    with torch.no_grad():
        model.layers[0].bias.sub_(0.6)  # kill some first-layer units on purpose
    x = torch.rand(64, 2) * 2 - 1
    y = torch.sin(3 * x[:, :1])
    params = list(model.parameters())
    grads = torch.autograd.grad((model(x) - y).square().mean(), params, create_graph=True)
    weight_hv, bias_hv = hvp(grads, params, rademacher_like(params))[:2]
    dead = (model.layers[0](x) <= 0).all(dim=0)  # independent: units never active on this batch
    assert 0 < int(dead.sum()) < 32
    assert torch.all(weight_hv[dead] == 0) and torch.all(bias_hv[dead] == 0)
    assert torch.all(weight_hv[~dead].abs().sum(dim=1) > 0)


@pytest.mark.parametrize("activation", ["gaussian", "sine", "relu"])
def test_diagnostic_reproduces_the_dense_sparse_split(activation, tmp_path):
    config = SparsityConfig(activation=activation, steps=20, measure_every=10, size=64, output_dir=tmp_path)
    result = run_sparsity(config, progress=False)
    if activation == "relu":
        assert result["sparsity"] > 0.3  # Theorem 4.3: sparse
    else:
        assert result["sparsity"] < 0.01  # Theorem 4.2: dense
    run_dir = Path(result["run_dir"])
    assert run_dir.parent == tmp_path
    assert json.loads((run_dir / "sparsity.json").read_text())["sparsity"] == result["sparsity"]
    assert (run_dir / "sparsity.png").stat().st_size > 1000
