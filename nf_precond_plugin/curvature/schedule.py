"""When to pay for a Hessian-vector product.

On 0-based step k a new curvature sample is taken if k < warmup, or if
k − (last sampled step) ≥ every. With warmup=50, every=100: steps 0…49, 149, 249, …
"""

from __future__ import annotations


def is_curvature_step(step: int, last_curvature_step: int | None, every: int, warmup: int) -> bool:
    if step < warmup or last_curvature_step is None:
        return True
    return step - last_curvature_step >= every


def inverse_time_lr(lr: float, step: int, decay_steps: int | None) -> float:
    """lr_t = lr / (1 + (t − 1) / T) at 1-based step t: halved after T steps, lr/k after (k − 1)·T.

    ``decay_steps`` T = None keeps lr constant. An explicit schedule in place of the one the
    paper's debiasing hides (its steps grow up to 3.6× over the first 2,000 steps).
    """
    if decay_steps is None:
        return lr
    return lr / (1.0 + (step - 1) / decay_steps)
