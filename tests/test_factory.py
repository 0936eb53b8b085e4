"""The optimizer factory: every name trains, rejects bad input, resumes bit-identically; K-FAC's
preconditioned gradient against an independent computation; Shampoo is pytorch_optimizer's."""

from __future__ import annotations

import io
import math

import pytest
import torch
from torch import nn

from nf_precond_plugin.fields import CoordinateMLP
from nf_precond_plugin.optim.factory import OPTIMIZERS, build_optimizer, default_lr, paper_lr
from nf_precond_plugin.training.step import needs_create_graph


def _problem():
    """64 points of a smooth RGB field on [−1, 1]²."""
    gen = torch.Generator().manual_seed(7)
    x = torch.rand(64, 2, generator=gen) * 2 - 1
    y = torch.stack([torch.sin(2 * x[:, 0]), torch.cos(3 * x[:, 1]), x[:, 0] * x[:, 1]], dim=1) * 0.5 + 0.5
    return x, y


def _model(seed: int = 0) -> CoordinateMLP:
    torch.manual_seed(seed)
    return CoordinateMLP(2, 3, hidden_features=24, num_layers=3, activation="gaussian", sigma=0.5)


def _step(model, opt, x, y) -> float:
    opt.zero_grad(set_to_none=True)
    loss = nn.functional.mse_loss(model(x), y)
    loss.backward(create_graph=needs_create_graph(opt))
    opt.step()
    return loss.item()


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_every_optimizer_builds_steps_and_fits(name):
    x, y = _problem()
    model = _model()
    opt = build_optimizer(name, model, default_lr(name, "gaussian"))
    assert isinstance(opt, torch.optim.Optimizer)
    with torch.no_grad():
        initial = nn.functional.mse_loss(model(x), y).item()
    losses = [_step(model, opt, x, y) for _ in range(30)]
    assert all(math.isfinite(v) for v in losses)
    with torch.no_grad():
        final = nn.functional.mse_loss(model(x), y).item()
    assert final < 0.9 * initial, f"{name}: loss {initial:.4g} -> {final:.4g} over 30 steps"


def test_unknown_name_and_bad_lr_are_value_errors():
    model = _model()
    with pytest.raises(ValueError, match=r"unknown optimizer 'lbfgs'; expected one of .*adam.*kfac"):
        build_optimizer("lbfgs", model, 1e-3)
    with pytest.raises(ValueError, match=r"unknown optimizer 'lbfgs'"):
        default_lr("lbfgs", "gaussian")
    for bad in (0.0, -1e-3, float("nan")):
        with pytest.raises(ValueError, match=r"lr"):
            build_optimizer("adam", model, bad)
    with pytest.raises(ValueError, match=r"lr"):
        build_optimizer("kfac", model, 0)


def test_paper_lrs_and_tuned_defaults():
    assert paper_lr("adam", "gaussian") == 1e-4 and paper_lr("adam", "relu-pe") == 1e-3
    assert default_lr("adam", "gaussian") == 1e-3  # tuned: the paper's 1e-4 is too low early
    assert paper_lr("esgd", "gaussian") is None and paper_lr("esgd-paper", "sine") == 0.15
    assert default_lr("esgd-paper", "sine") == 0.15  # the paper's rule keeps the paper's lr
    for name in ("esgd-paper", "esgd-max", "adahessian", "adahessian-j"):
        assert default_lr(name, "sine") == paper_lr(name, "sine") == 0.15 and default_lr(name, "relu") == 0.1
    for name in ("esgd", "sgd", "shampoo", "kfac", "muon", "sophiah"):
        assert default_lr(name, "gaussian") > 0


def test_needs_create_graph():
    model = _model()
    assert needs_create_graph(build_optimizer("esgd", model, 0.1))  # HVP on the first steps
    for name in ("adam", "sgd", "shampoo", "kfac"):
        assert not needs_create_graph(build_optimizer(name, model, 0.1))


# (name, overrides): K-FAC twice, so that the step after the resume is a refresh (3 % 3 == 0) and
# one that uses the checkpointed inverse factors (3 % 10 != 0).
RESUME_CASES = [(name, {}) for name in OPTIMIZERS] + [("kfac", {"update_freq": 3})]


@pytest.mark.parametrize(("name", "overrides"), RESUME_CASES, ids=[f"{n}{o}" for n, o in RESUME_CASES])
def test_state_dict_round_trip_reproduces_the_next_step(name, overrides):
    x, y = _problem()
    lr = default_lr(name, "gaussian")
    model = _model(0)
    opt = build_optimizer(name, model, lr, **overrides)
    for k in range(3):
        torch.manual_seed(100 + k)  # the curvature optimizers draw probes from the global RNG
        _step(model, opt, x[16 * k : 16 * k + 32], y[16 * k : 16 * k + 32])
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buffer)
    buffer.seek(0)
    checkpoint = torch.load(buffer, weights_only=False)

    resumed_model = _model(1)  # a different initialisation, overwritten by the checkpoint
    resumed = build_optimizer(name, resumed_model, lr, **overrides)
    resumed_model.load_state_dict(checkpoint["model"])
    resumed.load_state_dict(checkpoint["opt"])

    for m, o in ((model, opt), (resumed_model, resumed)):
        torch.manual_seed(999)
        _step(m, o, x[8:40], y[8:40])
    for (pname, p), q in zip(model.named_parameters(), resumed_model.parameters()):
        assert torch.equal(p, q), f"{name}: {pname} differs after the resumed step"


# ----------------------------------------------------------------------------------------------
# K-FAC against an independent computation
# ----------------------------------------------------------------------------------------------
# nngeometry's conventions (nngeometry 0.4, backend/torch_hooks: get_kfac_blocks, PMatKFAC.inverse):
#   Fisher of the "regression" model y ~ N(f(x), I): F = (1/N) Σₙ Jₙᵀ Jₙ, Jₙ = ∂f(xₙ)/∂θ,
#   A = (√O / N) Σₙ āₙ āₙᵀ  (ā = [input, 1]),   G = (1 / (√O N)) Σₙ Σₒ gₙₒ gₙₒᵀ,  gₙₒ = ∂f_o(xₙ)/∂sₙ,
#   damped inverse with regul = λ:  A + π√λ I,  G + (√λ/π) I,  π = √((tr A / dim A) / (tr G / dim G)),
#   π = 1 with use_pi=False. Preconditioned gradient [∇W | ∇b] ← G_damped⁻¹ [∇W | ∇b] A_damped⁻¹.
#   The damping terms are rounded to float32 even for float64 factors: nngeometry multiplies them
#   into a default-dtype torch.eye.
# The test builds A and G as plain batch means (no √O) and applies the √O split itself.


def _expected_kfac(grad_w, grad_b, inputs, out_grads, damping, use_pi):
    """inputs: (N, in) layer inputs; out_grads: (N, O, out) ∂f_o/∂s for every example and output."""
    n, n_out = inputs.shape[0], out_grads.shape[1]
    a_bar = torch.cat([inputs, torch.ones(n, 1, dtype=inputs.dtype)], dim=1)
    A = a_bar.T @ a_bar / n  # mean of ā āᵀ
    g = out_grads.reshape(-1, out_grads.shape[-1])
    G = g.T @ g / n  # mean over examples of Σ_o g gᵀ
    A, G = A * math.sqrt(n_out), G / math.sqrt(n_out)  # nngeometry's split of the √O factor
    pi = math.sqrt((A.trace() / A.shape[0]) / (G.trace() / G.shape[0])) if use_pi else 1.0
    A_damped = A + torch.eye(A.shape[0], dtype=torch.float32) * (pi * math.sqrt(damping))
    G_damped = G + torch.eye(G.shape[0], dtype=torch.float32) * (math.sqrt(damping) / pi)
    V = torch.cat([grad_w, grad_b[:, None]], dim=1)
    P = torch.linalg.solve(G_damped, V) @ torch.linalg.inv(A_damped)
    return P[:, :-1], P[:, -1]


def _adam_first_step(param_before, param_after, grad, lr, eps):
    """Adam's first update is −lr · g / (|g| + eps): recovers what Adam was handed."""
    return torch.allclose(param_after - param_before, -lr * grad / (grad.abs() + eps), rtol=1e-6, atol=1e-12)


@pytest.mark.parametrize(
    ("use_pi", "fisher"), [(True, "regression"), (False, "regression"), (True, "classif_binary_logits")]
)
def test_kfac_single_linear_layer_matches_independent_computation(use_pi, fisher):
    torch.manual_seed(3)
    layer = nn.Linear(4, 3).double()
    x = torch.randn(50, 4, dtype=torch.float64) * 1.5 + 0.7  # non-zero mean: a dense A
    if fisher == "regression":
        y = torch.randn(50, 3, dtype=torch.float64)
        loss_fn = nn.functional.mse_loss
    else:
        y = (torch.rand(50, 3, dtype=torch.float64) > 0.5).double()
        loss_fn = nn.functional.binary_cross_entropy_with_logits
    damping, lr = 1e-2, 1e-3
    opt = build_optimizer("kfac", layer, lr, damping=damping, use_pi=use_pi, fisher=fisher)

    grad_w, grad_b = torch.autograd.grad(loss_fn(layer(x), y), [layer.weight, layer.bias])
    # a single layer: f = s, so ∂f_o/∂s = e_o for every example and G is the identity; the Bernoulli
    # Fisher weights example n, output o by √(p(1 − p)), p = sigmoid(f_o(xₙ))
    out_grads = torch.eye(3, dtype=torch.float64).expand(50, 3, 3)
    if fisher == "classif_binary_logits":
        p = torch.sigmoid(layer(x)).detach()
        out_grads = out_grads * (p * (1 - p)).sqrt()[:, :, None]
    expected_w, expected_b = _expected_kfac(grad_w, grad_b, x, out_grads, damping, use_pi)

    before = [p.detach().clone() for p in (layer.weight, layer.bias)]
    opt.zero_grad(set_to_none=True)
    loss_fn(layer(x), y).backward()
    opt.step()
    torch.testing.assert_close(layer.weight.grad, expected_w, rtol=1e-10, atol=1e-14)
    torch.testing.assert_close(layer.bias.grad, expected_b, rtol=1e-10, atol=1e-14)
    # ... and that is what Adam consumed
    assert _adam_first_step(before[0], layer.weight.detach(), expected_w, lr, 1e-8)
    assert _adam_first_step(before[1], layer.bias.detach(), expected_b, lr, 1e-8)


def test_kfac_hidden_layer_G_uses_backpropagated_output_jacobians():
    """Two layers: the first layer's G comes from ∂f_o/∂s₁ through the Gaussian and W₂ (non-trivial)."""
    from nf_precond_plugin.fields.activations import Gaussian

    torch.manual_seed(4)
    model = nn.Sequential(nn.Linear(2, 6), Gaussian(0.8), nn.Linear(6, 3)).double()
    x = torch.randn(40, 2, dtype=torch.float64)
    y = torch.randn(40, 3, dtype=torch.float64)
    damping = 1e-3
    opt = build_optimizer("kfac", model, 1e-3, damping=damping)

    first, rest = model[0], model[1:]
    s1 = first(x).detach()
    # ∂f_o(xₙ)/∂s₁ₙ per example, by autograd's Jacobian of the rest of the network
    jac = torch.stack([torch.autograd.functional.jacobian(rest, s1[n]) for n in range(len(x))])  # (N, O, 6)
    loss = nn.functional.mse_loss(model(x), y)
    grad_w, grad_b = torch.autograd.grad(loss, [first.weight, first.bias])
    expected_w, expected_b = _expected_kfac(grad_w, grad_b, x, jac, damping, use_pi=True)

    opt.zero_grad(set_to_none=True)
    nn.functional.mse_loss(model(x), y).backward()
    opt.step()
    torch.testing.assert_close(first.weight.grad, expected_w, rtol=1e-10, atol=1e-14)
    torch.testing.assert_close(first.bias.grad, expected_b, rtol=1e-10, atol=1e-14)


def test_kfac_refreshes_factors_every_update_freq_steps():
    x, y = _problem()
    model = _model()
    opt = build_optimizer("kfac", model, 1e-3, update_freq=3)
    snapshots = []
    for _ in range(7):
        _step(model, opt, x, y)
        snapshots.append(opt.state_dict()["kfac"]["inverses"]["layers.0"][0].clone())
    changed = [k for k in range(1, 7) if not torch.equal(snapshots[k], snapshots[k - 1])]
    assert changed == [3, 6]  # refreshed on steps 0, 3, 6 (the parameters move every step)


def test_kfac_refresh_without_a_forward_is_an_error():
    x, y = _problem()
    model = _model()
    opt = build_optimizer("kfac", model, 1e-3)
    with torch.no_grad():
        model(x)  # forwards without gradients are not recorded
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    with pytest.raises(RuntimeError, match="refresh is due"):
        opt.step()


def test_shampoo_is_pytorch_optimizer_shampoo_and_moves_every_parameter():
    from pytorch_optimizer import Shampoo

    x, y = _problem()
    model = _model()
    opt = build_optimizer("shampoo", model, default_lr("shampoo", "gaussian"))
    assert type(opt) is Shampoo
    before = [p.detach().clone() for p in model.parameters()]
    _step(model, opt, x, y)
    for p, b in zip(model.parameters(), before):
        assert not torch.equal(p, b)


def test_the_inverse_time_decay_span_is_one_epoch_of_the_run(tmp_path):
    """--schedule inverse-time (ESGD's former default) halves the lr after one epoch of the run's own task."""
    from nf_precond_plugin.tasks.image import ImageConfig, ImageTask
    from nf_precond_plugin.training.runner import RunSettings, build_run
    from nf_precond_plugin.training.schedules import ScheduleChoice

    task = ImageTask(ImageConfig(size=24, hidden_features=8, num_layers=2))
    settings = RunSettings(
        ["esgd", "adam"], {"esgd": 1.0, "adam": 1e-3}, epochs=3, batch_size=96,
        schedules={"esgd": ScheduleChoice("inverse-time"), "adam": ScheduleChoice("constant")},
    )  # fmt: skip
    steps_per_epoch = 24 * 24 // 96
    esgd = build_run(task, settings, "esgd", task.build_model().state_dict(), tmp_path)
    factors = [esgd.scheduler.lr_lambdas[0](k) for k in (0, steps_per_epoch, 2 * steps_per_epoch)]
    assert factors == pytest.approx([1.0, 1 / 2, 1 / 3])  # halved after one epoch, a third after two
    adam = build_run(task, settings, "adam", task.build_model().state_dict(), tmp_path)
    assert adam.scheduler.lr_lambdas[0](2 * steps_per_epoch) == 1.0  # constant


def test_schedule_free_runs_turn_the_base_momentum_off_unless_asked(tmp_path):
    """Schedule-free averaging replaces a wrapped optimizer's β₁ with 0 (β₂ kept); betas given by
    the user stay; an optimizer that averages by itself (ScheduleFreeAdamW) is neither wrapped nor changed."""
    from pytorch_optimizer import ScheduleFreeAdamW

    from nf_precond_plugin.optim.schedule_free import ScheduleFree
    from nf_precond_plugin.tasks.image import ImageConfig, ImageTask
    from nf_precond_plugin.training.runner import RunSettings, build_run
    from nf_precond_plugin.training.schedules import ScheduleChoice

    task = ImageTask(ImageConfig(size=24, hidden_features=8, num_layers=3))
    names = ["esgd", "adam", "sf-adamw", "muon"]
    free = ScheduleChoice("schedule-free")

    def built(name: str, **args):
        settings = RunSettings(
            names, dict.fromkeys(names, 1e-3), epochs=2, batch_size=96,
            schedules=dict.fromkeys(names, free), optimizer_args={name: args},
        )  # fmt: skip
        return build_run(task, settings, name, task.build_model().state_dict(), tmp_path).optimizer

    esgd, adam = built("esgd"), built("adam")
    assert isinstance(esgd, ScheduleFree) and esgd.param_groups[0]["betas"] == (0.0, 0.9)
    assert isinstance(adam, ScheduleFree) and adam.param_groups[0]["betas"] == (0.0, 0.999)
    assert built("esgd", betas=(0.5, 0.8)).param_groups[0]["betas"] == (0.5, 0.8)
    sf_adamw = built("sf-adamw")
    assert type(sf_adamw) is ScheduleFreeAdamW and sf_adamw.param_groups[0]["betas"] == (0.9, 0.999)
    assert isinstance(built("muon"), ScheduleFree)  # no betas: nothing to turn off
    # the default run of ESGD is this one
    settings = RunSettings(["esgd"], {"esgd": 1.0}, epochs=2, batch_size=96)
    default = build_run(task, settings, "esgd", task.build_model().state_dict(), tmp_path).optimizer
    assert isinstance(default, ScheduleFree) and default.param_groups[0]["betas"] == (0.0, 0.9)
