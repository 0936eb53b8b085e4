"""The nerfstudio layer: a thin shell around the curvature core, each file one nerfstudio type.

field, model, pipeline, optimizers, trainer, methods and llff subclass nerfstudio's types and are
the only modules of the package that import nerfstudio (nothing in ``curvature/``, ``optim/``,
``fields/`` or ``training/`` does). metrics (PSNR/SSIM/LPIPS-if-present) and demo (runs the
``ns-*`` commands as subprocesses) live here because they serve this layer, but import no
nerfstudio themselves. The embedded LLFF scene they train on is data (``data/demo_scene.py``).
"""
