"""The fields' activations produce no subnormal floats, in forward, backward or an H·v step.

Oracles: a float x is subnormal iff x ≠ 0 and |x| < torch.finfo(dtype).tiny. Every aten op run
during a forward pass, a backward pass with ``create_graph=True`` and the double backward of a
Hessian-vector product is watched (a dispatch mode), so a subnormal anywhere in the field's
arithmetic fails a test, not only in the tensors that come out. Above the cut, the Gaussian is
the textbook exp(−z²/2σ²) evaluated in the same dtype, bit for bit, with the derivatives
−z/σ² · φ and (z²/σ⁴ − 1/σ²) · φ; below it, φ and its derivatives are exactly 0.
"""

from __future__ import annotations

import math
from collections import Counter

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from nf_precond_plugin.curvature import hvp, rademacher_like
from nf_precond_plugin.fields import CoordinateMLP
from nf_precond_plugin.fields.activations import Gaussian, RealGabor, exponent_cut

SIGMA = 0.1
DTYPES = [torch.float32, torch.float64]
# ops whose outputs are uninitialised memory: whatever bits they hold are not arithmetic
UNINITIALISED = {"aten::empty", "aten::empty_like", "aten::empty_strided", "aten::new_empty", "aten::new_empty_strided"}


def subnormal_count(x: torch.Tensor) -> int:
    return int(((x != 0) & (x.abs() < torch.finfo(x.dtype).tiny)).sum())


class SubnormalCensus(TorchDispatchMode):
    """Counts subnormal entries in the floating-point outputs of every aten op, by op."""

    def __init__(self) -> None:
        super().__init__()
        self.counts: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func._schema.name not in UNINITIALISED:
            for tensor in tree_flatten(out)[0]:
                if isinstance(tensor, torch.Tensor) and tensor.is_floating_point():
                    found = subnormal_count(tensor)
                    if found:
                        self.counts[func._schema.name] += found
        return out


def cut_value(dtype: torch.dtype) -> float:
    return math.exp(-exponent_cut(dtype))


def pre_activations(dtype: torch.dtype) -> torch.Tensor:
    """z in [−10, 10] (exponents up to 5000 at σ = 0.1), plus the floats right around the cut
    |z| = σ √(2T) and around where the textbook exp(−z²/2σ²) leaves the normal range."""
    grid = torch.linspace(-10, 10, 40_001, dtype=torch.float64)
    edges = []
    for exponent in (exponent_cut(dtype), -math.log(torch.finfo(dtype).tiny)):
        centre = torch.tensor(SIGMA * math.sqrt(2 * exponent), dtype=dtype)
        near = [centre]
        for direction in (math.inf, -math.inf):
            value = centre
            for _ in range(64):  # 64 floats on each side, one ulp apart
                value = torch.nextafter(value, torch.tensor(direction, dtype=dtype))
                near.append(value)
        edges.append(torch.stack(near).double())
        edges.append(-edges[-1])
    near_cut = torch.linspace(0.95, 1.05, 2001, dtype=torch.float64) * SIGMA * math.sqrt(2 * exponent_cut(dtype))
    return torch.cat([grid, near_cut, -near_cut, *edges]).to(dtype)


def textbook_exponent(z: torch.Tensor) -> torch.Tensor:
    return z.square() * (0.5 / SIGMA**2)


def test_cut_is_far_above_tiny_and_far_below_eps():
    for dtype in DTYPES + [torch.bfloat16]:
        info = torch.finfo(dtype)
        cut = cut_value(dtype)
        assert cut**3 == pytest.approx(info.tiny, rel=1e-9)  # c = ∛tiny: c³ = tiny
        assert cut <= info.eps * 2**-10
    assert cut_value(torch.float16) == pytest.approx(torch.finfo(torch.float16).tiny, rel=1e-9)


@pytest.mark.parametrize("dtype", DTYPES)
def test_gaussian_is_the_textbook_value_above_the_cut_and_zero_below(dtype):
    z = pre_activations(dtype).requires_grad_(True)
    phi = Gaussian(SIGMA)(z)
    first = torch.autograd.grad(phi.sum(), z, create_graph=True)[0]
    second = torch.autograd.grad(first.sum(), z)[0]
    z, phi, first = z.detach(), phi.detach(), first.detach()
    exponent = textbook_exponent(z)
    kept = exponent <= exponent_cut(dtype)
    assert kept.sum() > 1000 and (~kept).sum() > 1000
    # the value: bit for bit the textbook exp in the same dtype, at least c; exactly 0 beyond
    assert torch.equal(phi[kept], torch.exp(-exponent[kept]))
    assert phi[kept].min() >= cut_value(dtype) * (1 - 4 * torch.finfo(dtype).eps)
    assert torch.equal(phi[~kept], torch.zeros_like(phi[~kept]))
    # the derivatives: −z/σ² φ and (z²/σ⁴ − 1/σ²) φ to a few ulps; exactly 0 beyond the cut
    eps = torch.finfo(dtype).eps
    torch.testing.assert_close(first[kept], -z[kept] / SIGMA**2 * phi[kept], rtol=4 * eps, atol=0)
    exact_second = (z[kept].square() / SIGMA**4 - 1 / SIGMA**2) * phi[kept]
    torch.testing.assert_close(second[kept], exact_second, rtol=16 * eps, atol=16 * eps / SIGMA**2)
    assert torch.equal(first[~kept], torch.zeros_like(first[~kept]))
    assert torch.equal(second[~kept], torch.zeros_like(second[~kept]))


@pytest.mark.parametrize("dtype", DTYPES)
def test_gaussian_forward_backward_and_double_backward_have_no_subnormals(dtype):
    """Upstream gradients as small as a mean over the elements; and as small as c itself, away
    from the centre (|z| ≥ σ): near z = 0 a gradient that small times z² underflows with or
    without any cut."""
    z_all = pre_activations(dtype)
    for scale, z in ((1.0 / z_all.numel(), z_all), (cut_value(dtype), z_all[z_all.abs() >= SIGMA])):
        z = z.clone().requires_grad_(True)
        census = SubnormalCensus()
        with census:
            phi = Gaussian(SIGMA)(z)
            first = torch.autograd.grad((phi * scale).sum(), z, create_graph=True)[0]
            probe = rademacher_like([z])[0]
            second = torch.autograd.grad((first * probe).sum(), z)[0]
        assert subnormal_count(phi) == subnormal_count(first) == subnormal_count(second) == 0
        assert not census.counts, f"subnormal outputs by op at upstream scale {scale:.1e}: {dict(census.counts)}"


@pytest.mark.parametrize("dtype", DTYPES)
def test_gaussian_forward_mode_derivative_matches_backward(dtype):
    z = pre_activations(dtype)
    _, tangent = torch.func.jvp(Gaussian(SIGMA), (z,), (torch.ones_like(z),))
    grad = torch.func.grad(lambda t: Gaussian(SIGMA)(t).sum())(z)
    assert torch.equal(tangent, grad)
    assert subnormal_count(tangent) == 0


@pytest.mark.parametrize("dtype", DTYPES)
def test_wavelet_is_the_textbook_value_above_the_cut_with_no_subnormals(dtype):
    scale = 10.0
    z_scale = pre_activations(dtype) / (SIGMA * scale * math.sqrt(2))  # (s₀z₂)² spans the same exponents
    z_freq = torch.linspace(-1, 1, z_scale.numel(), dtype=dtype)
    z = torch.cat([z_freq[:, None], z_scale[:, None]], dim=-1).requires_grad_(True)
    census = SubnormalCensus()
    with census:
        out = RealGabor(10.0, scale)(z)
        first = torch.autograd.grad(out.mean(), z, create_graph=True)[0]
        second = torch.autograd.grad((first * rademacher_like([z])[0]).sum(), z)[0]
    assert not census.counts, f"subnormal outputs by op: {dict(census.counts)}"
    assert subnormal_count(out) == subnormal_count(first) == subnormal_count(second) == 0
    exponent = (scale * z_scale).square()
    kept = exponent <= exponent_cut(dtype)
    assert kept.sum() > 1000 and (~kept).sum() > 1000
    textbook = torch.cos(10.0 * z_freq) * torch.exp(-exponent)
    assert torch.equal(out.detach()[:, 0][kept], textbook[kept])
    assert torch.equal(out.detach()[:, 0][~kept], torch.zeros_like(textbook[~kept]))
    assert torch.equal(first[~kept], torch.zeros_like(first[~kept]))


def _field_hvp_census(activation: str, dtype: torch.dtype, weight_scale: float) -> tuple[Counter[str], float]:
    """Counts of subnormal op outputs over forward, backward (create_graph) and H·v of a small
    field, and the fraction of hidden Gaussian factors beyond the cut (units far from their centre)."""
    torch.manual_seed(0)
    model = CoordinateMLP(2, 3, 32, 4, activation, sigma=SIGMA).to(dtype)
    with torch.no_grad():  # a trained field's pre-activations: many units far from their centre
        for layer in model.layers[1:-1]:
            layer.weight.mul_(weight_scale)
    x = torch.rand(256, 2, dtype=dtype) * 2 - 1
    y = torch.rand(256, 3, dtype=dtype)
    params = list(model.parameters())
    hidden = []
    hooks = [model.activation.register_forward_hook(lambda _m, inputs, _out: hidden.append(inputs[0].detach()))]
    census = SubnormalCensus()
    with census:
        loss = (model(x) - y).square().mean()
        grads = torch.autograd.grad(loss, params, create_graph=True)
        products = hvp(grads, params, rademacher_like(params))
    for hook in hooks:
        hook.remove()
    for tensor in [*grads, *products]:
        census.counts["(result)"] += subnormal_count(tensor.detach())
    census.counts = +census.counts  # drop zero entries
    if activation == "gaussian":
        exponents = [textbook_exponent(z) for z in hidden]
    elif activation == "wavelet":
        exponents = [(model.activation.scale * z.chunk(2, dim=-1)[1]).square() for z in hidden]
    else:
        exponents = [torch.zeros(1)]
    far = sum(int((e > exponent_cut(dtype)).sum()) for e in exponents) / sum(e.numel() for e in exponents)
    return census.counts, far


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("activation", ["gaussian", "wavelet"])
def test_field_hvp_step_has_no_subnormals(activation, dtype):
    counts, far = _field_hvp_census(activation, dtype, weight_scale=30.0)
    assert far > 0.2, "the field must have many units far from their centre for this test to mean anything"
    assert not counts, f"subnormal outputs by op: {dict(counts)}"


@pytest.mark.parametrize("activation", ["sine", "relu-pe"])
def test_sine_and_relu_pe_fields_need_no_cut(activation):
    counts, _ = _field_hvp_census(activation, torch.float32, weight_scale=30.0)
    assert not counts, f"subnormal outputs by op: {dict(counts)}"
