"""Subnormal flushing: only the project's entry points turn it on, and it changes nothing above 1e-38."""

from __future__ import annotations

import subprocess
import sys

import torch

from nf_precond_plugin.fields import CoordinateMLP

SMALLEST_NORMAL_FP32 = torch.finfo(torch.float32).tiny  # 1.1755e-38


def _flush_state_after(code: str) -> str:
    probe = "import torch; print('flushed' if (torch.tensor(1e-40) * 1.0).item() == 0.0 else 'kept')"
    out = subprocess.run([sys.executable, "-c", f"{code}\n{probe}"], capture_output=True, text=True, check=True)
    return out.stdout.strip().splitlines()[-1]


def test_importing_the_library_leaves_subnormals_alone():
    assert _flush_state_after("import nf_precond_plugin.optim, nf_precond_plugin.curvature, nf_precond_plugin.fields") == "kept"


def test_entry_point_configuration_flushes_subnormals():
    assert _flush_state_after("from nf_precond_plugin.runtime import configure_entry_point; configure_entry_point()") == "flushed"


def test_flushing_changes_gaussian_fields_only_below_the_smallest_normal():
    torch.manual_seed(0)
    model = CoordinateMLP(2, 3, hidden_features=64, num_layers=3, activation="gaussian", sigma=0.05)
    x = torch.rand(4096, 2) * 2 - 1
    pre = model.layers[0](x)
    try:
        torch.set_flush_denormal(False)
        exact_act = model.activation(pre)
        exact_out = model(x)
        assert ((exact_act > 0) & (exact_act < SMALLEST_NORMAL_FP32)).any(), "test needs subnormal activations"
        torch.set_flush_denormal(True)
        flushed_act = model.activation(pre)
        flushed_out = model(x)
    finally:
        torch.set_flush_denormal(False)
    assert (exact_act - flushed_act).abs().max() < SMALLEST_NORMAL_FP32
    # downstream the lost mass is ~1e-38 × weights: invisible at float32 resolution of O(1) outputs
    torch.testing.assert_close(flushed_out, exact_out, rtol=0, atol=1e-30)
