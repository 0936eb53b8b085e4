"""Fern at CPU scale: methods against gaussian-adam, same seed, same data, one process (the paper's Table 1
analogue).

Each method trains through nerfstudio's own trainer (the plugin's CurvatureTrainer) for the same
number of iterations from the same initial weights and ray batches; their steps alternate, so both
see the same machine state (timings here drift by tens of percent over minutes). Train PSNR is the PSNR of the
mean batch MSE over a sliding window. Reported: train PSNR vs iteration and vs time (PNG + JSON),
the iterations and seconds ESGD needs to reach Adam's final train PSNR (goal: ≤ 0.6× Adam's
iterations), and test PSNR/SSIM(/LPIPS if its weights are on disk) on the held-out views.

    python benchmarks/nerf_fern.py --iterations 3000 --json-out benchmarks/results/nerf_fern_cpu.json
    python benchmarks/nerf_fern.py --scale paper --device cuda --iterations 5000 --json-out ...   # GPU
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import platform
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nf_precond_plugin.runtime import configure_entry_point

FERN = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "nerf_llff_data" / "fern"


def build_trainer(
    method: str, scene: Path, output: Path, device: str, iterations: int, overrides: dict[str, float], seed: int
):
    from nf_precond_plugin.nerf import methods

    spec = getattr(methods, method.replace("-", "_"))
    config = copy.deepcopy(spec.config)
    config.data = scene
    config.pipeline.datamanager.data = scene
    config.output_dir = output
    config.vis = "tensorboard"
    config.machine.device_type = device
    config.max_num_iterations = iterations
    config.steps_per_save = 10**9
    for key, value in overrides.items():  # e.g. lr=1e-3, clip=3e-3: optimizer config fields
        setattr(config.optimizers["fields"]["optimizer"], key, value)
    config.optimizers["fields"]["scheduler"].max_steps = None  # decay over this run's iterations
    config.set_timestamp()
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    trainer = config.setup(local_rank=0, world_size=1)
    trainer.setup()
    return trainer


def windowed_psnr(mse: list[float], window: int) -> list[float]:
    cumulative = np.cumsum([0.0, *mse])
    out = []
    for i in range(1, len(mse) + 1):
        lo = max(0, i - window)
        out.append(-10.0 * math.log10((cumulative[i] - cumulative[lo]) / (i - lo)))
    return out


def run_methods(args, methods_and_lrs: list[tuple]) -> list[dict[str, Any]]:
    """Train the methods step by step in turn, each with its own torch RNG stream.

    Interleaving makes the time comparison fair (this machine's speed drifts by tens of percent
    over minutes); swapping RNG states keeps each method's rays, jitter and probes exactly those of
    a run on its own.
    """
    trainers, rng_states = [], []
    for method, overrides in methods_and_lrs:
        trainers.append(
            build_trainer(method, args.scene, args.output_dir, args.device, args.iterations, overrides, args.seed)
        )
        rng_states.append(torch.get_rng_state())
    synchronize = torch.cuda.synchronize if args.device == "cuda" else (lambda: None)
    mse: list[list[float]] = [[] for _ in trainers]
    seconds: list[list[float]] = [[] for _ in trainers]
    elapsed = [0.0 for _ in trainers]
    from rich.progress import Progress

    with Progress(transient=True) as progress:
        task = progress.add_task(" vs ".join(label(*m) for m in methods_and_lrs), total=args.iterations)
        for step in range(args.iterations):
            for index, trainer in enumerate(trainers):
                torch.set_rng_state(rng_states[index])
                trainer.pipeline.train()
                synchronize()
                start = time.perf_counter()
                _, loss_dict, _ = trainer.train_iteration(step)
                synchronize()
                elapsed[index] += time.perf_counter() - start
                rng_states[index] = torch.get_rng_state()
                mse[index].append(float(loss_dict["rgb_loss"].detach()))
                seconds[index].append(elapsed[index])
            progress.advance(task)
    runs = []
    for index, trainer in enumerate(trainers):
        metrics = trainer.pipeline.get_average_eval_image_metrics()
        runs.append(
            {
                "method": label(*methods_and_lrs[index]),
                "lr": trainer.config.optimizers["fields"]["optimizer"].lr,
                "train_mse": mse[index],
                "seconds": seconds[index],
                "test": {k: metrics.get(k) for k in ("psnr", "ssim", "lpips")},
            }
        )
    return runs


def first_reaching(curve: list[float], target: float) -> int | None:
    for index, value in enumerate(curve):
        if value >= target:
            return index + 1
    return None


def label(method: str, overrides: dict[str, float]) -> str:
    return method + "".join(f" {k}={v:g}" for k, v in overrides.items())


def parse_method(text: str) -> tuple[str, dict[str, float]]:
    """``gaussian-esgd-cpu:clip=1e-3,lr=0.5`` → the method and optimizer-config overrides."""
    method, _, rest = text.partition(":")
    overrides = {}
    for item in filter(None, rest.split(";")):
        key, _, value = item.partition("=")
        overrides[key] = float(value) if key != "lr_decay_steps" else int(value)
    return method, overrides


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scene", type=Path, default=FERN)
    parser.add_argument("--scale", choices=["cpu", "paper"], default="cpu")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--iterations", type=int, default=3000)
    parser.add_argument("--window", type=int, default=100, help="iterations in the train-PSNR window")
    parser.add_argument(
        "--methods",
        default=None,
        help="space-separated METHOD[:key=value;...]; the first is the reference "
        "(default: gaussian-adam, gaussian-esgd, gaussian-esgd-paper at --scale)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output-dir", type=Path, default=Path("outputs/benchmarks/nerf"))
    parser.add_argument("--json-out", type=Path, required=True)
    args = parser.parse_args()
    configure_entry_point()
    torch.set_num_threads(args.threads)
    if not (args.scene / "poses_bounds.npy").is_file():
        raise SystemExit(f"nerf_fern.py: error: --scene {args.scene}: not an LLFF scene (poses_bounds.npy missing)")

    suffix = "-cpu" if args.scale == "cpu" else ""
    default = f"gaussian-adam{suffix} gaussian-esgd{suffix} gaussian-esgd-paper{suffix}"
    runs = run_methods(args, [parse_method(m) for m in (args.methods or default).split()])
    for run in runs:
        run["train_psnr"] = windowed_psnr(run["train_mse"], args.window)
    reference = runs[0]
    target = reference["train_psnr"][-1]
    compared = {}
    for run in runs[1:]:
        reach = first_reaching(run["train_psnr"], target)
        milestones = {}
        for fraction in (0.5, 0.75, 0.9, 1.0):
            # PSNR levels on the reference's way from its first to its final windowed value.
            level = reference["train_psnr"][0] + fraction * (target - reference["train_psnr"][0])
            mine, theirs = first_reaching(run["train_psnr"], level), first_reaching(reference["train_psnr"], level)
            milestones[f"{level:.2f}"] = {
                "reference_iterations": theirs,
                "iterations": mine,
                "reference_seconds": None if theirs is None else reference["seconds"][theirs - 1],
                "seconds": None if mine is None else run["seconds"][mine - 1],
            }
        compared[run["method"]] = {
            "final_train_psnr": run["train_psnr"][-1],
            "iterations_to_reference_final": reach,
            "iteration_ratio": None if reach is None else reach / args.iterations,
            "seconds_to_reference_final": None if reach is None else run["seconds"][reach - 1],
            "seconds_ratio": None if reach is None else run["seconds"][reach - 1] / reference["seconds"][-1],
            "seconds": run["seconds"][-1],
            "milestones": milestones,
        }
    summary = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, {args.device}"
        + (f" ({torch.cuda.get_device_name()})" if args.device == "cuda" else ""),
        "scene": str(args.scene),
        "scale": args.scale,
        "iterations": args.iterations,
        "reference": reference["method"],
        "reference_final_train_psnr": target,
        "reference_seconds": reference["seconds"][-1],
        "compared": compared,
        "test": {run["method"]: run["test"] for run in runs},
        "lr": {run["method"]: run["lr"] for run in runs},
    }
    args.json_out.parent.mkdir(parents=True, exist_ok=True)
    args.json_out.write_text(json.dumps({"summary": summary, "runs": runs}, indent=1))
    plot(runs, args.json_out.with_suffix(".png"), target)
    print(json.dumps(summary, indent=2))


def plot(runs: list[dict[str, Any]], path: Path, target: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (by_step, by_time) = plt.subplots(1, 2, figsize=(11, 4))
    for run in runs:
        by_step.plot(np.arange(1, len(run["train_psnr"]) + 1), run["train_psnr"], label=run["method"])
        by_time.plot(run["seconds"], run["train_psnr"], label=run["method"])
    for axis, label in ((by_step, "iteration"), (by_time, "optimisation time (s)")):
        axis.axhline(target, color="grey", linestyle=":", linewidth=1)
        axis.set_xlabel(label)
        axis.set_ylabel("train PSNR (dB, windowed)")
        axis.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
