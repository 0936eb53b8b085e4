"""`nf-precond advise nerf` on a tiny generated LLFF scene: a Gaussian NeRF has dense H·v."""

from __future__ import annotations

import pytest

pytest.importorskip("nerfstudio")

from nf_precond_plugin.advisor import SPARSE_FIELD, AdviseCommand, AdviseNerf, run_advise  # noqa: E402
from nf_precond_plugin.data.demo_scene import generate_demo_scene  # noqa: E402
from nf_precond_plugin.errors import UserInputError  # noqa: E402


def test_a_gaussian_nerf_is_advised_esgd_with_a_command_to_run(tmp_path):
    scene = generate_demo_scene(tmp_path / "scene", num_views=9, width=32, height=24)
    advice = run_advise(AdviseCommand(task=AdviseNerf(data=scene, probe_steps=4)))
    assert advice["hvp_zero_fraction"] < SPARSE_FIELD
    assert advice["recommended"] == "esgd" and advice["command"].startswith("ns-train gaussian-esgd-cpu")
    assert set(advice["probe"]) == {"esgd", "adam"} and all(advice["probe"]["esgd"].values())


def test_a_missing_scene_is_named(tmp_path):
    with pytest.raises(UserInputError, match="no-such-scene"):
        run_advise(AdviseCommand(task=AdviseNerf(data=tmp_path / "no-such-scene")))
