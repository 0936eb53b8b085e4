"""The one H·v measurement helper (``curvature.hvp_samples``) against a known Hessian, and the one
recommendation of the advisor (``advisor.recommend``) for both shapes of probe results."""

from __future__ import annotations

import pytest
import torch

from nf_precond_plugin.advisor.recommend import PROBE_TIE, recommend
from nf_precond_plugin.curvature import SPARSE_FIELD, hvp_samples
from nf_precond_plugin.errors import UserInputError

# A symmetric integer matrix: with ±1 probes every product A·v is exact in float64.
A = torch.tensor(
    [
        [4, 1, 0, -2, 3],
        [1, 5, 2, 0, -1],
        [0, 2, 6, 1, 0],
        [-2, 0, 1, 3, 2],
        [3, -1, 0, 2, 7],
    ],
    dtype=torch.float64,
)


def quadratic():
    """L = ½ θᵀ A θ with θ split over two parameters (a vector and a matrix), so H = A couples them."""
    first = torch.nn.Parameter(torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64))
    second = torch.nn.Parameter(torch.tensor([[1.5], [-0.25]], dtype=torch.float64))

    def loss() -> torch.Tensor:
        theta = torch.cat([first, second.flatten()])
        return 0.5 * theta @ A @ theta

    return [first, second], loss


def test_products_are_a_times_the_returned_probes_exactly():
    params, loss = quadratic()
    samples = hvp_samples(loss, params, probes=4, generator=torch.Generator().manual_seed(1))
    assert len(samples) == 4 and samples.params == params and samples.indices == [0, 1]
    for probe, product in samples:
        assert [v.shape for v in probe] == [p.shape for p in params]
        assert [h.shape for h in product] == [p.shape for p in params]
        v = torch.cat([t.flatten() for t in probe])
        assert torch.all(v.abs() == 1)  # Rademacher
        assert torch.equal(torch.cat([h.flatten() for h in product]), A @ v)
        assert not any(h.requires_grad for h in product)
    assert len({tuple(torch.cat([t.flatten() for t in probe]).tolist()) for probe in samples.probes}) > 1


def test_the_generator_decides_the_probes():
    params, loss = quadratic()
    first = hvp_samples(loss, params, probes=2, generator=torch.Generator().manual_seed(7))
    again = hvp_samples(loss, params, probes=2, generator=torch.Generator().manual_seed(7))
    for (v1, h1), (v2, h2) in zip(first, again):
        assert all(torch.equal(a, b) for a, b in zip(v1 + h1, v2 + h2))


def test_an_unused_parameter_is_left_out():
    torch.manual_seed(0)
    used, unused = torch.nn.Linear(3, 4), torch.nn.Linear(3, 4)
    x = torch.randn(16, 3)
    params = [*unused.parameters(), *used.parameters()]
    samples = hvp_samples(lambda: torch.tanh(used(x)).square().sum(), params, probes=2)
    assert samples.indices == [2, 3]
    assert samples.params[0] is used.weight and samples.params[1] is used.bias
    for probe, product in samples:
        assert [h.shape for h in product] == [used.weight.shape, used.bias.shape] == [v.shape for v in probe]
    with pytest.raises(ValueError, match="none of the parameters"):
        hvp_samples(lambda: torch.tanh(used(x)).sum(), list(unused.parameters()))


def test_a_linear_loss_has_zero_products():
    weight = torch.nn.Parameter(torch.ones(3))
    samples = hvp_samples(lambda: (weight * torch.tensor([1.0, 2.0, 3.0])).sum(), [weight])
    assert torch.equal(samples.products[0][0], torch.zeros(3))


def test_the_graph_is_freed_unless_retained():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(2, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    x = torch.randn(8, 2)
    loss = model(x).square().mean()
    hvp_samples(lambda: loss, list(model.parameters()), probes=2, retain_graph=True)
    loss.backward()  # the graph was kept for this backward
    loss = model(x).square().mean()
    hvp_samples(lambda: loss, list(model.parameters()), probes=2)
    with pytest.raises(RuntimeError, match="backward through the graph a second time"):
        loss.backward()


DENSE = {"hvp_zero_fraction": 0.0, "curvature_spread_log10": 2.0}
SPARSE = {"hvp_zero_fraction": SPARSE_FIELD, "curvature_spread_log10": 3.0}


def test_one_recommend_applies_the_tie_rule_to_fields_and_nerfs():
    assert PROBE_TIE == 0.05  # the values below sit on either side of 5 %
    # field: both optimizers probe their lr; 1.04 is tied with the best 1.0, 1.06 is not
    field = {"esgd": {"0.5": 1.06, "1": 1.04, "2": 1.0}, "muon": {"0.002": None, "0.005": 2.08, "0.02": 2.0}}
    assert {k: v for k, v in recommend(DENSE, field).items() if k != "reason"} == {
        "recommended": "esgd", "lr": 1.0, "schedule": "schedule-free"
    }  # fmt: skip
    assert {k: v for k, v in recommend(SPARSE, field).items() if k != "reason"} == {
        "recommended": "muon", "lr": 0.005, "schedule": "cosine"
    }  # fmt: skip
    # NeRF: ESGD probes its clip, Adam its lr
    knobs = {"esgd": "clip", "adam": "lr"}
    nerf = {"esgd": {"0.001": 0.0102, "0.003": 0.0100}, "adam": {"0.001": 0.0200, "0.002": 0.0195}}
    nerf_choices = {"dense": "esgd", "sparse": "adam"}
    dense = recommend(DENSE, nerf, knobs, nerf_choices)
    assert (dense["recommended"], dense["clip"]) == ("esgd", 1e-3) and "lr" not in dense
    sparse = recommend(SPARSE, nerf, knobs, nerf_choices)
    assert (sparse["recommended"], sparse["lr"]) == ("adam", 1e-3) and "clip" not in sparse
    # outside the margin the best value wins
    nerf["esgd"]["0.001"] = 0.0106
    assert recommend(DENSE, nerf, knobs, nerf_choices)["clip"] == 3e-3


def test_recommend_refuses_when_every_probe_diverged():
    with pytest.raises(UserInputError, match="every probed clip of esgd diverged"):
        recommend(DENSE, {"esgd": {"0.001": None, "0.003": float("nan")}}, {"esgd": "clip", "adam": "lr"})
