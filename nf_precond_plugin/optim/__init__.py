"""Curvature-aware optimizers built from ``nf_precond_plugin.curvature``; no nerfstudio import."""

from nf_precond_plugin.optim.adahessian import AdaHessian, adahessian
from nf_precond_plugin.optim.base import CurvatureOptimizer
from nf_precond_plugin.optim.esgd import ESGD, esgd

__all__ = ["ESGD", "AdaHessian", "CurvatureOptimizer", "adahessian", "esgd"]
