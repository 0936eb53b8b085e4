"""`nf-precond advise nerf` on a tiny generated LLFF scene: a Gaussian NeRF has dense H·v.

A bad scene is the advise command's own one-line error (``nf-precond advise: error: --data <dir>: …``),
not one labelled ``ns-train`` by the trainer the probe builds.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("nerfstudio")

from nf_precond_plugin.advisor import SPARSE_FIELD, AdviseCommand, AdviseNerf, run_advise  # noqa: E402
from nf_precond_plugin.cli import main  # noqa: E402
from nf_precond_plugin.data.demo_scene import generate_demo_scene  # noqa: E402
from nf_precond_plugin.errors import UserInputError  # noqa: E402


def test_a_gaussian_nerf_is_advised_esgd_with_a_command_to_run(tmp_path):
    scene = generate_demo_scene(tmp_path / "scene", num_views=9, width=32, height=24)
    advice = run_advise(AdviseCommand(task=AdviseNerf(data=scene, probe_steps=4)))
    assert advice["hvp_zero_fraction"] < SPARSE_FIELD
    command = shlex.split(advice["command"])
    assert advice["recommended"] == "esgd" and Path(command[0]).name == "ns-train"
    assert command[1:4] == ["gaussian-esgd-cpu", "--data", str(scene)] and Path(command[0]).is_file()
    assert set(advice["probe"]) == {"esgd", "adam"} and all(advice["probe"]["esgd"].values())


def test_a_missing_scene_is_named(tmp_path):
    with pytest.raises(UserInputError, match="no-such-scene"):
        run_advise(AdviseCommand(task=AdviseNerf(data=tmp_path / "no-such-scene")))


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err and "ns-train" not in err, err
    return err


@pytest.mark.parametrize("contents", ["nothing", "images only"])
def test_a_scene_folder_without_poses_is_the_advise_commands_one_line_error(tmp_path, capsys, contents):
    scene = tmp_path / "scene"
    scene.mkdir()
    if contents == "images only":
        generated = generate_demo_scene(tmp_path / "full", num_views=3, width=16, height=12)
        (generated / "images_8").rename(scene / "images_8")
    assert main(["advise", "nerf", "--data", str(scene)]) == 2
    error = one_error_line(capsys)
    assert re.match(rf"nf-precond advise: error: --data {re.escape(str(scene))}: poses_bounds\.npy not found", error)


def test_a_scene_the_dataparser_refuses_inside_the_probe_is_not_labelled_ns_train(tmp_path, capsys):
    # Passes the up-front layout check (1 pose, 1 image), refused by the dataparser in the trainer's setup.
    scene = generate_demo_scene(tmp_path / "scene", num_views=2, width=16, height=12)
    np.save(scene / "poses_bounds.npy", np.load(scene / "poses_bounds.npy")[:1])
    sorted((scene / "images_8").iterdir())[1].unlink()
    assert main(["advise", "nerf", "--data", str(scene), "--probe-steps", "1"]) == 2
    error = one_error_line(capsys)
    assert re.match(r"nf-precond advise: error: ", error) and "only 1 view" in error, error
