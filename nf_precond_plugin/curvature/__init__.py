"""Curvature core in pure torch: probe → Hessian-vector product → estimator → accumulator.

Nothing here imports nerfstudio.
"""

from nf_precond_plugin.curvature.accumulators import (
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
from nf_precond_plugin.curvature.hvp import MISSING_GRAPH_HINT, functional_hvp, hvp
from nf_precond_plugin.curvature.probes import rademacher_like
from nf_precond_plugin.curvature.schedule import is_curvature_step

__all__ = [
    "ESTIMATORS",
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
