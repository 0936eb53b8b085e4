"""Oracles for the clipped ESGD rule (the default): a closed-form recurrence on a separable quadratic,
the step bound, bounded steps where H·v is exactly zero (ReLU), bit-identical resume, and the new
curvature pieces (inverse-time lr, clip, zero fraction)."""

from __future__ import annotations

import inspect
import math

import pytest
import torch

from nf_precond_plugin.curvature import clip_foreach_, zero_fraction
from nf_precond_plugin.optim import ESGD, ESGDMax, PaperESGD
from nf_precond_plugin.training.schedules import Schedule, lr_scheduler
from nf_precond_plugin.training.step import training_step

F64 = torch.float64


def inverse_time(optimizer, decay_steps: int, total_steps: int = 1000):
    """The run schedule the project's ESGD trains under by default: lr / (1 + k/T) at 0-based step k."""
    return lr_scheduler(optimizer, Schedule("inverse-time", total_steps, decay_steps=decay_steps))


def inverse_time_lr(lr: float, t: int, decay_steps: int) -> float:
    return lr / (1 + (t - 1) / decay_steps)  # at 1-based step t


def test_clip_and_zero_fraction_by_hand():
    u = [torch.tensor([-1.0, -0.001, 0.0, 0.002, 5.0])]
    clip_foreach_(u, 0.002)
    assert u[0].tolist() == pytest.approx([-0.002, -0.001, 0.0, 0.002, 0.002])
    assert float(zero_fraction(torch.tensor([0.0, 1.0, 0.0, -2.0]))) == 0.5
    assert float(zero_fraction(torch.zeros(0))) == 0.0


def separable_recurrence(a, theta0, steps, lr, beta1, beta2, eps, clip, decay, warmup, every):
    """L(θ) = ½ Σ aᵢ θᵢ², so g = a ⊙ θ and H v = a ⊙ v: every (Hv)² sample is exactly a², whatever v."""
    theta, m, d = list(theta0), [0.0] * len(a), [0.0] * len(a)
    samples, last, out = 0, None, []
    for k in range(steps):  # k: 0-based step, t = k + 1
        t = k + 1
        curvature_step = k < warmup or last is None or k - last >= every
        if curvature_step:
            samples, last = samples + 1, k
            d = [beta2 * di + (1 - beta2) * ai**2 for di, ai in zip(d, a)]
        lr_t = lr / (1 + (t - 1) / decay)
        for i, ai in enumerate(a):
            g = ai * theta[i]
            m[i] = beta1 * m[i] + (1 - beta1) * g
            u = (m[i] / (1 - beta1**t)) / (math.sqrt(d[i] / (1 - beta2**samples)) + eps)
            theta[i] -= lr_t * max(-clip, min(clip, u))
        out.append(list(theta))
    return out


def test_clipped_rule_matches_its_closed_form_recurrence_on_a_separable_quadratic():
    a = [4.0, 0.5, 0.01, 2.0]  # 0.01: a nearly flat direction, where the clip binds
    theta0 = [1.0, -2.0, 3.0, 0.05]
    hp = dict(lr=0.7, betas=(0.8, 0.6), eps=1e-3, clip=0.05, d_warmup=3, update_d_every=4)
    theta = torch.nn.Parameter(torch.tensor(theta0, dtype=F64))
    curvature = torch.tensor(a, dtype=F64)
    opt = ESGD([theta], **hp)
    schedule = inverse_time(opt, 5)
    got = []
    for _ in range(30):
        training_step([opt], lambda: (0.5 * (curvature * theta.square()).sum(), None))
        schedule.step()
        got.append(theta.detach().tolist())
    want = separable_recurrence(a, theta0, 30, hp["lr"], *hp["betas"], hp["eps"], hp["clip"], 5, 3, 4)
    assert torch.tensor(got) == pytest.approx(torch.tensor(want), rel=1e-12, abs=1e-14)
    # the oracle exercised both regimes: clipped steps and curvature-scaled ones
    steps = torch.tensor([theta0] + want).diff(dim=0).abs()
    bounds = torch.tensor([hp["lr"] * hp["clip"] / (1 + k / 5) for k in range(30)])[:, None]
    assert bool((steps >= bounds * (1 - 1e-9)).any()) and bool((steps < bounds * 0.5).any())


def _small_field(activation: str, seed: int = 0) -> torch.nn.Module:
    from nf_precond_plugin.fields import CoordinateMLP

    torch.manual_seed(seed)
    # float64, so that a parameter's change is measured without float32 rounding of θ itself
    return CoordinateMLP(2, 3, hidden_features=24, num_layers=3, activation=activation, sigma=0.2).double()


def _train_and_record_steps(model, opt, steps: int, seed: int = 0, schedule=None):
    generator = torch.Generator().manual_seed(seed)
    x = torch.rand(128, 2, generator=generator, dtype=F64) * 2 - 1
    y = torch.rand(128, 3, generator=generator, dtype=F64)
    deltas = []
    for _ in range(steps):
        before = [p.detach().clone() for p in model.parameters()]
        training_step([opt], lambda: ((model(x) - y).square().mean(), None))
        if schedule is not None:
            schedule.step()
        deltas.append(max(float((p.detach() - b).abs().max()) for p, b in zip(model.parameters(), before)))
    return deltas


@pytest.mark.parametrize("activation", ["gaussian", "relu"])
def test_every_step_is_bounded_by_lr_t_times_the_clip(activation):
    model = _small_field(activation)
    opt = ESGD(model.parameters(), lr=0.8, clip=0.01, d_warmup=5, update_d_every=3)
    deltas = _train_and_record_steps(model, opt, 40, schedule=inverse_time(opt, 10))
    for t, delta in enumerate(deltas, start=1):
        assert delta <= inverse_time_lr(0.8, t, 10) * 0.01 * (1 + 1e-6), (t, delta)
    assert max(deltas) > 0


def test_a_relu_network_with_exactly_zero_hv_entries_takes_bounded_steps():
    """Dead ReLU units give H·v = 0 exactly: the paper's rule divides by ε there, the clipped rule does not."""
    model = _small_field("relu")
    with torch.no_grad():
        model.layers[1].bias.fill_(-50.0)  # the second hidden layer's units are dead: zero curvature behind them
    paper_model = _small_field("relu")
    paper_model.load_state_dict(model.state_dict())
    clipped = ESGD(model.parameters(), lr=1.0, clip=3e-3, d_warmup=3, update_d_every=5)
    paper = PaperESGD(paper_model.parameters(), lr=0.1, d_warmup=3, update_d_every=5)
    clipped_steps = _train_and_record_steps(model, clipped, 10)
    paper_steps = _train_and_record_steps(paper_model, paper, 10)
    assert all(math.isfinite(d) and d <= 3e-3 * (1 + 1e-6) for d in clipped_steps)
    assert max(paper_steps) > 10 * max(clipped_steps)  # lr·m/(√D + ε), D ≈ 0: unbounded
    fractions = [float(clipped.state[p]["zero_fraction"]) for p in model.parameters()]
    assert max(fractions) >= 0.5  # measured, so those tensors took the sparse-curvature step
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_resume_matches_an_uninterrupted_run_exactly():
    torch.manual_seed(0)
    x, y = torch.rand(64, 2, dtype=F64) * 2 - 1, torch.rand(64, 3, dtype=F64)
    hp = dict(lr=0.5, clip=0.01, d_warmup=2, update_d_every=3)

    def run(model, opt, schedule, steps):
        for _ in range(steps):
            training_step([opt], lambda: ((model(x) - y).square().mean(), None))
            schedule.step()

    whole = _small_field("gaussian")
    torch.manual_seed(3)
    opt = ESGD(whole.parameters(), **hp)
    run(whole, opt, inverse_time(opt, 7), 20)

    part = _small_field("gaussian")
    torch.manual_seed(3)
    first = ESGD(part.parameters(), **hp)
    first_schedule = inverse_time(first, 7)
    run(part, first, first_schedule, 9)
    saved, saved_schedule, rng = first.state_dict(), first_schedule.state_dict(), torch.get_rng_state()
    second = ESGD(part.parameters(), lr=0.1, clip=0.5, d_warmup=30, update_d_every=1)
    second_schedule = inverse_time(second, 7)  # the schedule is the run's: rebuilt from its record
    second.load_state_dict(saved)  # H·v schedule, hyperparameters and state all come from the checkpoint
    second_schedule.load_state_dict(saved_schedule)  # and where in it the run was
    torch.set_rng_state(rng)
    run(part, second, second_schedule, 11)
    for a, b in zip(whole.parameters(), part.parameters()):
        assert torch.equal(a, b)


@pytest.mark.parametrize(
    "kwargs, option",
    [
        (dict(clip=0.0), "clip"),
        (dict(sparse_threshold=0.0), "sparse_threshold"),
    ],
)
def test_invalid_clipped_hyperparameters(kwargs, option):
    with pytest.raises(ValueError, match=option.replace("(", r"\(")):
        ESGD([torch.nn.Parameter(torch.zeros(2))], **kwargs)


def test_a_tensor_with_mostly_zero_curvature_takes_adams_step_scaled_to_the_clip():
    """L = Σᵢ ½ aᵢ θᵢ² + cᵢ θᵢ with a = 0 on 3 of 4 coordinates: H v is exactly zero there (75 % ≥ 50 %),
    so the whole tensor steps by ρ · clip(m̂ / (√v̂ + 1e-8), ±1), v̂ Adam's debiased EMA (β = 0.999) of g²."""
    a, c = [0.0, 0.0, 20.0, 0.0], [0.3, -1.0, 0.5, 0.02]  # coordinate 2 oscillates: |m̂/√v̂| < 1 there
    lr, beta1, clip, decay = 0.9, 0.8, 0.05, 6
    theta0 = [1.0, -0.5, 0.25, 2.0]
    theta = torch.nn.Parameter(torch.tensor(theta0, dtype=F64))
    curvature, linear = torch.tensor(a, dtype=F64), torch.tensor(c, dtype=F64)
    opt = ESGD([theta], lr=lr, betas=(beta1, 0.7), clip=clip, d_warmup=2, update_d_every=3)
    want, m, v, x = [], [0.0] * 4, [0.0] * 4, list(theta0)
    for t in range(1, 13):
        g = [ai * xi + ci for ai, xi, ci in zip(a, x, c)]
        m = [beta1 * mi + (1 - beta1) * gi for mi, gi in zip(m, g)]
        v = [0.999 * vi + 0.001 * gi * gi for vi, gi in zip(v, g)]
        lr_t = lr / (1 + (t - 1) / decay)
        for i in range(4):
            u = (m[i] / (1 - beta1**t)) / (math.sqrt(v[i] / (1 - 0.999**t)) + 1e-8)
            x[i] -= lr_t * clip * max(-1.0, min(1.0, u))
        want.append(list(x))

    def trajectory(optimizer, param):
        schedule, out = inverse_time(optimizer, decay), []
        for _ in range(12):
            training_step([optimizer], lambda: ((0.5 * curvature * param.square() + linear * param).sum(), None))
            schedule.step()
            out.append(param.detach().tolist())
        return torch.tensor(out)

    assert trajectory(opt, theta) == pytest.approx(torch.tensor(want), rel=1e-12, abs=1e-14)
    assert float(opt.state[theta]["zero_fraction"]) == 0.75
    # the oracle tells the two regimes apart: without the fallback the same problem goes elsewhere
    dense = torch.nn.Parameter(torch.tensor(theta0, dtype=F64))
    kwargs = dict(lr=lr, betas=(beta1, 0.7), clip=clip, d_warmup=2, update_d_every=3)
    unprotected = trajectory(ESGD([dense], sparse_threshold=1.0, **kwargs), dense)
    assert float((unprotected - torch.tensor(want)).abs().max()) > 1e-3


@pytest.mark.parametrize("cls", [ESGD, PaperESGD, ESGDMax])
def test_every_rule_shows_its_defaults_in_its_signature(cls):
    """--help, inspect.signature and the nerfstudio configs read these: no None standing for 'the rule's value'."""
    shown = {name: p.default for name, p in inspect.signature(cls).parameters.items() if name != "params"}
    optional = {"process_group", "probe_seed"}  # a live group / a seed drawn at construction
    assert all(value is not None for name, value in shown.items() if name not in optional), shown
    group = cls([torch.nn.Parameter(torch.zeros(2))]).param_groups[0]
    for name, value in shown.items():
        if name in group:
            assert group[name] == (tuple(value) if isinstance(value, tuple) else value), name


@pytest.mark.parametrize(
    "cls, foreign",
    [
        (ESGD, "bias_correction"),
        (PaperESGD, "clip"),
        (ESGDMax, "sparse_threshold"),
        (ESGD, "rule"),
        (ESGD, "lr_decay_steps"),
    ],
)
def test_an_argument_of_another_rule_is_refused_by_python(cls, foreign):
    with pytest.raises(TypeError, match=foreign):
        cls([torch.nn.Parameter(torch.zeros(2))], **{foreign: 1})
