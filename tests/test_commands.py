"""Printed commands name the environment's own programs, so they work without activating it."""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

from nf_precond_plugin.commands import printed_command

ROOT = Path(__file__).resolve().parents[1]


def test_a_printed_command_runs_as_printed_from_a_shell_without_the_environment_on_path(monkeypatch):
    monkeypatch.chdir(ROOT)
    line = printed_command("nf-precond", "--help")
    assert shlex.split(line)[0].endswith("nf-precond") and shlex.split(line)[0] != "nf-precond"
    env = {"PATH": "/usr/bin:/bin", "HOME": str(Path.home())}  # no .venv/bin on PATH
    result = subprocess.run(line, shell=True, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr


def test_python_is_this_interpreter_and_arguments_are_quoted(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    program, *args = shlex.split(printed_command("python", "standalone/image.py", "--resume", "runs/a b"))
    assert Path(program).resolve() == Path(sys.executable).resolve()
    assert args == ["standalone/image.py", "--resume", "runs/a b"]
