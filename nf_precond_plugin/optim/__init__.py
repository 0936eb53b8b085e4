"""Curvature-aware optimizers built from ``nf_precond_plugin.curvature``; no nerfstudio import."""

from nf_precond_plugin.optim.adahessian import AdaHessian, adahessian
from nf_precond_plugin.optim.base import CurvatureOptimizer
from nf_precond_plugin.optim.esgd import ESGD, ESGDMax, PaperESGD, clipped_esgd, esgd_max, paper_esgd

__all__ = [
    "ESGD",
    "AdaHessian",
    "CurvatureOptimizer",
    "ESGDMax",
    "PaperESGD",
    "adahessian",
    "clipped_esgd",
    "esgd_max",
    "paper_esgd",
]
