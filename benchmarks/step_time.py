"""Step-time and memory ratios of the curvature optimizers, measured side by side in one run.

Model: the paper's image MLP (5 layers × 256, Gaussian σ = 0.05), batch 512, on the embedded image.
Prints (and writes as JSON with --json-out):
  - ESGD amortised over one update_d_every = 100 cycle vs Adam;
  - an HVP step vs a plain step (ESGD);
  - double backward vs forward-over-reverse for gradient + H·v;
  - peak memory of an ESGD run vs an Adam run (each in a fresh subprocess: peak RSS on CPU,
    torch.cuda.max_memory_allocated on CUDA);
  - Adam step time with and without flushing subnormals on the CPU.

    .venv/bin/python benchmarks/step_time.py [--device cuda] [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import time

import torch

from nf_precond_plugin.curvature import functional_hvp, hvp, rademacher_like
from nf_precond_plugin.data.images import load_target_image, pixel_coordinates
from nf_precond_plugin.fields import CoordinateMLP
from nf_precond_plugin.optim import ESGD
from nf_precond_plugin.presets import IMAGE_BATCH, image_field_kwargs, paper_lr


def make_problem(device: str, seed: int = 0):
    torch.manual_seed(seed)
    target, _ = load_target_image(None, 256)
    coords = pixel_coordinates(256, 256).to(device)
    colors = target.reshape(-1, 3).to(device)
    model = CoordinateMLP(**image_field_kwargs("gaussian")).to(device)
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
    create_graph = getattr(optimizer, "should_create_graph", lambda: False)
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        x, y = batch()
        optimizer.zero_grad(set_to_none=True)
        loss = (model(x) - y).square().mean()
        loss.backward(create_graph=create_graph())
        optimizer.step()
    sync(device)
    return time.perf_counter() - start


def amortised_ratio(device: str, repeats: int) -> dict:
    """Mean step time over one full HVP cycle (100 steps after the 50-step warm-up), ESGD vs Adam."""
    model_a, batch_a = make_problem(device)
    model_e, batch_e = make_problem(device)
    adam = torch.optim.Adam(model_a.parameters(), lr=paper_lr("adam", "gaussian"))
    esgd = ESGD(model_e.parameters(), lr=paper_lr("esgd", "gaussian"))
    train_steps(model_a, batch_a, adam, 60, device)
    train_steps(model_e, batch_e, esgd, 60, device)  # past the warm-up: one HVP per 100 steps now
    adam_times, esgd_times = [], []
    for _ in range(repeats):  # interleaved, so both see the same machine state
        adam_times.append(train_steps(model_a, batch_a, adam, 100, device) / 100)
        esgd_times.append(train_steps(model_e, batch_e, esgd, 100, device) / 100)
    adam_ms, esgd_ms = 1e3 * statistics.median(adam_times), 1e3 * statistics.median(esgd_times)
    return {"adam_step_ms": adam_ms, "esgd_amortised_step_ms": esgd_ms, "esgd_amortised_vs_adam": esgd_ms / adam_ms}


def hvp_step_ratio(device: str, repeats: int) -> dict:
    """ESGD during warm-up (an HVP every step) vs ESGD between HVPs (plain steps)."""
    model_h, batch_h = make_problem(device)
    model_p, batch_p = make_problem(device)
    with_hvp = ESGD(model_h.parameters(), d_warmup=10**9)
    plain = ESGD(model_p.parameters(), update_d_every=10**9)
    train_steps(model_h, batch_h, with_hvp, 5, device)
    train_steps(model_p, batch_p, plain, 5, device)
    hvp_times, plain_times = [], []
    for _ in range(repeats):
        hvp_times.append(train_steps(model_h, batch_h, with_hvp, 20, device) / 20)
        plain_times.append(train_steps(model_p, batch_p, plain, 20, device) / 20)
    hvp_ms, plain_ms = 1e3 * statistics.median(hvp_times), 1e3 * statistics.median(plain_times)
    return {"hvp_step_ms": hvp_ms, "plain_step_ms": plain_ms, "hvp_vs_plain_step": hvp_ms / plain_ms}


def hvp_method_ratio(device: str, repeats: int) -> dict:
    """Gradient + H·v: double backward vs forward-over-reverse (torch.func.jvp of torch.func.grad)."""
    model, batch = make_problem(device)
    x, y = batch()
    params = dict(model.named_parameters())
    names, tensors = list(params), list(params.values())
    vectors = rademacher_like(tensors)

    def loss_fn(p):
        return (torch.func.functional_call(model, p, (x,)) - y).square().mean()

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
    return {"double_backward_ms": r_ms, "forward_over_reverse_ms": f_ms, "double_backward_vs_forward_over_reverse": r_ms / f_ms}


def flush_denormal_ratio(repeats: int) -> dict:
    """Adam steps on the CPU with and without flushing subnormals."""
    timings = {}
    for flush in (False, True):
        torch.set_flush_denormal(flush)
        model, batch = make_problem("cpu")
        adam = torch.optim.Adam(model.parameters(), lr=paper_lr("adam", "gaussian"))
        train_steps(model, batch, adam, 5, "cpu")
        timings[flush] = 1e3 * statistics.median(train_steps(model, batch, adam, 10, "cpu") / 10 for _ in range(repeats))
    torch.set_flush_denormal(True)
    return {"adam_step_ms_subnormals": timings[False], "adam_step_ms_flushed": timings[True], "subnormal_slowdown": timings[False] / timings[True]}


def peak_memory_child(optimizer_name: str, device: str) -> None:
    """Run in a fresh process: 150 training steps (covering HVP steps), print the peak memory in MiB."""
    torch.set_flush_denormal(True)
    model, batch = make_problem(device)
    if optimizer_name == "adam":
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    else:
        optimizer = ESGD(model.parameters())
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    train_steps(model, batch, optimizer, 150, device)
    if device.startswith("cuda"):
        print(torch.cuda.max_memory_allocated() / 2**20)
    else:
        print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def peak_memory_ratio(device: str) -> dict:
    peaks = {}
    for name in ("adam", "esgd"):
        out = subprocess.run(
            [sys.executable, __file__, "--peak-memory-child", name, "--device", device],
            check=True, capture_output=True, text=True,
        )
        peaks[name] = float(out.stdout.strip().splitlines()[-1])
    kind = "torch.cuda.max_memory_allocated" if device.startswith("cuda") else "peak RSS of the whole process"
    return {"adam_peak_mib": peaks["adam"], "esgd_peak_mib": peaks["esgd"], "esgd_vs_adam_peak_memory": peaks["esgd"] / peaks["adam"], "memory_measure": kind}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--json-out", default=None)
    parser.add_argument("--peak-memory-child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.peak_memory_child:
        peak_memory_child(args.peak_memory_child, args.device)
        return
    torch.set_flush_denormal(True)
    device_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"{platform.processor() or platform.machine()} CPU, {args.threads} threads"
    results = {"device": device_name, "date": time.strftime("%Y-%m-%d"), "torch": torch.__version__}
    results.update(amortised_ratio(args.device, args.repeats))
    results.update(hvp_step_ratio(args.device, args.repeats))
    results.update(hvp_method_ratio(args.device, args.repeats))
    results.update(peak_memory_ratio(args.device))
    if args.device == "cpu":
        results.update(flush_denormal_ratio(args.repeats))
    for key, value in results.items():
        print(f"{key:42s} {value:.3f}" if isinstance(value, float) else f"{key:42s} {value}")
    if args.json_out:
        with open(args.json_out, "w") as handle:
            json.dump(results, handle, indent=2)


if __name__ == "__main__":
    main()
