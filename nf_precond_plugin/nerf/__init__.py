"""The nerfstudio layer: a thin shell (config, field, model, trainer, dataparser) around the curvature core.

Everything here imports nerfstudio; nothing in ``curvature/``, ``optim/`` or ``fields/`` does.
"""
