"""Subnormal flushing: only the project's entry points turn it on, and it changes nothing above 1e-38."""

from __future__ import annotations

import subprocess
import sys

import torch

from nf_precond_plugin.fields import Gaussian

SMALLEST_NORMAL_FP32 = torch.finfo(torch.float32).tiny  # 1.1755e-38


def _flush_state_after(code: str) -> str:
    probe = "import torch; print('flushed' if (torch.tensor(1e-40) * 1.0).item() == 0.0 else 'kept')"
    out = subprocess.run([sys.executable, "-c", f"{code}\n{probe}"], capture_output=True, text=True, check=True)
    return out.stdout.strip().splitlines()[-1]


def test_importing_the_library_leaves_subnormals_alone():
    assert (
        _flush_state_after("import nf_precond_plugin.optim, nf_precond_plugin.curvature, nf_precond_plugin.fields")
        == "kept"
    )


def test_entry_point_configuration_flushes_subnormals():
    assert (
        _flush_state_after("from nf_precond_plugin.runtime import configure_entry_point; configure_entry_point()")
        == "flushed"
    )


def _textbook_gaussian(z: torch.Tensor, sigma: float) -> torch.Tensor:
    return torch.exp(-(z**2) / (2 * sigma**2))


def test_flushing_changes_values_only_below_the_smallest_normal():
    z = torch.linspace(-1, 1, 20001)
    try:
        torch.set_flush_denormal(False)
        exact = _textbook_gaussian(z, 0.05)
        assert ((exact > 0) & (exact < SMALLEST_NORMAL_FP32)).any(), "test needs subnormal values"
        torch.set_flush_denormal(True)
        flushed = _textbook_gaussian(z, 0.05)
    finally:
        torch.set_flush_denormal(False)
    assert (exact - flushed).abs().max() < SMALLEST_NORMAL_FP32
    assert torch.equal(exact[exact >= SMALLEST_NORMAL_FP32], flushed[exact >= SMALLEST_NORMAL_FP32])


def test_gaussian_activation_matches_the_textbook_formula_and_its_derivatives():
    """The hand-differentiated Gaussian against autograd of exp(−z²/2σ²) in float64 (inside its cut)."""
    sigma = 0.05
    z = torch.linspace(-0.6, 0.6, 2001, dtype=torch.float64, requires_grad=True)  # float64's cut starts at |z| ≈ 1.09
    ours = Gaussian(sigma)(z)
    first = torch.autograd.grad(ours.sum(), z, create_graph=True)[0]
    second = torch.autograd.grad(first.sum(), z)[0]
    reference = _textbook_gaussian(z, sigma)
    ref_first = torch.autograd.grad(reference.sum(), z, create_graph=True)[0]
    ref_second = torch.autograd.grad(ref_first.sum(), z)[0]
    torch.testing.assert_close(ours, reference, rtol=1e-13, atol=0)
    torch.testing.assert_close(first, ref_first, rtol=1e-12, atol=1e-300)
    torch.testing.assert_close(second, ref_second, rtol=1e-12, atol=1e-300)
