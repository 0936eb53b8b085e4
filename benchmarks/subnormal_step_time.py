"""Step time of a trained Gaussian image field with subnormal floats flushed to zero and not.

A library user's own loop: the 5 × 256 Gaussian field (σ = 0.1) of ``CoordinateMLP``, batch 512
of pixel coordinates in [−1, 1]² of the embedded image (scikit-image's astronaut, resized), MSE,
one thread, no process flags. For each activation implementation × optimizer (Adam 1e-3 and the
project's ESGD, lr 1) two fields are trained from the same seed for ``--warmup-steps`` steps
with flushing off (a trained field is where the subnormals appear), one is then timed with
``torch.set_flush_denormal(False)`` and the other with ``True``, one step of each in turn in one
process, so every variant sees the same machine state. Prints median and mean ms per step and
the ratio off/on; the mean includes ESGD's H·v steps (one every 20 after its warm-up).

Implementations: ``current`` (the project's Gaussian) and ``exp-clamp-87`` (the previous one,
copied here: exp(−min(z²/2σ², 87)), no cut).

One thread only: torch's worker threads inherit the floating-point mode of the thread that
creates them, so with several threads the flag could not be switched between steps.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/subnormal_step_time.py \\
        --json-out benchmarks/results/subnormal_step_time_cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

from nf_precond_plugin.data.images import EMBEDDED_IMAGE_NAME, load_target_image, pixel_coordinates
from nf_precond_plugin.fields import CoordinateMLP
from nf_precond_plugin.optim.factory import build_optimizer
from nf_precond_plugin.training.step import training_step

SIGMA = 0.1
BATCH = 512
LEARNING_RATES = {"adam": 1e-3, "esgd": 1.0}
IMPLEMENTATIONS = ("current", "exp-clamp-87")


class _ClampedGaussianFunction(torch.autograd.Function):
    """The previous Gaussian: exp(−z²/2σ²) with the exponent clamped at 87, nothing cut."""

    @staticmethod
    def forward(z: torch.Tensor, sigma: float) -> torch.Tensor:
        return torch.exp(-z.square().mul_(0.5 / sigma**2).clamp(max=87.0))

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        z, sigma = inputs
        ctx.save_for_backward(z, output)
        ctx.sigma = sigma

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        z, phi = ctx.saved_tensors
        return grad_output * phi * z * (-1.0 / ctx.sigma**2), None


class ClampedGaussian87(nn.Module):
    def __init__(self, sigma: float) -> None:
        super().__init__()
        self.sigma = sigma

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return _ClampedGaussianFunction.apply(z, self.sigma)


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def subnormal_count(x: torch.Tensor) -> int:
    return int(((x != 0) & (x.abs() < torch.finfo(x.dtype).tiny)).sum())


def make_run(impl: str, optimizer: str, coords: torch.Tensor, colors: torch.Tensor, seed: int):
    """A fresh field, its optimizer, and a function taking one training step (returns the loss)."""
    torch.manual_seed(seed)
    model = CoordinateMLP(2, 3, 256, 5, "gaussian", sigma=SIGMA)
    if impl == "exp-clamp-87":
        model.activation = ClampedGaussian87(SIGMA)
    opt = build_optimizer(optimizer, model, LEARNING_RATES[optimizer])
    generator = torch.Generator().manual_seed(seed)

    def step() -> float:
        index = torch.randint(0, coords.shape[0], (BATCH,), generator=generator)
        x, y = coords[index], colors[index]
        result = training_step([opt], lambda: ((model(x) - y).square().mean(), None), check_finite=False)
        return float(result.loss)

    return model, step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=100, help="timed steps per variant")
    parser.add_argument("--warmup-steps", type=int, default=200, help="training steps before timing")
    parser.add_argument("--size", type=int, default=64, help="side of the target image")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--optimizers", default="adam,esgd", help="comma-separated: adam, esgd")
    parser.add_argument("--activation-impl", choices=[*IMPLEMENTATIONS, "both"], default="both")
    parser.add_argument("--json-out", default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.set_flush_denormal(False)
    impls = IMPLEMENTATIONS if args.activation_impl == "both" else (args.activation_impl,)
    optimizers = args.optimizers.split(",")
    unknown = [name for name in optimizers if name not in LEARNING_RATES]
    if unknown:
        parser.error(f"--optimizers: unknown {unknown}; expected some of {', '.join(LEARNING_RATES)}")

    target, _ = load_target_image(None, args.size)
    coords, colors = pixel_coordinates(args.size, args.size), target.reshape(-1, 3)
    variants = [(impl, opt, flush) for impl in impls for opt in optimizers for flush in (False, True)]
    runs: dict[tuple, tuple[nn.Module, Callable[[], float]]] = {}
    warm_loss = {}
    for key in variants:
        impl, opt, _ = key
        model, step = make_run(impl, opt, coords, colors, args.seed)
        start = time.perf_counter()
        for _ in range(args.warmup_steps):  # flushing off, as in a library user's loop
            loss = step()
        warm_loss[key] = loss
        runs[key] = (model, step)
        print(f"warm-up {impl:12s} {opt:4s} flush={'on' if key[2] else 'off'}: loss {loss:.6f}, "
              f"{time.perf_counter() - start:.1f} s", flush=True)  # fmt: skip

    times: dict[tuple, list[float]] = {key: [] for key in variants}
    for _ in range(args.steps):
        for key in variants:
            torch.set_flush_denormal(key[2])
            start = time.perf_counter()
            runs[key][1]()
            times[key].append(1e3 * (time.perf_counter() - start))
    torch.set_flush_denormal(False)

    rows = []
    for key in variants:
        impl, opt, flush = key
        model = runs[key][0]
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        rows.append(
            {
                "activation_impl": impl,
                "optimizer": opt,
                "flush_denormal": flush,
                "median_ms": statistics.median(times[key]),
                "mean_ms": statistics.mean(times[key]),
                "loss_after_warmup": warm_loss[key],
                "subnormal_grad_entries_last_step": sum(subnormal_count(g) for g in grads),
            }
        )
    ratios = []
    for impl in impls:
        for opt in optimizers:
            off, on = (next(r for r in rows if r["activation_impl"] == impl and r["optimizer"] == opt
                            and r["flush_denormal"] == flush) for flush in (False, True))  # fmt: skip
            ratios.append(
                {
                    "activation_impl": impl,
                    "optimizer": opt,
                    "off_over_on_median": off["median_ms"] / on["median_ms"],
                    "off_over_on_mean": off["mean_ms"] / on["mean_ms"],
                }
            )

    print(f"\n{'impl':12s} {'optimizer':9s} {'flush':5s} {'median ms':>9s} {'mean ms':>8s} {'subn. grads':>11s}")
    for row in rows:
        print(
            f"{row['activation_impl']:12s} {row['optimizer']:9s} {'on' if row['flush_denormal'] else 'off':5s} "
            f"{row['median_ms']:9.1f} {row['mean_ms']:8.1f} {row['subnormal_grad_entries_last_step']:11d}"
        )
    print(f"\n{'impl':12s} {'optimizer':9s} {'off/on (median)':>15s} {'off/on (mean)':>13s}")
    for ratio in ratios:
        print(
            f"{ratio['activation_impl']:12s} {ratio['optimizer']:9s} "
            f"{ratio['off_over_on_median']:15.2f} {ratio['off_over_on_mean']:13.2f}"
        )

    if args.json_out:
        results = {
            "date": time.strftime("%Y-%m-%d %H:%M"),
            "cpu": cpu_model(),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "field": f"CoordinateMLP(2, 3, 256, 5, 'gaussian', sigma={SIGMA})",
            "target": f"{EMBEDDED_IMAGE_NAME}, {args.size}x{args.size}",
            "batch": BATCH,
            "learning_rates": LEARNING_RATES,
            "warmup_steps": args.warmup_steps,
            "timed_steps": args.steps,
            "seed": args.seed,
            "rows": rows,
            "ratios": ratios,
        }
        os.makedirs(os.path.dirname(os.path.abspath(args.json_out)), exist_ok=True)
        with open(args.json_out, "w") as handle:
            json.dump(results, handle, indent=2)
            handle.write("\n")


if __name__ == "__main__":
    main()
