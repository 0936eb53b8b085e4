"""When to pay for a Hessian-vector product.

On 0-based step k a new curvature sample is taken if k < warmup, or if
k − (last sampled step) ≥ every. With warmup=50, every=100: steps 0…49, 149, 249, …
"""

from __future__ import annotations


def is_curvature_step(step: int, last_curvature_step: int | None, every: int, warmup: int) -> bool:
    if step < warmup or last_curvature_step is None:
        return True
    return step - last_curvature_step >= every
