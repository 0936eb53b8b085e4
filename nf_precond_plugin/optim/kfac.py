"""K-FAC-preconditioned Adam, with the Kronecker factors from NNGeometry (``nngeometry`` 0.4).

For every ``nn.Linear`` layer (weight W, bias b) with a gradient, ``step()`` replaces the gradient
by the K-FAC natural-gradient direction and then takes a plain ``torch.optim.Adam`` step::

    V = [∇W | ∇b]                               out × (in + 1); no bias column without a bias
    V ← (G + (√λ/π) I)⁻¹ · V · (A + π√λ I)⁻¹     nngeometry: PMatKFAC.inverse(regul=λ).mv(V)
    π = √((tr A / dim A) / (tr G / dim G))       Martens & Grosse's factored Tikhonov damping;
                                                 π = 1 with ``use_pi=False``
(nngeometry adds the damping terms as multiples of a default-dtype ``torch.eye``, so they are
rounded to float32 even for float64 factors.)

A and G are nngeometry's K-FAC blocks of the Fisher of the "regression" model, y ~ N(f(x), I),
which for a squared-error loss is the Gauss–Newton matrix (1/N) Σₙ Jₙᵀ Jₙ. On a batch of N inputs,
with āₙ the layer input with a trailing 1 (bias column), sₙ its output (pre-activation) and
gₙ,ₒ = ∂f_o(xₙ)/∂sₙ the output-o Jacobian backpropagated to sₙ (one backward pass per output)::

    A = (√O / N) Σₙ āₙ āₙᵀ,      G = (1 / (√O N)) Σₙ Σₒ gₙ,ₒ gₙ,ₒᵀ,      O = number of outputs

so A ⊗ G = E[ā āᵀ] ⊗ E[Σₒ g gᵀ]; the √O split between the factors cancels under π-damping (up
to the float32 rounding of the damping terms). This is the true-Fisher (not empirical-Fisher)
K-FAC: the factors do not depend on the targets.
``fisher="classif_binary_logits"`` (for a binary cross-entropy on logits, e.g. occupancy) is the
Bernoulli Fisher instead: nngeometry backpropagates f·√(p(1 − p)) with p = sigmoid(f) held
constant, so each gₙ,ₒ is weighted by √(pₙ,ₒ(1 − pₙ,ₒ)).

Refresh schedule: the factors are recomputed and re-inverted on steps 0, k, 2k, … (k =
``update_freq``) from the batch of the model's last grad-enabled forward call, with the current
parameters; that costs one more forward and O backward passes through the model (O = 3 for RGB)
plus two matrix inversions per layer. No moving average across refreshes: each refresh uses that
batch alone. Between refreshes, the stored damped inverses precondition every step's gradient.

Training-loop contract (the same as every optimizer of this package; no graph is needed)::

    opt = KFACAdam(model, lr=3e-4)
    opt.zero_grad(set_to_none=True)
    loss = loss_fn(model(x), y)         # a forward hook on `model` records x (the first positional
    loss.backward()                     # argument; other args/kwargs are replayed too)
    opt.step()                          # overwrites the Linear .grad with the preconditioned one

- ``model(x, ...)`` must return a tensor whose first dimension is the batch (reshaped to N × O).
- If the model is called several times with gradients enabled before ``step()``, the last call's
  batch feeds the refresh. A due refresh with no recorded call raises ``RuntimeError``.
- Parameters outside ``nn.Linear`` layers get plain Adam.
- ``state_dict()`` adds a ``"kfac"`` entry (refresh counter and the damped inverse factors) to
  Adam's; with it, a resumed run takes bit-identical steps. damping, update_freq, use_pi and
  fisher are constructor settings and are not restored from a checkpoint.
"""

from __future__ import annotations

import warnings
import weakref
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

_KFAC_KEY = "kfac"
# nngeometry's closed-form Fisher variants that fit a field's loss: squared error (Gauss–Newton),
# and binary cross-entropy on logits (occupancy), where each example is weighted by p(1 − p).
FISHER_VARIANTS = ("regression", "classif_binary_logits")


def _require_nngeometry():
    try:
        from nngeometry.layercollection import LayerCollection
        from nngeometry.metrics import FIM
        from nngeometry.object import PMatKFAC
        from nngeometry.object.vector import PVector
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError("the 'kfac' optimizer needs NNGeometry: pip install 'nngeometry==0.4'") from error
    return LayerCollection, FIM, PMatKFAC, PVector


class KFACAdam(torch.optim.Adam):
    """Adam on K-FAC-preconditioned gradients of the model's ``nn.Linear`` layers (see module docstring)."""

    def __init__(
        self,
        model: nn.Module,
        lr: float = 3e-4,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        damping: float = 1e-3,
        update_freq: int = 10,
        use_pi: bool = True,
        fisher: str = "regression",
    ) -> None:
        if not damping > 0.0:
            raise ValueError(f"Invalid damping: {damping} (expected damping > 0)")
        if isinstance(update_freq, bool) or not (isinstance(update_freq, int) and update_freq >= 1):
            raise ValueError(f"Invalid update_freq: {update_freq!r} (expected an integer >= 1)")
        if fisher not in FISHER_VARIANTS:
            raise ValueError(f"Invalid fisher: {fisher!r} (expected one of {', '.join(FISHER_VARIANTS)})")
        LayerCollection, _, _, _ = _require_nngeometry()
        super().__init__(model.parameters(), lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
        self.model = model
        self.damping = float(damping)
        self.update_freq = update_freq
        self.use_pi = bool(use_pi)
        self.fisher = fisher

        self._layers = LayerCollection()
        self._modules: dict[str, nn.Linear] = {}
        for name, module in model.named_modules():
            if type(module) is nn.Linear and module.weight.requires_grad:
                if module.bias is not None and not module.bias.requires_grad:
                    continue  # a frozen bias would need a different factor; leave the layer to Adam
                self._layers.add_layer_from_model(model, module)
                self._modules[name] = module
        if not self._modules:
            raise ValueError("KFACAdam: the model has no trainable nn.Linear layer to precondition")

        self._kfac_step = 0
        self._inverse = None  # nngeometry PMatKFAC holding the damped inverse factors
        self._captured: tuple[tuple[Any, ...], dict[str, Any]] | None = None
        self._refreshing = False

        this = weakref.ref(self)

        def record_batch(_module, args, kwargs):
            opt = this()
            if opt is not None and not opt._refreshing and torch.is_grad_enabled() and args:
                opt._captured = (args, kwargs)

        handle = model.register_forward_pre_hook(record_batch, with_kwargs=True)
        weakref.finalize(self, handle.remove)

    # -- K-FAC ----------------------------------------------------------------------------
    def refresh_due(self) -> bool:
        """Whether the coming ``step()`` recomputes the Kronecker factors."""
        return self._kfac_step % self.update_freq == 0

    def _function(self) -> Callable[..., torch.Tensor]:
        args, kwargs = self._captured
        model = self.model

        def function(inputs: torch.Tensor, *_rest) -> torch.Tensor:
            return model(inputs, *args[1:], **kwargs)

        return function

    def _refresh(self) -> None:
        if self._captured is None:
            raise RuntimeError(
                "KFACAdam.step(): a K-FAC refresh is due but the model was not called with gradients "
                "enabled since the last step; call model(x) (then backward) before step()"
            )
        _, FIM, PMatKFAC, _ = _require_nngeometry()
        inputs = self._captured[0][0]
        if not (isinstance(inputs, torch.Tensor) and inputs.is_floating_point()):
            raise RuntimeError("KFACAdam: the model's first positional argument must be a floating-point batch tensor")
        self._refreshing = True
        try:
            with torch.enable_grad():
                fisher = FIM(
                    model=self.model,
                    # a detached copy: nngeometry sets requires_grad on the batch it is given
                    loader=torch.utils.data.DataLoader(
                        torch.utils.data.TensorDataset(inputs.detach()), batch_size=len(inputs)
                    ),
                    representation=PMatKFAC,
                    variant=self.fisher,
                    function=self._function(),
                    layer_collection=self._layers,
                )
                inverse = fisher.inverse(regul=self.damping, use_pi=self.use_pi)
        except torch.linalg.LinAlgError as error:
            warnings.warn(
                f"KFACAdam: K-FAC factors not invertible ({error}); keeping the previous ones",
                RuntimeWarning,
                stacklevel=3,
            )
            return
        finally:
            self._refreshing = False
        if not all(bool(torch.isfinite(t).all()) for pair in inverse.data.values() for t in pair):
            warnings.warn(
                f"KFACAdam: non-finite K-FAC factors at step {self._kfac_step}; keeping the previous ones",
                RuntimeWarning,
                stacklevel=3,
            )
            return
        self._inverse = inverse

    def _precondition(self) -> None:
        if self._inverse is None:
            return
        _, _, _, PVector = _require_nngeometry()
        vectors, targets = {}, {}
        for name, module in self._modules.items():
            params = [module.weight] + ([module.bias] if module.bias is not None else [])
            if any(p.grad is None for p in params):  # a layer unused in this step: left alone
                vectors[name] = tuple(torch.zeros_like(p) for p in params)
                continue
            vectors[name] = tuple(p.grad.detach() for p in params)
            targets[name] = [p.grad for p in params]
        if not targets:
            return
        result = self._inverse.mv(PVector(self._layers, dict_repr=vectors)).to_dict()
        for name, grads in targets.items():
            for grad, new in zip(grads, result[name]):
                grad.copy_(new)

    # -- step -----------------------------------------------------------------------------
    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None) -> torch.Tensor | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if self.refresh_due():
            self._refresh()
        self._precondition()
        self._kfac_step += 1
        self._captured = None
        super().step()
        return loss

    # -- checkpoints ----------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        inverses = None
        if self._inverse is not None:
            inverses = {name: tuple(t.clone() for t in pair) for name, pair in self._inverse.data.items()}
        state[_KFAC_KEY] = {"step": self._kfac_step, "inverses": inverses}
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state_dict = dict(state_dict)
        kfac = state_dict.pop(_KFAC_KEY, None)
        if kfac is None:
            raise ValueError("KFACAdam.load_state_dict: no 'kfac' entry (not a KFACAdam checkpoint)")
        super().load_state_dict(state_dict)
        self._kfac_step = int(kfac["step"])
        self._captured = None
        inverses = kfac["inverses"]
        if inverses is None:
            self._inverse = None
            return
        if set(inverses) != set(self._modules):
            raise ValueError(
                f"KFACAdam.load_state_dict: checkpoint layers {sorted(inverses)} "
                f"!= model layers {sorted(self._modules)}"
            )
        _, _, PMatKFAC, _ = _require_nngeometry()
        from nngeometry.backend import TorchHooksJacobianBackend

        data = {}
        for name, module in self._modules.items():
            weight = module.weight
            data[name] = tuple(t.to(device=weight.device, dtype=weight.dtype) for t in inverses[name])
        generator = TorchHooksJacobianBackend(model=self.model, layer_collection=self._layers)
        self._inverse = PMatKFAC(generator=generator, data=data)
