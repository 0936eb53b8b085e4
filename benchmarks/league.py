"""The league: tasks × optimizers, each optimizer at its best lr from a small sweep, side by side.

Every entry of a task starts from the same initial weights and sees the same minibatches (the
runner's epoch order is seeded by (seed, epoch)); probes are seeded the same way. The sweep runs
``--sweep-epochs`` epochs at seed 0 for every lr of the optimizer's grid and keeps the lr with the
best metric at the end of the sweep (ties: the larger area under the curve); the final runs then
train ``--epochs`` epochs at that lr for every seed. Reported per task:

- the metric at epochs 1, 2, 5, 10, 20, 50, 100, 200 (as far as ``--epochs`` goes), per seed;
- epochs and training seconds to reach the tuned Adam's final value (same seed), or null;
- the step time (forward + backward + optimizer) ÷ Adam's, over the final runs;
- the sweep itself (lr → metric).

    python benchmarks/league.py --tasks image-gaussian --epochs 20 --json-out benchmarks/results/league.json
    python benchmarks/league.py --tasks image-gaussian,image-sine,image-wavelet,image-relu-pe,occupancy \
        --epochs 20 --sweep-epochs 5 --seeds 0,1 --json-out benchmarks/results/league_cpu.json

Runs are sequential in one process (one thread by default): timings are fair only while nothing
else loads the machine. Results: JSON (``--json-out``) and one convergence PNG per task beside it.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table

from nf_precond_plugin.errors import TrainingDiverged
from nf_precond_plugin.optim.factory import OPTIMIZERS
from nf_precond_plugin.runtime import configure_entry_point
from nf_precond_plugin.training.runner import RunSettings, build_run, train_epoch
from nf_precond_plugin.training.schedules import ScheduleChoice

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
LION = SHARED / "div2k" / "test_data" / "14.png"
ARMADILLO = SHARED / "meshes" / "armadillo.off"
REPORT_EPOCHS = (1, 2, 5, 10, 20, 50, 100, 200)

# The lr grid of each optimizer: its default in the middle, a factor ~3 either side.
SWEEPS: dict[str, tuple[float, ...]] = {
    "adam": (3e-4, 1e-3, 3e-3),
    "esgd": (0.5, 1.0, 2.0),
    "esgd-paper": (0.05, 0.15, 0.5),
    "adahessian": (0.05, 0.15, 0.5),
    "kfac": (1e-4, 3e-4, 1e-3),
    "muon": (0.005, 0.02, 0.05),
    "sophiah": (0.02, 0.06, 0.2),
    "shampoo": (3e-3, 1e-2, 3e-2),
    "sgd": (0.03, 0.1, 0.3),
}


@dataclass
class LeagueTask:
    name: str
    task: Any
    metric: str
    batch_size: int


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return f"{platform.machine()} CPU"


def make_task(name: str, size: int, points: int) -> LeagueTask:
    if name.startswith("image-"):
        from nf_precond_plugin.tasks.image import ImageConfig, ImageTask

        image = LION if LION.is_file() else None  # the embedded astronaut when the lion is absent
        config = ImageConfig(image=image, activation=name.removeprefix("image-"), size=size)
        return LeagueTask(name, ImageTask(config), "psnr", config.batch_size)
    if name == "occupancy":
        from nf_precond_plugin.tasks.occupancy import OccupancyConfig, OccupancyTask

        mesh = ARMADILLO if ARMADILLO.is_file() else None
        # fewer points per epoch than the paper's 1M (CPU budget): 20 batches of points/20 each
        config = OccupancyConfig(mesh=mesh, points_per_epoch=points, batch_size=points // 20, heldout_points=50_000)
        return LeagueTask(name, OccupancyTask(config), "iou", config.batch_size)
    raise SystemExit(f"--tasks: unknown task {name!r}; expected image-<activation> or occupancy")


def train(
    league: LeagueTask,
    optimizer: str,
    lr: float,
    epochs: int,
    seed: int,
    initial: dict,
    scratch: Path,
    schedule: ScheduleChoice | None = None,
    optimizer_args: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One entry: ``epochs`` epochs from ``initial`` under ``schedule`` (None: the optimizer's
    default) with constructor ``optimizer_args``; the metric per epoch and the times."""
    task = league.task
    settings = RunSettings(
        [optimizer],
        {optimizer: lr},
        epochs,
        league.batch_size,
        seed=seed,
        progress=False,
        schedules={optimizer: schedule} if schedule is not None else {},
        optimizer_args={optimizer: dict(optimizer_args or {})},
    )
    torch.manual_seed(seed)  # the probe seed, drawn at construction as the runner draws it
    run = build_run(task, settings, optimizer, initial, scratch)
    curve, seconds, diverged = [], [], None
    while run.epoch < epochs:
        try:
            row = train_epoch(task, settings, run)
        except TrainingDiverged:
            diverged = run.epoch + 1
            break
        curve.append(float(row[league.metric]))
        seconds.append(run.wall_seconds)
    return {
        "lr": lr,
        "curve": curve,
        "seconds": seconds,
        "diverged_at_epoch": diverged,
        "seconds_per_step": run.wall_seconds / max(run.step, 1),
        "optimizer_seconds_per_step": run.optimizer_step_seconds / max(run.step, 1),
    }


def sweep_score(entry: dict[str, Any], epochs: int) -> tuple[float, float]:
    curve = entry["curve"]
    if entry["diverged_at_epoch"] is not None or len(curve) < epochs or not all(map(math.isfinite, curve)):
        return (-math.inf, -math.inf)
    return (curve[-1], sum(curve))


def reach(curve: list[float], seconds: list[float], target: float) -> tuple[int | None, float | None]:
    for epoch, (value, second) in enumerate(zip(curve, seconds), start=1):
        if value >= target:
            return epoch, second
    return None, None


def plot(task: str, metric: str, finals: dict[str, list[dict]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (by_epoch, by_time) = plt.subplots(1, 2, figsize=(12, 4.5), dpi=110)
    for index, (name, runs) in enumerate(finals.items()):
        colour = f"C{index % 10}"
        for seed_index, run in enumerate(runs):
            style = "-" if seed_index == 0 else "--"
            epochs = range(1, len(run["curve"]) + 1)
            label = f"{name} (lr {run['lr']:g})" if seed_index == 0 else None
            by_epoch.plot(epochs, run["curve"], style, color=colour, label=label)
            by_time.plot(run["seconds"], run["curve"], style, color=colour)
    by_epoch.set(xlabel="epoch", ylabel=metric.upper(), title="per epoch (solid: seed 0, dashed: seed 1)")
    by_time.set(xlabel="training seconds", ylabel=metric.upper(), title="per second")
    for ax in (by_epoch, by_time):
        ax.grid(alpha=0.3)
    by_epoch.legend(fontsize=7)
    fig.suptitle(f"league: {task}, each optimizer at its best swept lr", fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def markdown(paths: list[Path]) -> str:
    """README tables (mean over seeds) from league JSON files."""
    out = []
    for path in paths:
        results = json.loads(path.read_text())
        for task, record in results["tasks"].items():
            reported = sorted({e for e in REPORT_EPOCHS if e <= results["epochs"]} | {results["epochs"]})
            when = f"{results['date']}, {results['machine']}"
            out.append(f"**{task}** ({record['metric']}, mean of seeds {results['seeds']}; {when})\n")
            out.append(
                "| optimizer | best lr (sweep) | "
                + " | ".join(f"ep {e}" for e in reported)
                + " | epochs to Adam's final | step ÷ Adam |"
            )
            out.append("|---" * (len(reported) + 4) + "|")
            for name, entry in record["optimizers"].items():
                cells = []
                for e in reported:
                    values = [r["curve"][e - 1] for r in entry["runs"] if len(r["curve"]) >= e]
                    cells.append(f"{sum(values) / len(values):.2f}" if values else "–")
                reached = "/".join(
                    "–" if r["epochs"] is None else str(r["epochs"]) for r in entry["to_reach_adam_final"]
                )
                sweep = ", ".join(f"{lr}: {v:.2f}" if v is not None else f"{lr}: –" for lr, v in entry["sweep"].items())
                out.append(
                    f"| {name} | {entry['best_lr']:g} ({sweep}) | "
                    + " | ".join(cells)
                    + f" | {reached} | {entry['step_time_vs_adam']:.2f} |"
                )
            out.append("")
    return "\n".join(out)


def main() -> None:
    import sys

    if sys.argv[1:2] == ["--markdown"]:
        print(markdown([Path(p) for p in sys.argv[2:]]))
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", default="image-gaussian")
    parser.add_argument("--optimizers", default="adam,esgd,esgd-paper,adahessian,kfac,muon,sophiah")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--sweep-epochs", type=int, default=5)
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--size", type=int, default=256, help="image side (the paper: 256)")
    parser.add_argument("--points", type=int, default=200_000, help="occupancy points per epoch")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json-out", type=Path, required=True)
    args = parser.parse_args()
    configure_entry_point()
    torch.set_num_threads(args.threads)
    names = args.optimizers.split(",")
    unknown = [n for n in names if n not in OPTIMIZERS or n not in SWEEPS]
    if unknown:
        raise SystemExit(f"--optimizers: unknown {', '.join(unknown)}; expected some of {', '.join(SWEEPS)}")
    if "adam" not in names:
        raise SystemExit("--optimizers: the league measures everything against a tuned adam; include it")
    names = ["adam"] + [n for n in names if n != "adam"]
    seeds = [int(s) for s in args.seeds.split(",")]
    console = Console(stderr=True)
    scratch = args.json_out.parent
    scratch.mkdir(parents=True, exist_ok=True)
    partial = args.json_out.with_suffix(".partial.json")
    results: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": f"{cpu_name()}, {args.threads} thread(s)",
        "torch": torch.__version__,
        "epochs": args.epochs,
        "sweep_epochs": args.sweep_epochs,
        "seeds": seeds,
        "tasks": {},
    }
    for task_name in args.tasks.split(","):
        league = make_task(task_name, args.size, args.points)
        initial = {}
        for seed in seeds:
            torch.manual_seed(seed)
            initial[seed] = copy.deepcopy(league.task.build_model().state_dict())
        record: dict[str, Any] = {"data": league.task.describe(), "metric": league.metric, "optimizers": {}}
        results["tasks"][task_name] = record
        finals: dict[str, list[dict]] = {}
        for name in names:
            started = time.perf_counter()
            sweep = {
                lr: train(league, name, lr, args.sweep_epochs, seeds[0], initial[seeds[0]], scratch)
                for lr in SWEEPS[name]
            }
            best_lr = max(sweep, key=lambda lr: sweep_score(sweep[lr], args.sweep_epochs))
            finals[name] = [train(league, name, best_lr, args.epochs, s, initial[s], scratch) for s in seeds]
            record["optimizers"][name] = {
                "sweep": {f"{lr:g}": (e["curve"][-1] if e["curve"] else None) for lr, e in sweep.items()},
                "sweep_diverged": [f"{lr:g}" for lr, e in sweep.items() if e["diverged_at_epoch"] is not None],
                "best_lr": best_lr,
                "runs": finals[name],
            }
            console.print(
                f"[{task_name}] {name}: best lr {best_lr:g} (sweep {record['optimizers'][name]['sweep']}); "
                f"final {[round(r['curve'][-1], 3) if r['curve'] else None for r in finals[name]]} "
                f"({time.perf_counter() - started:.0f} s)"
            )
            partial.write_text(json.dumps(results, indent=1))
        adam_step = sum(r["seconds_per_step"] for r in finals["adam"]) / len(seeds)
        for name, runs in finals.items():
            entry = record["optimizers"][name]
            entry["step_time_vs_adam"] = sum(r["seconds_per_step"] for r in runs) / len(runs) / adam_step
            entry["at_epoch"] = {
                str(e): [r["curve"][e - 1] if len(r["curve"]) >= e else None for r in runs]
                for e in sorted({e for e in REPORT_EPOCHS if e <= args.epochs} | {args.epochs})
            }
            entry["to_reach_adam_final"] = []
            for seed_index, run in enumerate(runs):
                adam_curve = finals["adam"][seed_index]["curve"]
                target = adam_curve[-1] if adam_curve else math.inf
                epochs, seconds = reach(run["curve"], run["seconds"], target)
                entry["to_reach_adam_final"].append({"target": target, "epochs": epochs, "seconds": seconds})
        picture = args.json_out.with_name(f"{args.json_out.stem}_{task_name}.png")
        plot(task_name, league.metric, finals, picture)
        record["plot"] = picture.name
        partial.write_text(json.dumps(results, indent=1))
        show(console, task_name, record, args.epochs)
    args.json_out.write_text(json.dumps(results, indent=1))
    partial.unlink(missing_ok=True)
    console.print(f"wrote {args.json_out}")


def show(console: Console, task_name: str, record: dict[str, Any], epochs: int) -> None:
    reported = [e for e in REPORT_EPOCHS if e <= epochs]
    table = Table(title=f"league: {task_name} ({record['metric']}, mean over seeds)")
    for column in ("optimizer", "lr", *map(str, reported), "epochs to Adam's final", "step ÷ Adam"):
        table.add_column(column, justify="right")
    for name, entry in record["optimizers"].items():
        means = []
        for e in reported:
            values = [v for v in entry["at_epoch"][str(e)] if v is not None]
            means.append(f"{sum(values) / len(values):.2f}" if values else "-")
        reached = [r["epochs"] for r in entry["to_reach_adam_final"]]
        table.add_row(
            name, f"{entry['best_lr']:g}", *means, "/".join("-" if r is None else str(r) for r in reached),
            f"{entry['step_time_vs_adam']:.2f}",
        )  # fmt: skip
    console.print(table)


if __name__ == "__main__":
    main()
