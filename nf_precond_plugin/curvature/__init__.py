"""Curvature core in pure torch: probe → Hessian-vector product → estimator → accumulator → schedule,
plus H·v samples for measurement (``measure``), the reduction of gradients and H·v across
processes and their sum over micro-batches.

Nothing here imports nerfstudio.
"""

from nf_precond_plugin.curvature.accumulation import HvpSum
from nf_precond_plugin.curvature.accumulators import (
    clip_foreach_,
    decayed_max_,
    decayed_max_foreach_,
    ema_,
    ema_debias,
    ema_foreach_,
)
from nf_precond_plugin.curvature.estimators import (
    ESTIMATORS,
    equilibration_sample,
    jacobi_sample,
)
from nf_precond_plugin.curvature.hvp import MISSING_GRAPH_HINT, functional_hvp, hvp, release_graph
from nf_precond_plugin.curvature.measure import HvpSamples, hvp_samples
from nf_precond_plugin.curvature.probes import rademacher_like
from nf_precond_plugin.curvature.reduction import (
    DEFAULT_BUCKET_BYTES,
    active_process_group,
    all_reduce_mean_,
    broadcast_int,
    fill_missing_grads_,
)
from nf_precond_plugin.curvature.schedule import is_curvature_step
from nf_precond_plugin.curvature.sparsity import (
    SPARSE_FIELD,
    SPARSE_TENSOR,
    ZERO_TOLERANCE,
    zero_fraction,
)

__all__ = [
    "DEFAULT_BUCKET_BYTES",
    "ESTIMATORS",
    "HvpSum",
    "active_process_group",
    "all_reduce_mean_",
    "broadcast_int",
    "fill_missing_grads_",
    "release_graph",
    "SPARSE_FIELD",
    "SPARSE_TENSOR",
    "ZERO_TOLERANCE",
    "HvpSamples",
    "hvp_samples",
    "clip_foreach_",
    "zero_fraction",
    "MISSING_GRAPH_HINT",
    "decayed_max_",
    "decayed_max_foreach_",
    "ema_",
    "ema_debias",
    "ema_foreach_",
    "equilibration_sample",
    "functional_hvp",
    "hvp",
    "is_curvature_step",
    "jacobi_sample",
    "rademacher_like",
]
