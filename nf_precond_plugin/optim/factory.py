"""Optimizers by name, with their default learning rates: ``build_optimizer(name, model, lr)``.

=============  ===============================================================  ====================
name           optimizer                                                        default lr (Gaussian)
=============  ===============================================================  ====================
adam           ``torch.optim.Adam``                                             paper: 1e-4 (ReLU(-PE) 1e-3)
sgd            ``torch.optim.SGD``, momentum 0 (the paper's plain SGD, Fig. 3)  0.1 (measured)
esgd           ``ESGD`` (paper settings)                                        paper: 0.15 (ReLU(-PE) 0.1)
esgd-max       ``ESGD(variant="max")``                                          paper: 0.15 (0.1)
adahessian     ``AdaHessian(estimator="equilibration")``                        paper: 0.15 (0.1)
adahessian-j   ``AdaHessian(estimator="jacobi")``                               paper: 0.15 (0.1)
shampoo        ``pytorch_optimizer.Shampoo`` (the library's defaults)           1e-2 (measured)
kfac           ``KFACAdam``: K-FAC (NNGeometry) preconditioning, then Adam      3e-4 (measured)
=============  ===============================================================  ====================

The measured defaults were tuned on the Gaussian image field only and serve every activation.
``overrides`` go to the constructor (e.g. ``momentum=0.9`` for sgd, ``damping=...`` for kfac).
Every optimizer supports ``state_dict()``/``load_state_dict()`` with bit-identical resumption. The loop is the package's::

    opt.zero_grad(set_to_none=True)
    loss = loss_fn(model(x), y)
    loss.backward(create_graph=needs_create_graph(opt))
    opt.step()

**Shampoo and K-FAC.** ``shampoo`` is ``pytorch_optimizer.Shampoo`` from pytorch-optimizer 4.1.0,
the original (AdaGrad-style) Shampoo of Gupta et al. (2018): for every parameter tensor it sums one
statistic per dimension from matrix_eps·I on, L ← L + G Gᵀ and R ← R + Gᵀ G (a bias vector: L only),
and steps θ ← θ − lr · L^(−1/4) G R^(−1/4) (a vector: L^(−1/2) g), the inverse roots by SVD; all
weights and biases are preconditioned; we keep the library's defaults (momentum 0, matrix_eps 1e-6,
no grafting, ``preconditioning_compute_steps=1``). With ``preconditioning_compute_steps=10`` the
library's inverse roots start at zero, so steps 1–9 do not move the parameters, and the stale roots
cost 6–16 dB at 300 steps in our sweep; the price of every-step roots is ≈ 13 SVDs of 256 × 256 per
step: ≈ 110 ms per step against ≈ 12 ms for Adam (1 thread). On this 2-core machine, while other
jobs ran, MKL with 2 threads took 1.6 s for one 256 × 256 SVD (8 ms with 1 thread): set
``torch.set_num_threads(1)`` when the cores are shared. ``kfac`` is ``KFACAdam``
(``optim/kfac.py``), whose Kronecker factors, π-damped inverses and their product with the
gradient all come from NNGeometry 0.4 (``nngeometry.metrics.FIM`` with ``PMatKFAC``,
``PMatKFAC.inverse``, ``.mv``): for every
``nn.Linear`` layer the joint [weight | bias] gradient becomes (G + √λ/π I)⁻¹ [∇W | ∇b]
(A + π√λ I)⁻¹, A = E[ā āᵀ] over the batch's layer inputs with a bias column, G = E[Σₒ g gᵀ] over
the output Jacobians backpropagated to the layer's pre-activations (the true Fisher of
y ~ N(f(x), I), i.e. the Gauss–Newton matrix of the squared error; ``fisher="classif_binary_logits"``
gives the Bernoulli Fisher for a BCE-on-logits loss), λ = 1e-3, π = √((tr A/dim A)/(tr G/dim G));
the factors are recomputed from the current batch on steps 0, 10, 20, … (one extra forward and O
backward passes, O = outputs; ≈ 70–80 ms for such a step, ≈ 15–18 ms for the others, ≈ 12 ms for
Adam, 1 thread) without averaging across refreshes, and Adam (β = 0.9, 0.999, ε = 1e-8) then
steps on the preconditioned gradient; other parameters get plain Adam. Why
NNGeometry: BackPACK 1.7.1 refuses the model (its KFAC/KFLR extensions raise NotImplementedError
for our ``Gaussian`` module, because every module between the loss and a Linear needs a BackPACK
derivative extension, which we would have to write); ASDL (``asdfghjkl`` 0.1a5, an alpha from
2024) does compute K-FAC through the Gaussian, but it drives its own forward and backward
(``GradientMaker.forward_and_backward``), and it registers torch's deprecated non-full module
backward hooks (a FutureWarning on torch 2.14; slated for removal) and warns about
``torch.jit.script`` on import. NNGeometry needs only forward hooks and tensor hooks on the Linear
layers, computes the true (not the empirical) Fisher, and exposes the damped inverse and its
product with a gradient, so KFACAdam keeps the package's training loop: it records the batch with
a forward pre-hook on the model and does the rest inside ``step()``.

Measured (2026-11-28, this project's 2-core CPU, torch 2.14.1, which other jobs shared, so times
are rough): the 5 × 256 Gaussian image MLP (σ = 0.05) fitting a 64 × 64 crop of
``skimage.data.astronaut()`` (rows 100–163, columns 200–263), batch 512 random pixels, 300 steps,
PSNR of the whole crop (3.7 dB at initialisation), seed 0 (seed 1 in brackets):

- adam (reference): lr 1e-4 → 41.0 dB [41.9]; 1e-3 → 22.0.
- sgd: lr 0.03 → 25.3; **0.1 → 27.7 [26.9]**; 0.2 → 27.4 [26.3] with loss spikes (3× the
  first loss); 0.3 → 23.2 (27×); 0.5 → stuck at 16.9; ≥ 3 diverges.
- shampoo, inverse roots every step: matrix_eps 1e-2: lr 3e-3 → 15.7, **1e-2 → 31.2 [31.5]**,
  2e-2 → 29.7, 3e-2 → 27.6; at lr 1e-2, matrix_eps 1e-6 (the default) → 30.9, 1e-4 → 31.3,
  1e-1 → 30.1; lr 1e-3, matrix_eps 1e-6 → 8.2. Roots every 10 steps: best 15.1 (lr 1e-3 of
  1e-4…1e-1, matrix_eps 1e-6), 25.2 (lr 3e-2, matrix_eps 1e-2).
- kfac, update_freq 10, damping 1e-3: lr 1e-4 → 20.1, 2e-4 → 35.8 [34.9], **3e-4 → 45.2
  [43.9]**, 5e-4 → 29.0 (falling after step 150), 1e-3 → 23.8; lr 3e-4 with damping 1e-4 → 40.1,
  1e-2 → 42.7, 1e-1 → 36.0; lr 3e-4, damping 1e-3 with update_freq 1 → 49.5 (≈ 3× the time per
  step), 50 → 35.2. update_freq 10 trades 4 dB for a third of the cost.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from nf_precond_plugin.presets import paper_lr

OPTIMIZERS: tuple[str, ...] = ("adam", "sgd", "esgd", "esgd-max", "adahessian", "adahessian-j", "shampoo", "kfac")

# Defaults for the optimizers the paper gives no learning rate for (measured; see the module docstring).
SGD_LR = 0.1
SHAMPOO_LR = 0.01
KFAC_LR = 3e-4
SHAMPOO_DEFAULTS: dict[str, Any] = dict(momentum=0.0, preconditioning_compute_steps=1, matrix_eps=1e-6)
KFAC_DEFAULTS: dict[str, Any] = dict(damping=1e-3, update_freq=10, use_pi=True)


def default_lr(optimizer: str, activation: str) -> float:
    """The paper's lr for Adam, ESGD(-max) and AdaHessian(E/J); measured defaults for SGD, Shampoo, K-FAC."""
    _check_name(optimizer)
    if optimizer == "sgd":
        return SGD_LR
    if optimizer == "shampoo":
        return SHAMPOO_LR
    if optimizer == "kfac":
        return KFAC_LR
    return paper_lr(optimizer, activation)


def build_optimizer(name: str, model: nn.Module, lr: float, **overrides: Any) -> torch.optim.Optimizer:
    """A fresh optimizer over ``model``'s parameters; ``overrides`` go to its constructor."""
    _check_name(name)
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not lr > 0:
        raise ValueError(f"invalid lr={lr!r} for optimizer {name!r} (expected a learning rate > 0)")
    lr = float(lr)
    params = [p for p in model.parameters() if p.requires_grad]
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, **overrides)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, **{"momentum": 0.0, **overrides})
    if name in ("esgd", "esgd-max"):
        from nf_precond_plugin.optim.esgd import ESGD

        variant = "max" if name == "esgd-max" else "ema"
        return ESGD(params, lr=lr, **{"variant": variant, **overrides})
    if name in ("adahessian", "adahessian-j"):
        from nf_precond_plugin.optim.adahessian import AdaHessian

        estimator = "jacobi" if name == "adahessian-j" else "equilibration"
        return AdaHessian(params, lr=lr, **{"estimator": estimator, **overrides})
    if name == "shampoo":
        from pytorch_optimizer import Shampoo

        return Shampoo(params, lr=lr, **{**SHAMPOO_DEFAULTS, **overrides})
    # kfac
    from nf_precond_plugin.optim.kfac import KFACAdam

    return KFACAdam(model, lr=lr, **{**KFAC_DEFAULTS, **overrides})


def needs_create_graph(optimizer: torch.optim.Optimizer) -> bool:
    """Whether the coming ``step()`` needs ``loss.backward(create_graph=True)`` (curvature optimizers)."""
    return bool(getattr(optimizer, "should_create_graph", lambda: False)())


def _check_name(name: str) -> None:
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; expected one of {', '.join(OPTIMIZERS)}")
