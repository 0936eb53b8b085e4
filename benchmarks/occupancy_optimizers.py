"""Binary occupancy on the Stanford armadillo (the paper's Fig. 6): optimizers side by side.

1M fresh points per epoch, BCE, batch 50k, Gaussian σ = 0.09, 5 × 256 — the paper's settings —
as one `--compare` run of the shared runner (same init, same points). On 2 CPU cores only a few
dozen epochs fit in ~20 minutes; the script reports how many it ran.

    python benchmarks/occupancy_optimizers.py --optimizers adam,esgd-paper --epochs 12 \
        --json-out benchmarks/results/occupancy.json
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import time
from pathlib import Path

import torch

from nf_precond_plugin.optim.factory import default_lr, paper_lr
from nf_precond_plugin.runtime import configure_entry_point
from nf_precond_plugin.tasks.occupancy import OccupancyConfig, OccupancyTask
from nf_precond_plugin.training import RunSettings, run_task

ARMADILLO = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "meshes" / "armadillo.off"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--optimizers", default="adam,esgd-paper")
    parser.add_argument("--activation", default="gaussian")
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--mesh", type=Path, default=ARMADILLO)
    parser.add_argument("--output-dir", type=Path, default=Path("outputs/benchmarks"))
    parser.add_argument("--json-out", type=Path, required=True)
    args = parser.parse_args()
    configure_entry_point()
    torch.set_num_threads(args.threads)
    if not args.mesh.is_file():
        raise SystemExit(f"benchmark mesh not found: {args.mesh} (the armadillo lives in ../shared/data)")
    names = args.optimizers.split(",")
    config = OccupancyConfig(mesh=args.mesh, activation=args.activation, epochs=args.epochs, output_dir=args.output_dir)
    rates = {name: paper_lr(name, args.activation) or default_lr(name, args.activation) for name in names}
    settings = RunSettings(
        names,
        rates,
        epochs=args.epochs,
        batch_size=config.batch_size,
        output_dir=args.output_dir,
        config={"benchmark": "occupancy_optimizers", "optimizers": names, "epochs": args.epochs},
        progress=False,
    )
    started = time.time()
    summary = run_task(OccupancyTask(config), settings)
    curves: dict[str, dict[int, dict[str, float]]] = {}
    with open(Path(summary["run_dir"]) / "metrics.csv") as handle:
        for row in csv.DictReader(handle):
            curves.setdefault(row["optimizer"], {})[int(row["epoch"])] = {
                "iou": float(row["iou"]),
                "iou_last_batch": float(row["iou_last_batch"]),
                "seconds": float(row["wall_seconds"]),
            }
    adam_step = summary["optimizers"].get("adam", {}).get("seconds_per_step")
    results = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": f"{platform.machine()} CPU, {args.threads} thread(s)",
        "torch": torch.__version__,
        "mesh": str(args.mesh),
        "epochs": args.epochs,
        "minutes": (time.time() - started) / 60,
        "labels": summary["data"]["labels"],
        "run_dir": summary["run_dir"],
        "optimizers": {
            name: {
                "lr": rates[name],
                "curve": curves[name],
                "ms_per_step": 1e3 * summary["optimizers"][name]["seconds_per_step"],
                "step_time_vs_adam": summary["optimizers"][name]["seconds_per_step"] / adam_step if adam_step else None,
            }
            for name in names
        },
    }
    args.json_out.parent.mkdir(parents=True, exist_ok=True)
    args.json_out.write_text(json.dumps(results, indent=2))
    for name in names:
        curve = results["optimizers"][name]["curve"]
        print(f"{name:12s} IoU by epoch: " + " ".join(f"{curve[e]['iou']:.3f}" for e in sorted(curve)), flush=True)


if __name__ == "__main__":
    main()
