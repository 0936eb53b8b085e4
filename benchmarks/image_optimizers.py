"""Image fitting on the DIV2K lion (256², batch 512, 5 × 256): optimizers compared side by side.

Each activation is one `--compare` run of the shared runner (same init, same minibatches), so the
ratios are measured in one process on one machine. Prints PSNR at the chosen epochs and per-step
time ratios against Adam, and writes JSON next to the run directories.

    python benchmarks/image_optimizers.py --activations gaussian,sine --optimizers adam,esgd-paper --epochs 200
    python benchmarks/image_optimizers.py --activations gaussian \
        --optimizers adam,sgd,esgd-paper,esgd-max,adahessian,adahessian-j,shampoo,kfac --epochs 50
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from nf_precond_plugin.optim.factory import default_lr, paper_lr
from nf_precond_plugin.runtime import configure_entry_point
from nf_precond_plugin.tasks.image import ImageConfig, ImageTask
from nf_precond_plugin.training import RunSettings, run_task

LION = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "div2k" / "test_data" / "14.png"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--activations", default="gaussian,sine,wavelet,relu-pe")
    parser.add_argument("--optimizers", default="adam,esgd-paper")
    parser.add_argument("--epochs", type=int, default=200)
    parser.add_argument("--report-epochs", default="1,10,50,100,200")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--image", type=Path, default=LION)
    parser.add_argument("--output-dir", type=Path, default=Path("outputs/benchmarks"))
    parser.add_argument("--json-out", type=Path, required=True)
    args = parser.parse_args()
    configure_entry_point()
    torch.set_num_threads(args.threads)
    if not args.image.is_file():
        raise SystemExit(f"benchmark image not found: {args.image} (the DIV2K lion lives in ../shared/data)")
    names = args.optimizers.split(",")
    report = [e for e in map(int, args.report_epochs.split(",")) if e <= args.epochs]
    results = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": f"{platform.machine()} CPU, {args.threads} thread(s)",
        "torch": torch.__version__,
        "image": str(args.image),
        "epochs": args.epochs,
        "runs": {},
    }
    for activation in args.activations.split(","):
        config = ImageConfig(image=args.image, activation=activation, epochs=args.epochs, output_dir=args.output_dir)
        rates = {
            name: paper_lr(name, activation) or default_lr(name, activation) for name in names
        }  # the paper's where it gives one
        settings = RunSettings(
            names,
            rates,
            epochs=args.epochs,
            batch_size=config.batch_size,
            output_dir=args.output_dir,
            config={"benchmark": "image_optimizers", "activation": activation, "optimizers": names},
            progress=False,
        )
        started = time.time()
        summary = run_task(ImageTask(config), settings)
        histories = {}
        import csv

        with open(Path(summary["run_dir"]) / "metrics.csv") as handle:
            for row in csv.DictReader(handle):
                histories.setdefault(row["optimizer"], {})[int(row["epoch"])] = float(row["psnr"])
        adam_step = summary["optimizers"].get("adam", {}).get("seconds_per_step")
        entry = {}
        for name in names:
            result = summary["optimizers"][name]
            entry[name] = {
                "lr": rates[name],
                "psnr_at": {e: histories[name].get(e) for e in report},
                "best_psnr": result["best"],
                "ms_per_step": 1e3 * result["seconds_per_step"],
                "step_time_vs_adam": result["seconds_per_step"] / adam_step if adam_step else None,
            }
        results["runs"][activation] = {
            "optimizers": entry,
            "run_dir": summary["run_dir"],
            "minutes": (time.time() - started) / 60,
        }
        line = "  ".join(f"{n}: " + "/".join(f"{entry[n]['psnr_at'][e]:.2f}" for e in report) for n in names)
        print(f"{activation:9s} PSNR at epochs {report}: {line}", flush=True)
        args.json_out.parent.mkdir(parents=True, exist_ok=True)
        args.json_out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
