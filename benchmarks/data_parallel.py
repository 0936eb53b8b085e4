"""Data parallelism on this machine: N processes against 1 at the same global batch.

Model: the paper's image MLP (5 layers × 256, Gaussian σ = 0.05) on the embedded image, global
batch 512 by default (each of N ranks takes 512/N; ``--global-batch`` for larger steps, where the
compute per all-reduce grows). For each optimizer, the steady-state step is timed over
cycles of the default schedule (ESGD: one H·v step per ``update_d_every`` steps after its warm-up,
which is run untimed). Prints, and writes as JSON with --json-out:

  - ms per step with 1 process (all the machine's threads) and with N processes (threads split
    evenly), and their ratio;
  - the share of the N-process step spent inside ``all_reduce`` (timed on rank 0).

The runs alternate (1, N, 1, N, …) and each figure is the median over --repeats, so slow drift of
the machine hits both alike. On a 2-core CPU the ranks share the cores a single process already
uses: this measures the overhead of the averaging, not a speed-up.

    .venv/bin/python benchmarks/data_parallel.py [--processes 2] [--global-batch 512] [--repeats 3] [--json-out FILE]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from nf_precond_plugin.presets import IMAGE_BATCH

OPTIMIZERS = ("adam", "esgd")


def schedule(optimizer_name: str) -> tuple[int, int]:
    """(untimed warm-up steps, steps per timed cycle): ESGD's default H·v schedule; Adam takes a
    cycle of the same length."""
    from nf_precond_plugin.optim.esgd import ESGD
    from nf_precond_plugin.optim.factory import constructor_default

    warmup, every = constructor_default(ESGD, "d_warmup"), constructor_default(ESGD, "update_d_every")
    return (warmup if optimizer_name == "esgd" else 5), every


def worker(optimizer_name: str, cycles: int, global_batch: int, out: Path) -> None:
    """One rank (or the single process): time ``cycles`` schedule cycles of steps."""
    import torch.distributed as dist

    from nf_precond_plugin.data.images import load_target_image, pixel_coordinates
    from nf_precond_plugin.optim.factory import build_optimizer, default_lr
    from nf_precond_plugin.runtime import configure_entry_point
    from nf_precond_plugin.tasks.common import FitConfig, build_field
    from nf_precond_plugin.training.distributed import (
        current_ranks,
        join_process_group,
        leave_process_group,
        local_shard,
    )
    from nf_precond_plugin.training.step import training_step

    configure_entry_point()
    ranks = join_process_group("cpu")
    communication = [0.0]
    all_reduce = dist.all_reduce

    def timed_all_reduce(*args, **kwargs):
        started = time.perf_counter()
        try:
            return all_reduce(*args, **kwargs)
        finally:
            communication[0] += time.perf_counter() - started

    dist.all_reduce = timed_all_reduce
    torch.manual_seed(0)
    target, _ = load_target_image(None, 256)
    coords, colors = pixel_coordinates(256, 256), target.reshape(-1, 3)
    model = build_field(FitConfig(activation="gaussian"), 2, 3)
    optimizer = build_optimizer(optimizer_name, model, default_lr(optimizer_name, "gaussian"))
    warmup, every = schedule(optimizer_name)
    generator = torch.Generator().manual_seed(1)

    def step() -> None:
        index = torch.randint(0, coords.shape[0], (global_batch,), generator=generator)
        x, y = local_shard(coords[index], ranks), local_shard(colors[index], ranks)
        training_step([optimizer], lambda: (torch.nn.functional.mse_loss(model(x), y), None))

    for _ in range(warmup):
        step()
    communication[0] = 0.0
    started = time.perf_counter()
    steps = cycles * every
    for _ in range(steps):
        step()
    seconds = time.perf_counter() - started
    if current_ranks().is_main:
        out.write_text(
            json.dumps({"ms_per_step": 1e3 * seconds / steps, "communication_share": communication[0] / seconds})
        )
    leave_process_group()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def measure(optimizer_name: str, processes: int, cycles: int, global_batch: int, threads: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(scratch) / "result.json"
        port = free_port()
        command = [sys.executable, __file__, "--worker", optimizer_name, "--cycles", str(cycles)]
        command += ["--global-batch", str(global_batch), "--out", str(out)]
        per_rank_threads = max(1, threads // processes)
        launched = [
            subprocess.Popen(
                command,
                env=dict(
                    os.environ,
                    OMP_NUM_THREADS=str(per_rank_threads),
                    **(
                        dict(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(processes))
                        if processes > 1
                        else {}
                    ),
                ),
            )
            for rank in range(processes)
        ]
        codes = [process.wait(timeout=1200) for process in launched]
        if not out.exists():
            raise SystemExit(f"benchmark worker failed with exit codes {codes}")
        # Rank 0 wrote its timing after the last timed step; a rank that aborts while tearing
        # gloo down afterwards is counted and reported, the timing stands.
        return {**json.loads(out.read_text()), "teardown_failures": sum(code != 0 for code in codes)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cycles", type=int, default=3, help="H·v schedule cycles timed per run")
    parser.add_argument("--global-batch", type=int, default=IMAGE_BATCH, help="samples per step, over all ranks")
    parser.add_argument("--json-out", type=Path)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.cycles, args.global_batch, args.out)
        return
    if args.global_batch % args.processes:
        parser.error(f"--processes {args.processes}: expected a divisor of --global-batch {args.global_batch}")

    from rich.console import Console
    from rich.progress import Progress
    from rich.table import Table

    threads = torch.get_num_threads()
    samples: dict[tuple[str, int], list[dict[str, float]]] = {}
    with Progress(console=Console(stderr=True)) as progress:
        task = progress.add_task("data parallel", total=args.repeats * len(OPTIMIZERS) * 2)
        for _ in range(args.repeats):
            for name in OPTIMIZERS:
                for processes in (1, args.processes):
                    samples.setdefault((name, processes), []).append(
                        measure(name, processes, args.cycles, args.global_batch, threads)
                    )
                    progress.advance(task)

    results = {}
    table = Table(
        title=f"{args.processes} processes vs 1 at global batch {args.global_batch} ({threads} threads in all)"
    )
    for column in (
        "optimizer",
        "1 process ms/step",
        f"{args.processes} processes ms/step",
        "ratio",
        "all-reduce share",
    ):
        table.add_column(column, justify="right")
    for name in OPTIMIZERS:
        one = statistics.median(s["ms_per_step"] for s in samples[(name, 1)])
        many = statistics.median(s["ms_per_step"] for s in samples[(name, args.processes)])
        share = statistics.median(s["communication_share"] for s in samples[(name, args.processes)])
        results[name] = {
            "one_process_ms_per_step": one,
            "processes_ms_per_step": many,
            "ratio": many / one,
            "communication_share": share,
            "teardown_failures": sum(s["teardown_failures"] for s in samples[(name, args.processes)]),
        }
        table.add_row(name, f"{one:.2f}", f"{many:.2f}", f"{many / one:.2f}", f"{100 * share:.1f} %")
    Console().print(table)
    if args.json_out:
        args.json_out.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "date": datetime.date.today().isoformat(),
            "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, gloo",
            "processes": args.processes,
            "global_batch": args.global_batch,
            "threads": threads,
            "repeats": args.repeats,
            "timed_steps_per_run": schedule("esgd")[1] * args.cycles,
            "results": results,
        }
        args.json_out.write_text(json.dumps(payload, indent=2))


if __name__ == "__main__":
    main()
