"""Step-time and memory ratios of the curvature optimizers, measured side by side in one run.

Model: the paper's image MLP (5 layers × 256, Gaussian σ = 0.05), batch 512, on the embedded image.
Prints (and writes as JSON with --json-out):
  - ESGD amortised over one update_d_every = 100 cycle vs Adam; the project's rule (an H·v every
    20 steps), bare and as the standalone runs use it by default (inside schedule-free averaging);
  - an HVP step vs a plain step (ESGD);
  - double backward vs forward-over-reverse for gradient + H·v (and how closely their H·v agree);
  - peak memory of an ESGD run vs an Adam run (each in a fresh subprocess: peak RSS on CPU,
    torch.cuda.max_memory_allocated on CUDA).
The step time with and without flushing subnormals is benchmarks/subnormal_step_time.py's.

    .venv/bin/python benchmarks/step_time.py [--device cuda] [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

import torch

from nf_precond_plugin.curvature import functional_hvp, hvp, hvp_samples
from nf_precond_plugin.data.images import load_target_image, pixel_coordinates
from nf_precond_plugin.optim import PaperESGD
from nf_precond_plugin.optim.factory import build_optimizer, default_lr, optimizer_spec, without_momentum
from nf_precond_plugin.optim.schedule_free import ScheduleFree
from nf_precond_plugin.presets import IMAGE_BATCH
from nf_precond_plugin.tasks.common import FitConfig, build_field
from nf_precond_plugin.training.step import training_step


def make_problem(device: str, seed: int = 0):
    torch.manual_seed(seed)
    target, _ = load_target_image(None, 256)
    coords = pixel_coordinates(256, 256).to(device)
    colors = target.reshape(-1, 3).to(device)
    model = build_field(FitConfig(activation="gaussian"), 2, 3).to(device)
    generator = torch.Generator(device="cpu").manual_seed(seed)

    def batch():
        index = torch.randint(0, coords.shape[0], (IMAGE_BATCH,), generator=generator).to(device)
        return coords[index], colors[index]

    return model, batch


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def train_steps(model, batch, optimizer, steps: int, device: str) -> float:
    """Seconds for ``steps`` full training steps (forward, backward, optimizer)."""
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        x, y = batch()
        training_step([optimizer], lambda x=x, y=y: ((model(x) - y).square().mean(), None), check_finite=False)
    sync(device)
    return time.perf_counter() - start


def interleaved_ms(runs: dict, steps: int, device: str) -> dict[str, float]:
    """Mean ms per step of each (model, batch, optimizer) run, alternating one step of each in
    turn so that every run sees the same machine state (the noise here is ±10% over seconds)."""
    totals = dict.fromkeys(runs, 0.0)
    for _ in range(steps):
        for name, (model, batch, optimizer) in runs.items():
            totals[name] += train_steps(model, batch, optimizer, 1, device)
    return {name: 1e3 * total / steps for name, total in totals.items()}


def amortised_ratio(
    device: str, cycles: int, lr_scale: float, optimizer: str = "esgd-paper", schedule_free: bool = False
) -> dict:
    """Mean step time over whole HVP cycles (100 steps each, after the 50-step warm-up), ESGD vs Adam.

    With lr_scale = 0 both models stay at the same initialisation, so the ratio isolates what the
    optimizer adds; with 1 each follows its own trajectory, whose forward/backward cost can differ.
    ``schedule_free``: ESGD inside schedule-free averaging with β₁ = 0, as the runner builds it.
    """
    model_a, batch_a = make_problem(device)
    model_e, batch_e = make_problem(device)
    adam = torch.optim.Adam(model_a.parameters(), lr=lr_scale * default_lr("adam", "gaussian"))
    lr = max(lr_scale, 1e-30) * default_lr(optimizer, "gaussian")
    if schedule_free:
        esgd = ScheduleFree(build_optimizer(optimizer, model_e, lr, **without_momentum(optimizer)))
    else:
        esgd = build_optimizer(optimizer, model_e, lr)
    train_steps(model_a, batch_a, adam, 50, device)
    train_steps(model_e, batch_e, esgd, 50, device)  # past the warm-up: one H·v per update_d_every steps from here
    ms = interleaved_ms({"adam": (model_a, batch_a, adam), "esgd": (model_e, batch_e, esgd)}, 100 * cycles, device)
    tag = "same_state" if lr_scale == 0 else "training"
    return {
        f"adam_step_ms_{tag}": ms["adam"],
        f"esgd_amortised_step_ms_{tag}": ms["esgd"],
        f"esgd_amortised_vs_adam_{tag}": ms["esgd"] / ms["adam"],
    }


def hvp_step_ratio(device: str, steps: int) -> dict:
    """An ESGD step with an H·v (warm-up never ends) vs one without (only step 0 had one)."""
    model_h, batch_h = make_problem(device)
    model_p, batch_p = make_problem(device)
    with_hvp = PaperESGD(model_h.parameters(), d_warmup=10**9)
    plain = PaperESGD(model_p.parameters(), update_d_every=10**9, d_warmup=1)
    train_steps(model_h, batch_h, with_hvp, 5, device)
    train_steps(model_p, batch_p, plain, 5, device)
    ms = interleaved_ms({"hvp": (model_h, batch_h, with_hvp), "plain": (model_p, batch_p, plain)}, steps, device)
    return {"hvp_step_ms": ms["hvp"], "plain_step_ms": ms["plain"], "hvp_vs_plain_step": ms["hvp"] / ms["plain"]}


def hvp_method_ratio(device: str, repeats: int) -> dict:
    """Gradient + H·v: double backward vs forward-over-reverse (torch.func.jvp of torch.func.grad).

    Both are timed on one probe, drawn with its reference H·v by ``hvp_samples``; each method is
    then checked against that reference. The timed calls take ``hvp`` and ``functional_hvp``
    directly: ``hvp_samples`` draws a new probe at each call, which would time the probe too.
    """
    model, batch = make_problem(device)
    x, y = batch()
    params = dict(model.named_parameters())
    names, tensors = list(params), list(params.values())

    def loss_fn(p):
        return (torch.func.functional_call(model, p, (x,)) - y).square().mean()

    sample = hvp_samples(lambda: loss_fn(params), tensors)  # the field uses every parameter: aligned with names
    vectors, reference = sample.probes[0], sample.products[0]

    def double_backward():
        grads = torch.autograd.grad(loss_fn(params), tensors, create_graph=True)
        return hvp(grads, tensors, vectors)

    def forward_over_reverse():
        return functional_hvp(loss_fn, params, dict(zip(names, vectors)))[1]

    def timed(fn, n=10):
        fn()
        sync(device)
        start = time.perf_counter()
        for _ in range(n):
            fn()
        sync(device)
        return (time.perf_counter() - start) / n

    reverse, forward = [], []
    for _ in range(repeats):
        reverse.append(timed(double_backward))
        forward.append(timed(forward_over_reverse))
    r_ms, f_ms = 1e3 * statistics.median(reverse), 1e3 * statistics.median(forward)
    scale = max(float(h.abs().max()) for h in reference)
    forward_hv = forward_over_reverse()
    differences = [(h - expected).abs().max() for h, expected in zip(double_backward(), reference)]
    differences += [(forward_hv[name] - expected).abs().max() for name, expected in zip(names, reference)]
    return {
        "double_backward_ms": r_ms,
        "forward_over_reverse_ms": f_ms,
        "double_backward_vs_forward_over_reverse": r_ms / f_ms,
        "hvp_methods_max_rel_diff": max(float(d) for d in differences) / scale,
    }


def peak_memory_child(optimizer_name: str, device: str) -> None:
    """Run in a fresh process: 150 training steps (covering HVP steps), print the peak working memory in MiB."""
    model, batch = make_problem(device)
    if optimizer_name == "adam":
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    else:
        optimizer = PaperESGD(model.parameters())
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        baseline = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    else:
        baseline = _current_rss()
    train_steps(model, batch, optimizer, 150, device)
    if device.startswith("cuda"):
        print((torch.cuda.max_memory_allocated() - baseline) / 2**20)
    else:
        print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - baseline) / 2**20)


def _current_rss() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * resource.getpagesize()


def peak_memory_ratio(device: str) -> dict:
    peaks = {}
    for name in ("adam", "esgd"):
        out = subprocess.run(
            [sys.executable, __file__, "--peak-memory-child", name, "--device", device],
            check=True,
            capture_output=True,
            text=True,
        )
        peaks[name] = float(out.stdout.strip().splitlines()[-1])
    kind = (
        "peak torch.cuda allocation above the state after one step"
        if device.startswith("cuda")
        else "peak RSS during 150 steps above the RSS before the first (optimizer state + autograd graphs)"
    )
    return {
        "adam_peak_mib": peaks["adam"],
        "esgd_peak_mib": peaks["esgd"],
        "esgd_vs_adam_peak_memory": peaks["esgd"] / peaks["adam"],
        "memory_measure": kind,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=5, help="repeats of the H·v-method timings")
    parser.add_argument("--cycles", type=int, default=4, help="100-step HVP cycles per amortised measurement")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--json-out", default=None)
    parser.add_argument("--peak-memory-child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.peak_memory_child:
        peak_memory_child(args.peak_memory_child, args.device)
        return
    device_name = (
        torch.cuda.get_device_name()
        if args.device.startswith("cuda")
        else f"{platform.processor() or platform.machine()} CPU, {args.threads} threads"
    )
    results = {"device": device_name, "date": time.strftime("%Y-%m-%d"), "torch": torch.__version__}
    results.update(amortised_ratio(args.device, args.cycles, lr_scale=0.0))
    results.update(amortised_ratio(args.device, args.cycles, lr_scale=1.0))
    # the clipped rule: an H·v every 20 steps after the warm-up, so 5 per 100-step cycle
    clipped = amortised_ratio(args.device, args.cycles, lr_scale=1.0, optimizer="esgd")
    results.update({key.replace("esgd_", "clipped_esgd_"): value for key, value in clipped.items() if "esgd" in key})
    # the project's default run of it: schedule-free averaging around the clipped rule, β₁ = 0
    schedule_free = optimizer_spec("esgd").schedule == "schedule-free"
    default = amortised_ratio(args.device, args.cycles, lr_scale=1.0, optimizer="esgd", schedule_free=schedule_free)
    results.update({key.replace("esgd_", "default_esgd_"): value for key, value in default.items() if "esgd" in key})
    results.update(hvp_step_ratio(args.device, 50 * args.cycles))
    results.update(hvp_method_ratio(args.device, args.repeats))
    results.update(peak_memory_ratio(args.device))
    for key, value in results.items():
        print(f"{key:42s} {value:.3f}" if isinstance(value, float) else f"{key:42s} {value}")
    if args.json_out:
        os.makedirs(os.path.dirname(os.path.abspath(args.json_out)), exist_ok=True)
        with open(args.json_out, "w") as handle:
            json.dump(results, handle, indent=2)


if __name__ == "__main__":
    main()
