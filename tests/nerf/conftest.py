"""Fixtures for the end-to-end nerfstudio checks: one tiny scene, one short `ns-train` run, shared by all.

Every command runs as a real subprocess (the installed `ns-*` entry points) with OMP_NUM_THREADS=1 and
a network guard: a ``sitecustomize`` put first on PYTHONPATH makes any Python process refuse (and
record) a connection or a name lookup for anything but the loopback interface. Each run's record is
checked when its result is collected, so "nothing touched the network" is asserted, not assumed.

Commands that do not depend on each other start in the background and are collected later, so the
nerfstudio imports (~15 s per process) of several commands overlap on the two cores.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
from tiny_nerf import TINY_MODEL

from nf_precond_plugin.data.demo_scene import generate_demo_scene

BIN = Path(sys.executable).parent
"""The venv's bin folder, where ns-train, ns-eval, ns-render and ns-viewer are installed."""

TRAIN_ITERATIONS = 300
"""Steps 0–49 are ESGD's warm-up HVP steps (d_warmup = 50), then every update_d_every-th step. 300
steps (~5 s on one core at this size) take the test views from ≈ 14 dB (the best constant colour)
to ≈ 17 dB, which makes "the render resembles its ground truth" a real oracle."""

TRAIN_TIMEOUT_S = 300
CLI_TIMEOUT_S = 240

NETWORK_GUARD = '''\
"""Test-suite network guard (written by tests/nerf/conftest.py): loopback only, attempts recorded."""
import errno as _errno
import os as _os
import socket as _socket

_LOG = _os.environ.get("NF_PRECOND_TEST_NETWORK_LOG")
_LOCAL_NAMES = {None, "", "localhost", "0.0.0.0", "::", "::1"}


def _record(what):
    if _LOG:
        with open(_LOG, "a") as log:
            log.write(f"pid {_os.getpid()}: {what}\\n")


def _is_local(host):
    if isinstance(host, bytes):
        host = host.decode(errors="replace")
    return host in _LOCAL_NAMES or str(host).startswith("127.")


def _guard_connect(original):
    def connect(self, address):
        if self.family in (_socket.AF_INET, _socket.AF_INET6) and not _is_local(address[0]):
            _record(f"connect {address!r}")
            raise OSError(_errno.ENETUNREACH, f"network access blocked by the test suite: {address!r}")
        return original(self, address)

    return connect


def _guarded_getaddrinfo(host, *args, _original=_socket.getaddrinfo, **kwargs):
    if not _is_local(host):
        _record(f"getaddrinfo {host!r}")
        raise _socket.gaierror(_socket.EAI_NONAME, f"name lookup blocked by the test suite: {host!r}")
    return _original(host, *args, **kwargs)


_socket.socket.connect = _guard_connect(_socket.socket.connect)
_socket.socket.connect_ex = _guard_connect(_socket.socket.connect_ex)
_socket.getaddrinfo = _guarded_getaddrinfo
'''


@dataclass
class Finished:
    """A finished command: its argv, exit code and combined stdout + stderr."""

    args: list[str]
    returncode: int
    output: str
    seconds: float

    def describe(self, tail: int = 4000) -> str:
        return f"$ {' '.join(self.args)}\n(exit {self.returncode} after {self.seconds:.1f} s)\n{self.output[-tail:]}"


class Background:
    """A command started in its own process group, output to a file; ``result()`` waits for it."""

    def __init__(self, args: Sequence[str], env: dict[str, str], log_dir: Path, name: str, cwd: Path | None = None):
        self.args = [str(arg) for arg in args]
        self.log_path = log_dir / f"{name}.log"
        self.network_log = log_dir / f"{name}.network"
        self._log = open(self.log_path, "w")
        self.started = time.monotonic()
        self.process = subprocess.Popen(
            self.args,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env={**env, "NF_PRECOND_TEST_NETWORK_LOG": str(self.network_log)},
            cwd=cwd or log_dir,
            start_new_session=True,
        )
        self._finished: Finished | None = None

    def result(self, timeout: float = CLI_TIMEOUT_S) -> Finished:
        if self._finished is None:
            try:
                self.process.wait(timeout=max(1.0, timeout - (time.monotonic() - self.started)))
            except subprocess.TimeoutExpired:
                self.kill()
                pytest.fail(f"timed out after {timeout} s: {' '.join(self.args)}\n{self.log_path.read_text()[-4000:]}")
            self._log.close()
            self._finished = Finished(
                self.args, self.process.returncode, self.log_path.read_text(), time.monotonic() - self.started
            )
        attempts = self.network_log.read_text() if self.network_log.exists() else ""
        assert not attempts, f"network access attempted by {' '.join(self.args)}:\n{attempts}"
        return self._finished

    def kill(self) -> None:
        if self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.process.wait()
        self._log.close()


@pytest.fixture(scope="session")
def cli_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Environment for the ns-* subprocesses: one thread, offline, no writes outside tmp dirs."""
    root = tmp_path_factory.mktemp("cli_env")
    guard_dir = root / "network_guard"
    guard_dir.mkdir()
    (guard_dir / "sitecustomize.py").write_text(NETWORK_GUARD)
    env = dict(os.environ)
    python_path = [str(guard_dir)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])
    env.update(
        PYTHONPATH=os.pathsep.join(python_path),
        OMP_NUM_THREADS="1",
        MKL_NUM_THREADS="1",
        NF_PRECOND_CACHE=str(root / "cache"),  # a default demo scene would go here, not to ~/.cache
        MPLBACKEND="Agg",
        HF_HUB_OFFLINE="1",
        WANDB_MODE="disabled",
        PYTHONUNBUFFERED="1",
        COLUMNS="200",  # rich/tyro wrap at this width, so long option names stay on one line
    )
    return env


@pytest.fixture(scope="session")
def start_command(cli_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory):
    """``start_command(args, name)`` starts a :class:`Background` run of ``args`` in ``cli_env`` (a bare
    program name is looked up in the venv's bin first), logging to ``<name>.log`` in a fresh tmp dir.
    Whatever is still running at the end of the session is killed."""
    started: list[Background] = []

    def start(args: Sequence[object], name: str) -> Background:
        program = str(args[0])
        if "/" not in program and (BIN / program).is_file():
            program = str(BIN / program)
        run = Background([program, *args[1:]], cli_env, tmp_path_factory.mktemp(name), name)
        started.append(run)
        return run

    yield start
    for run in started:
        run.kill()


@pytest.fixture(scope="session")
def tiny_scene(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo scene with 12 views (views 0 and 8 are the test split) at 80 × 60."""
    return generate_demo_scene(tmp_path_factory.mktemp("tiny_scene") / "scene", num_views=12)


@pytest.fixture(scope="session")
def training(tiny_scene: Path, start_command, tmp_path_factory: pytest.TempPathFactory) -> Background:
    """The one `ns-train gaussian-esgd-cpu` run, started in the background (collect with `trained_run`)."""
    outputs = tmp_path_factory.mktemp("trained_run") / "outputs"
    run = start_command(
        [
            "ns-train",
            "gaussian-esgd-cpu",
            "--machine.device-type",
            "cpu",
            "--vis",
            "tensorboard",
            "--max-num-iterations",
            str(TRAIN_ITERATIONS),
            "--steps-per-save",
            str(TRAIN_ITERATIONS),
            "--output-dir",
            outputs,
            *TINY_MODEL,
            "--data",
            tiny_scene,
        ],  # fmt: skip
        "ns-train",
    )
    run.output_dir = outputs
    return run


@pytest.fixture(scope="session")
def trained_run(training: Background) -> Path:
    """config.yml of the finished training run (its last checkpoint is in nerfstudio_models/)."""
    finished = training.result(TRAIN_TIMEOUT_S)
    assert finished.returncode == 0, finished.describe()
    assert "Traceback" not in finished.output, finished.describe()
    configs = sorted(training.output_dir.rglob("config.yml"))
    assert len(configs) == 1, f"expected one config.yml under {training.output_dir}, found {configs}"
    config = configs[0]
    checkpoints = sorted((config.parent / "nerfstudio_models").glob("step-*.ckpt"))
    assert checkpoints, f"no checkpoint in {config.parent / 'nerfstudio_models'}\n{finished.describe()}"
    return config
