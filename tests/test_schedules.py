"""Schedules against torch's own schedulers and closed forms; schedule-free averaging against a
hand-computed recurrence."""

from __future__ import annotations

import math

import pytest
import torch

from nf_precond_plugin.optim import ESGD
from nf_precond_plugin.optim.schedule_free import ScheduleFree
from nf_precond_plugin.training.schedules import Schedule, lr_scheduler
from nf_precond_plugin.training.step import training_step

N = 40
LR = 0.3


def lrs(schedule: Schedule, steps: int = N) -> list[float]:
    """The lr of each of ``steps`` optimizer steps under ``schedule``, as torch applies it."""
    return torch_lrs(lambda optimizer: lr_scheduler(optimizer, schedule), steps)


def torch_lrs(make, steps: int = N) -> list[float]:
    """The lr of each of ``steps`` optimizer steps under the scheduler ``make(optimizer)`` builds."""
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=LR)
    scheduler = make(optimizer)
    seen = []
    for _ in range(steps):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return seen


def test_constant():
    assert lrs(Schedule("constant", N)) == [LR] * N


def test_inverse_time_halves_after_T_steps_and_thirds_after_2T():
    got = lrs(Schedule("inverse-time", N, decay_steps=8))
    assert got == pytest.approx([LR / (1 + k / 8) for k in range(N)], rel=1e-15)
    assert got[8] == pytest.approx(LR / 2) and got[16] == pytest.approx(LR / 3)


def test_exponential_matches_torchs_exponential_lr_and_ends_at_the_fraction():
    got = lrs(Schedule("exponential", N, end_fraction=0.1), N + 1)
    want = torch_lrs(lambda opt: torch.optim.lr_scheduler.ExponentialLR(opt, gamma=0.1 ** (1 / N)), N + 1)
    assert got == pytest.approx(want, rel=1e-12)
    assert got[N] == pytest.approx(LR * 0.1, rel=1e-12)


def test_cosine_matches_torchs_cosine_annealing():
    got = lrs(Schedule("cosine", N, end_fraction=0.0), N + 1)
    want = torch_lrs(lambda opt: torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=N), N + 1)
    assert got == pytest.approx(want, rel=1e-12, abs=1e-15)
    assert got[N // 2] == pytest.approx(LR / 2)


def test_linear_warmup_then_cosine_to_a_fraction():
    W, rho = 5, 0.2
    got = lrs(Schedule("cosine", N, warmup_steps=W, end_fraction=rho))
    assert got[:W] == pytest.approx([LR * (k + 1) / W for k in range(W)])
    for k in range(W, N):
        progress = (k - W) / (N - W)
        assert got[k] == pytest.approx(LR * (rho + (1 - rho) * 0.5 * (1 + math.cos(math.pi * progress))))


def test_schedule_free_lr_is_constant_after_its_warmup():
    assert lrs(Schedule("schedule-free", N, warmup_steps=4)) == pytest.approx(
        [LR * 0.25, LR * 0.5, LR * 0.75] + [LR] * (N - 3)
    )


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        (dict(name="linear"), "schedule"),
        (dict(name="cosine", warmup_steps=-1), "warmup_steps"),
        (dict(name="cosine", warmup_steps=N + 1), "warmup_steps"),
        (dict(name="exponential", end_fraction=0.0), "end_fraction"),
        (dict(name="cosine", end_fraction=1.5), "end_fraction"),
        (dict(name="inverse-time", decay_steps=0), "decay_steps"),
    ],
)
def test_bad_schedules_are_refused(kwargs, fragment):
    with pytest.raises(ValueError, match=fragment):
        Schedule(total_steps=N, **kwargs)


# ----------------------------------------------------------------------------------------------
# schedule-free averaging
# ----------------------------------------------------------------------------------------------


def test_schedule_free_sgd_follows_the_hand_computed_recurrence_on_a_quadratic():
    """f(θ) = ½ a θ², base SGD at γ: three steps of z, x, y written out by hand."""
    a, theta0, gamma, beta = 3.0, 2.0, 0.1, 0.9
    theta = torch.nn.Parameter(torch.tensor([theta0], dtype=torch.float64))
    optimizer = ScheduleFree(torch.optim.SGD([theta], lr=gamma), beta=beta)
    ys = []
    for _ in range(3):
        optimizer.zero_grad()
        (0.5 * a * theta.square()).sum().backward()
        optimizer.step()
        ys.append(float(theta.detach()))
    # by hand: c_1 = 1, c_2 = 1/2, c_3 = 1/3 (constant lr)
    y0 = z0 = theta0  # and x0: with c_1 = 1, x1 = z1 whatever x0 is
    z1 = z0 - gamma * a * y0
    x1 = z1
    y1 = (1 - beta) * z1 + beta * x1
    z2 = z1 - gamma * a * y1
    x2 = x1 + (z2 - x1) / 2
    y2 = (1 - beta) * z2 + beta * x2
    z3 = z2 - gamma * a * y2
    x3 = x2 + (z3 - x2) / 3
    y3 = (1 - beta) * z3 + beta * x3
    assert ys == pytest.approx([y1, y2, y3], rel=1e-14)
    optimizer.eval()
    assert float(theta.detach()) == pytest.approx(x3, rel=1e-14)  # evaluation at the average
    optimizer.train()
    assert float(theta.detach()) == ys[-1]  # back to y exactly


def _field():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(2, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1)).double()


def test_schedule_free_esgd_takes_hvps_and_resumes_bit_identically_from_an_eval_mode_checkpoint():
    x = torch.rand(32, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    y = torch.sin(3 * x).sum(1, keepdim=True)

    def run(model, optimizer, steps):
        for _ in range(steps):
            training_step([optimizer], lambda: ((model(x) - y).square().mean(), None))

    whole = _field()
    full = ScheduleFree(ESGD(whole.parameters(), lr=0.5, d_warmup=3, update_d_every=4, probe_seed=2))
    run(whole, full, 12)
    assert all(full.base.state[p]["hvp_count"] > 1 for p in whole.parameters())  # H·v taken at y

    part = _field()
    first = ScheduleFree(ESGD(part.parameters(), lr=0.5, d_warmup=3, update_d_every=4, probe_seed=2))
    run(part, first, 5)
    first.eval()  # checkpoints are taken at the averaged weights
    saved_model = {k: v.clone() for k, v in part.state_dict().items()}
    saved = first.state_dict()

    resumed = _field()
    resumed.load_state_dict(saved_model)
    second = ScheduleFree(ESGD(resumed.parameters(), lr=0.5, d_warmup=3, update_d_every=4, probe_seed=2))
    second.load_state_dict(saved)
    second.train()
    run(resumed, second, 7)
    for a, b in zip(whole.parameters(), resumed.parameters()):
        assert torch.equal(a, b)


def test_a_resumed_muon_follows_its_schedule_on_both_inner_optimizers():
    """MuonAdam hands its groups to Muon and Adam; after load_state_dict they must still be the
    groups the scheduler writes, or the lr freezes at its checkpoint value."""
    from nf_precond_plugin.optim.hybrids import MuonAdam

    def build():
        torch.manual_seed(0)
        model = torch.nn.Sequential(
            torch.nn.Linear(2, 8), torch.nn.Tanh(), torch.nn.Linear(8, 8), torch.nn.Linear(8, 1)
        )
        optimizer = MuonAdam(model, lr=0.02, adam_lr=1e-3)
        return model, optimizer, lr_scheduler(optimizer, Schedule("cosine", 10, end_fraction=0.0))

    def step(model, optimizer, scheduler):
        training_step([optimizer], lambda: (model(torch.ones(4, 2)).square().mean(), None))
        scheduler.step()
        return optimizer.muon.param_groups[0]["lr"], optimizer.adam.param_groups[0]["lr"]

    model, optimizer, scheduler = build()
    whole = [step(model, optimizer, scheduler) for _ in range(6)]
    model, optimizer, scheduler = build()
    first = [step(model, optimizer, scheduler) for _ in range(3)]
    saved_model, saved, saved_scheduler = model.state_dict(), optimizer.state_dict(), scheduler.state_dict()
    model, optimizer, scheduler = build()
    model.load_state_dict(saved_model)
    optimizer.load_state_dict(saved)
    scheduler.load_state_dict(saved_scheduler)
    assert first + [step(model, optimizer, scheduler) for _ in range(3)] == whole
    assert whole[-1][0] == pytest.approx(0.02 * 0.5 * (1 + math.cos(math.pi * 6 / 10)))  # cosine, not frozen
