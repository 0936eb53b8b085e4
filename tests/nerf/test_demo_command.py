"""`nf-precond nerf-demo` refuses bad options in one line before starting any training."""

from __future__ import annotations

from nf_precond_plugin.cli import main


def test_missing_scene_is_one_line_naming_the_option(tmp_path, capsys):
    missing = tmp_path / "no-such-scene"
    assert main(["nerf-demo", "--data", str(missing), "--output-dir", str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err.strip()
    assert "--data" in error and str(missing) in error.replace("\n", "") and "Traceback" not in error
    assert not (tmp_path / "out").exists()


def test_zero_iterations_is_refused(tmp_path, capsys):
    assert main(["nerf-demo", "--iterations", "0", "--output-dir", str(tmp_path / "out")]) == 2
    assert "--iterations 0" in capsys.readouterr().err
