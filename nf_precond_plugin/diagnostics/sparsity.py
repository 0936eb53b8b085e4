"""Sparsity of Hessian-vector products during training (the paper's Fig. 4, Theorems 4.2/4.3).

For a Rademacher probe v and h = H v, the sparsity of a layer is the fraction of its entries with
    |h_i| ≤ τ · max_j |h_j|        (max over all parameters; τ = 0, ``ZERO_TOLERANCE``, counts exact zeros only).
Smooth activations (Gaussian, sine, wavelet) give dense h; ReLU(+PE) gives sparse h, because
ReLU'' = 0 almost everywhere and dead units contribute nothing.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import torch

from nf_precond_plugin.curvature import ZERO_TOLERANCE, hvp_samples
from nf_precond_plugin.data.images import load_target_image, pixel_coordinates
from nf_precond_plugin.errors import UserInputError
from nf_precond_plugin.fields import ActivationName
from nf_precond_plugin.optim.factory import build_optimizer, paper_lr
from nf_precond_plugin.presets import IMAGE_BATCH, IMAGE_SIZE
from nf_precond_plugin.rundir import new_run_dir
from nf_precond_plugin.runtime import enable_fast_cpu_math
from nf_precond_plugin.tasks.common import FitConfig, build_field
from nf_precond_plugin.training.step import training_step


@dataclass
class SparsityConfig:
    """Train the image MLP with ESGD and measure how sparse its Hessian-vector products are."""

    activation: ActivationName = "gaussian"
    """Activation of the 5 × 256 coordinate MLP."""
    optimizer: Literal["esgd-paper", "adam"] = "esgd-paper"
    """Optimizer that trains the field between measurements (the paper's Fig. 4 uses ESGD), at the paper's lr."""
    steps: int = 300
    """Training steps (minibatches of --batch-size pixels)."""
    measure_every: int = 25
    """Measure the HVP sparsity every this many steps (and at step 0)."""
    tolerance: float = ZERO_TOLERANCE
    """Relative tolerance τ: |Hv_i| ≤ τ·max|Hv| counts as zero; 0 counts exact zeros."""
    batch_size: int = IMAGE_BATCH
    """Pixels per minibatch (the paper: 512)."""
    size: int = IMAGE_SIZE
    """Side of the square target image, in pixels."""
    image: Path | None = None
    """Target image; the default is scikit-image's astronaut, shipped with the package (no download)."""
    seed: int = 0
    """Seed of the initialisation, minibatches and probes."""
    output_dir: Path = Path("outputs")
    """Each run writes into a new directory under this one."""
    json: bool = False
    """Print one JSON object on stdout instead of a table."""


def layer_sparsity(
    model: torch.nn.Module, products: list[torch.Tensor], tolerance: float, names: list[str] | None = None
) -> dict[str, float]:
    """Fraction of (near-)zero entries of H v per linear layer (weight and bias together) and 'overall'.

    ``products[i]`` belongs to the parameter named ``names[i]`` (default: all of ``model``'s, in order).
    """
    if names is None:
        names = [name for name, _ in model.named_parameters()]
    threshold = tolerance * max(float(h.abs().max()) for h in products)
    zeros: dict[str, int] = {}
    sizes: dict[str, int] = {}
    for name, h in zip(names, products):
        layer = name.rsplit(".", 1)[0]
        zeros[layer] = zeros.get(layer, 0) + int((h.abs() <= threshold).sum())
        sizes[layer] = sizes.get(layer, 0) + h.numel()
    result = {layer: zeros[layer] / sizes[layer] for layer in zeros}
    result["overall"] = sum(zeros.values()) / sum(sizes.values())
    return result


def measure_sparsity(
    model: torch.nn.Module, loss: torch.Tensor, tolerance: float, generator: torch.Generator | None = None
) -> dict[str, float]:
    """The sparsity of H v at ``loss`` for one Rademacher probe, over the parameters the loss uses."""
    named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    # keep the graph: the training step that follows backpropagates through the same loss
    samples = hvp_samples(lambda: loss, [p for _, p in named], generator=generator, retain_graph=True)
    names = [named[i][0] for i in samples.indices]
    return layer_sparsity(model, samples.products[0], tolerance, names)


def run_sparsity(config: SparsityConfig, progress: bool = True) -> dict:
    from rich.progress import Progress

    from nf_precond_plugin.diagnostics.plots import bar_plot

    if config.steps < 1 or config.measure_every < 1:
        raise UserInputError("--steps and --measure-every must be >= 1")
    if not 0.0 <= config.tolerance < 1.0:
        raise UserInputError(f"--tolerance: expected 0 <= tolerance < 1, got {config.tolerance}")
    enable_fast_cpu_math()
    target, source = load_target_image(config.image, config.size)
    coords, colors = pixel_coordinates(*target.shape[:2]), target.reshape(-1, 3)

    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    # the standalone image task's field (the paper's 5 × 256, σ = 0.05)
    model = build_field(FitConfig(activation=config.activation), 2, 3)
    optimizer = build_optimizer(config.optimizer, model, paper_lr(config.optimizer, config.activation))
    run_dir = new_run_dir(config.output_dir, f"sparsity-{config.activation}")

    history: list[dict] = []
    with Progress(disable=not progress, transient=True) as bar:
        task = bar.add_task(f"sparsity ({config.activation})", total=config.steps)
        for step in range(config.steps + 1):
            batch = torch.randint(0, coords.shape[0], (config.batch_size,), generator=generator)

            def loss_and_measure(step: int = step, batch: torch.Tensor = batch) -> tuple[torch.Tensor, None]:
                loss = (model(coords[batch]) - colors[batch]).square().mean()
                if step % config.measure_every == 0 or step == config.steps:
                    measured = measure_sparsity(model, loss, config.tolerance, generator)
                    history.append({"step": step, "loss": loss.item(), **measured})
                    bar.update(task, description=f"sparsity ({config.activation}) {measured['overall']:.3f}")
                return loss, None

            if step == config.steps:
                loss_and_measure()  # the last measurement, with no step after it
                break
            training_step([optimizer], loss_and_measure, check_finite=False)
            bar.advance(task)

    layers = [key for key in history[0] if key not in ("step", "loss")]
    per_layer = {layer: sum(h[layer] for h in history) / len(history) for layer in layers}
    result = {
        "activation": config.activation,
        "optimizer": config.optimizer,
        "sparsity": per_layer.pop("overall"),
        "per_layer": per_layer,
        "tolerance": config.tolerance,
        "definition": "fraction of Hv entries with |Hv_i| <= tolerance * max|Hv|, Rademacher v, mean over measurements",
        "image": source,
        "history": history,
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(config).items()},
        "run_dir": str(run_dir),
    }
    plot = run_dir / "sparsity.png"
    bar_plot(
        {**per_layer, "overall": result["sparsity"]},
        title=f"HVP sparsity, {config.activation} (τ = {config.tolerance:g}, {len(history)} measurements)",
        ylabel="fraction of zero Hv entries",
        path=plot,
    )
    result["plot"] = str(plot)
    (run_dir / "sparsity.json").write_text(json.dumps(result, indent=2))
    return result
