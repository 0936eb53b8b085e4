"""nf-precond: curvature-aware preconditioned training for neural fields.

Importing the package (or ``.curvature`` / ``.optim`` / ``.fields``) never imports nerfstudio.
"""

__version__ = "0.1.0"
