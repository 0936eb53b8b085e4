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


def test_the_next_commands_are_printed_to_work_from_the_project_root(monkeypatch):
    import shlex
    from pathlib import Path

    from nf_precond_plugin.nerf.demo import NerfDemoConfig, next_commands

    root = Path(__file__).resolve().parents[2]
    monkeypatch.chdir(root)  # where `make demo` runs
    config_path = Path("outputs/demo/demo-llff-v1/gaussian-esgd-cpu/2026-01-01_000000/config.yml")
    commands = next_commands(NerfDemoConfig(), config_path, Path("/data/my scene"))
    viewer, train = shlex.split(commands["viewer"]), shlex.split(commands["your data"])
    assert viewer == [".venv/bin/ns-viewer", "--load-config", str(config_path)]
    assert train[:2] == [".venv/bin/ns-train", "gaussian-esgd-cpu"] and train[-2:] == ["--data", "/data/my scene"]
    assert (root / viewer[0]).is_file() and (root / train[0]).is_file()


def test_ns_eval_runs_behind_a_status_line_and_its_output_is_shown_only_if_it_fails(capsys):
    import sys

    import pytest

    from nf_precond_plugin.errors import UserInputError
    from nf_precond_plugin.nerf.demo import _run_behind_status

    seconds = _run_behind_status([sys.executable, "-c", "print('quiet ' * 2)"], "evaluating")
    assert seconds >= 0 and "quiet quiet" not in capsys.readouterr().out
    with pytest.raises(UserInputError, match="exit status 3"):
        _run_behind_status([sys.executable, "-c", "print('went ' * 2); raise SystemExit(3)"], "evaluating")
    assert "went went" in capsys.readouterr().out
