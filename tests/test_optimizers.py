"""Oracle tests of ESGD and AdaHessian on a separable quadratic.

L(θ) = ½ Σ a_i θ_i² − Σ b_i θ_i, so g = aθ − b and H = diag(a): for any ±1 probe v,
Hv = a ⊙ v, h² = a² and v ⊙ h = a, deterministically. Each optimizer's trajectory must then
follow the recurrence written out below in plain Python floats, step for step.
"""

from __future__ import annotations

import copy
import math
import re
import warnings

import pytest
import torch

import nf_precond_plugin.optim.base as optim_base
from nf_precond_plugin.optim import ESGD, AdaHessian, ESGDMax, PaperESGD

# The paper's rules, whose closed forms these oracles state (the project's ESGD has its own tests).

F64 = torch.float64
HINT = "loss.backward(create_graph=opt.should_create_graph())"

# mixed signs and magnitudes; 10 coordinates split over a (2, 3) and a (4,) parameter
A = [3.0, -0.5, 0.01, 20.0, -7.0, 1.3, 0.2, -0.05, 4.0, 1e-3]
B = [1.0, 2.0, -0.3, 5.0, 0.7, -1.1, 0.0, 0.4, -2.0, 0.05]
THETA0 = [0.5, -1.0, 2.0, 0.1, -0.2, 0.0, 1.5, -0.7, 0.3, 3.0]


# ----------------------------------------------------------------------------------------------
# the problem
# ----------------------------------------------------------------------------------------------


def make_params() -> list[torch.Tensor]:
    p1 = torch.tensor(THETA0[:6], dtype=F64).view(2, 3).requires_grad_()
    p2 = torch.tensor(THETA0[6:], dtype=F64).requires_grad_()
    return [p1, p2]


_A1 = torch.tensor(A[:6], dtype=F64).view(2, 3)
_B1 = torch.tensor(B[:6], dtype=F64).view(2, 3)
_A2 = torch.tensor(A[6:], dtype=F64)
_B2 = torch.tensor(B[6:], dtype=F64)


def quadratic(params: list[torch.Tensor]) -> torch.Tensor:
    p1, p2 = params
    return 0.5 * (_A1 * p1 * p1).sum() - (_B1 * p1).sum() + 0.5 * (_A2 * p2 * p2).sum() - (_B2 * p2).sum()


def flat(params) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in params])


# ----------------------------------------------------------------------------------------------
# the reference recurrences, in plain Python floats
# ----------------------------------------------------------------------------------------------

# The schedules the spec gives as defaults.
DEFAULT_SCHEDULE = {"esgd": (100, 50), "esgd-max": (100, 50), "adahessian": (1, 1)}


def reference(
    family: str, a, b, theta0, num_steps: int, hp: dict, dense_h=None, probes=None
) -> tuple[list[list[float]], list[bool]]:
    """Trajectory θ after each step, and whether each step took a Hessian-vector product.

    By default H = diag(a). With ``dense_h`` (a list of rows) H is that matrix, g = Hθ − b, and
    the j-th HVP step uses ``probes[j]`` as its Rademacher vector.
    """
    every_default, warmup_default = DEFAULT_SCHEDULE[family]
    every = hp.get("update_d_every", every_default)
    warmup = hp.get("d_warmup", warmup_default)
    lr = hp["lr"]
    beta1, beta2 = hp["betas"]
    eps = hp["eps"]
    wd = hp.get("weight_decay", 0.0)
    bias_correction = hp.get("bias_correction", "paper")
    estimator = hp.get("estimator", "equilibration")
    power = hp.get("hessian_power", 1.0)

    n = len(theta0)
    theta = [float(x) for x in theta0]
    m = [0.0] * n
    D = [0.0] * n  # PaperESGD's D, AdaHessian's V or Z
    hvps = 0
    last = None
    trajectory, schedule = [], []
    for k in range(num_steps):
        t = k + 1
        if dense_h is None:
            g = [a[i] * theta[i] - b[i] for i in range(n)]
        else:
            g = [sum(dense_h[i][j] * theta[j] for j in range(n)) - b[i] for i in range(n)]
        due = k < warmup or k - last >= every
        schedule.append(due)
        if due:
            if dense_h is not None:
                v = probes[hvps]
                hv = [sum(dense_h[i][j] * v[j] for j in range(n)) for i in range(n)]
            hvps += 1
            last = k
        for i in range(n):
            if dense_h is None:
                h2 = a[i] * a[i]  # (Hv)_i² for any ±1 probe
                vh = a[i]  # v_i (Hv)_i for any ±1 probe
            elif due:
                h2 = hv[i] * hv[i]
                vh = v[i] * hv[i]
            if family == "esgd":
                if due:
                    D[i] = beta2 * D[i] + (1 - beta2) * h2
                m[i] = beta1 * m[i] + (1 - beta1) * g[i]
                count = t if bias_correction == "paper" else hvps
                denom = math.sqrt(D[i] / (1 - beta2**count)) + eps
                theta[i] = theta[i] * (1 - lr * wd)
                theta[i] = theta[i] - lr * (m[i] / (1 - beta1**t)) / denom
            elif family == "esgd-max":
                if due:
                    D[i] = max(beta2 * D[i], h2)
                denom = math.sqrt(D[i]) + eps
                m[i] = beta1 * m[i] + (1 - beta1) * g[i]
                nesterov = beta1 * m[i] + (1 - beta1) * g[i]
                s = lr * (1 - 0.99**hvps)
                theta[i] = theta[i] * (1 - s * wd)
                theta[i] = theta[i] - s * nesterov / (1 - beta1 ** (t + 1)) / denom
            else:  # adahessian
                m[i] = beta1 * m[i] + (1 - beta1) * g[i]
                if estimator == "equilibration":
                    if due:
                        D[i] = beta2 * D[i] + (1 - beta2) * h2
                    denom = math.sqrt(D[i] / (1 - beta2**hvps)) ** power + eps
                else:
                    if due:
                        D[i] = beta2 * D[i] + (1 - beta2) * vh
                    denom = abs(D[i] / (1 - beta2**hvps)) ** power + eps
                theta[i] = theta[i] - lr * (m[i] / (1 - beta1**t) / denom + wd * theta[i])
        trajectory.append(list(theta))
    return trajectory, schedule


CLASSES = {"esgd": PaperESGD, "esgd-max": ESGDMax, "adahessian": AdaHessian}


def run(opt, params, num_steps: int, loss_fn=quadratic, use_closure: bool = False):
    """The training-loop contract; returns θ after each step and should_create_graph() before it."""
    trajectory, graphs = [], []
    for _ in range(num_steps):
        graphs.append(opt.should_create_graph())
        if use_closure:
            returned = []

            def closure(returned=returned):
                opt.zero_grad(set_to_none=True)
                loss = loss_fn(params)
                loss.backward(create_graph=opt.should_create_graph())
                returned.append(loss)
                return loss

            out = opt.step(closure)
            assert len(returned) == 1 and out is returned[0]
        else:
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(params)
            loss.backward(create_graph=opt.should_create_graph())
            assert opt.step() is None
        trajectory.append(flat(params))
    return torch.stack(trajectory), graphs


def assert_trajectory(actual: torch.Tensor, expected: list[list[float]]) -> None:
    expected_t = torch.tensor(expected, dtype=F64)
    assert actual.shape == expected_t.shape
    torch.testing.assert_close(actual, expected_t, rtol=1e-10, atol=1e-12)


# (family, hyperparameters) — lr, betas, eps always given; the schedule defaults when absent
CONFIGS = {
    "esgd-ema-paper-7/3": ("esgd", dict(lr=0.05, betas=(0.9, 0.999), eps=1e-4, update_d_every=7, d_warmup=3)),
    "esgd-ema-hvp-7/3-wd": (
        "esgd",
        dict(
            lr=0.05,
            betas=(0.9, 0.999),
            eps=1e-4,
            update_d_every=7,
            d_warmup=3,
            bias_correction="hvp",
            weight_decay=0.01,
        ),
    ),
    "esgd-ema-paper-default-schedule": ("esgd", dict(lr=0.15, betas=(0.9, 0.999), eps=1e-4)),
    "esgd-ema-hvp-default-schedule-wd": (
        "esgd",
        dict(lr=0.1, betas=(0.9, 0.999), eps=1e-4, bias_correction="hvp", weight_decay=0.05),
    ),
    "esgd-ema-paper-betas-eps-2/1": (
        "esgd",
        dict(lr=0.02, betas=(0.5, 0.9), eps=1e-3, update_d_every=2, d_warmup=1, weight_decay=0.1),
    ),
    "esgd-max-7/3": ("esgd-max", dict(lr=0.05, betas=(0.9, 0.999), eps=1e-4, update_d_every=7, d_warmup=3)),
    "esgd-max-7/3-wd": (
        "esgd-max",
        dict(lr=0.05, betas=(0.9, 0.999), eps=1e-4, update_d_every=7, d_warmup=3, weight_decay=0.01),
    ),
    "esgd-max-default-schedule": ("esgd-max", dict(lr=0.15, betas=(0.9, 0.999), eps=1e-4)),
    "esgd-max-betas-eps-1/1-wd": (
        "esgd-max",
        dict(lr=0.1, betas=(0.8, 0.95), eps=1e-2, update_d_every=1, d_warmup=1, weight_decay=0.1),
    ),
    "adah-E-p1-default-schedule": ("adahessian", dict(lr=0.15, betas=(0.9, 0.999), eps=1e-4)),
    "adah-E-p0.5-default-schedule": ("adahessian", dict(lr=0.15, betas=(0.9, 0.999), eps=1e-4, hessian_power=0.5)),
    "adah-J-p1-default-schedule": ("adahessian", dict(lr=0.15, betas=(0.9, 0.999), eps=1e-4, estimator="jacobi")),
    "adah-J-p0.5-default-schedule": (
        "adahessian",
        dict(lr=0.15, betas=(0.9, 0.999), eps=1e-4, estimator="jacobi", hessian_power=0.5),
    ),
    "adah-E-p1-7/3-wd": (
        "adahessian",
        dict(lr=0.05, betas=(0.9, 0.999), eps=1e-4, update_d_every=7, d_warmup=3, weight_decay=0.01),
    ),
    "adah-J-p0.5-7/3-wd": (
        "adahessian",
        dict(
            lr=0.05,
            betas=(0.9, 0.999),
            eps=1e-4,
            update_d_every=7,
            d_warmup=3,
            weight_decay=0.01,
            estimator="jacobi",
            hessian_power=0.5,
        ),
    ),
    "adah-E-p0.5-betas-eps-4/10": (
        "adahessian",
        dict(lr=0.03, betas=(0.7, 0.9), eps=1e-3, update_d_every=4, d_warmup=10, hessian_power=0.5),
    ),
    "adah-J-p1-betas-eps-4/10-wd": (
        "adahessian",
        dict(lr=0.03, betas=(0.7, 0.9), eps=1e-3, update_d_every=4, d_warmup=10, estimator="jacobi", weight_decay=0.02),
    ),
    "adah-J-p0-7/3": (
        "adahessian",
        dict(
            lr=0.01, betas=(0.9, 0.999), eps=1e-4, update_d_every=7, d_warmup=3, estimator="jacobi", hessian_power=0.0
        ),
    ),
}

NUM_STEPS = 300


def _build(config_id: str):
    family, hp = CONFIGS[config_id]
    params = make_params()
    return family, hp, params, CLASSES[family](params, **hp)


# ----------------------------------------------------------------------------------------------
# 6. closed-form recurrences
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("config_id", list(CONFIGS))
def test_trajectory_matches_recurrence(config_id):
    family, hp, params, opt = _build(config_id)
    actual, graphs = run(opt, params, NUM_STEPS)
    expected, schedule = reference(family, A, B, THETA0, NUM_STEPS, hp)
    assert graphs == schedule
    assert_trajectory(actual, expected)
    assert float((actual[-1] - torch.tensor(THETA0, dtype=F64)).abs().min()) > 1e-3  # every coordinate moved


@pytest.mark.parametrize(
    "config_id", ["esgd-ema-hvp-7/3-wd", "esgd-max-7/3-wd", "adah-E-p1-7/3-wd", "adah-J-p0.5-7/3-wd"]
)
def test_step_with_closure_returns_loss_and_matches_recurrence(config_id):
    family, hp, params, opt = _build(config_id)
    actual, graphs = run(opt, params, 60, use_closure=True)
    expected, schedule = reference(family, A, B, THETA0, 60, hp)
    assert graphs == schedule
    assert_trajectory(actual, expected)


# ----------------------------------------------------------------------------------------------
# 5. the schedule, seen through should_create_graph()
# ----------------------------------------------------------------------------------------------


def test_esgd_default_schedule_through_optimizer():
    params = make_params()
    opt = PaperESGD(params, lr=0.01)
    _, graphs = run(opt, params, 400)
    hvp_steps = set(range(50)) | set(range(149, 400, 100))
    assert sorted(hvp_steps)[-3:] == [149, 249, 349]
    assert graphs == [k in hvp_steps for k in range(400)]


def test_adahessian_default_schedule_every_step():
    params = make_params()
    opt = AdaHessian(params, lr=0.01)
    _, graphs = run(opt, params, 120)
    assert graphs == [True] * 120


# ----------------------------------------------------------------------------------------------
# 7. hyperparameter validation
# ----------------------------------------------------------------------------------------------

COMMON_BAD = [
    (dict(lr=-1e-3), "lr"),
    (dict(lr=float("nan")), "lr"),
    (dict(betas=(1.0, 0.999)), "beta"),
    (dict(betas=(0.9, 1.0)), "beta"),
    (dict(betas=(-0.1, 0.999)), "beta"),
    (dict(betas=(0.9, -0.5)), "beta"),
    (dict(betas=(0.9,)), "beta"),
    (dict(betas=(0.9, 0.99, 0.5)), "beta"),
    (dict(eps=-1e-8), "eps"),
    (dict(weight_decay=-0.1), "weight_decay"),
    (dict(update_d_every=0), "update_d_every"),
    (dict(update_d_every=-3), "update_d_every"),
    (dict(update_d_every=2.5), "update_d_every"),
    (dict(d_warmup=0), "d_warmup"),
    (dict(d_warmup=-1), "d_warmup"),
]


@pytest.mark.parametrize("cls", [ESGD, PaperESGD, ESGDMax, AdaHessian])
@pytest.mark.parametrize(
    "kwargs, option", COMMON_BAD, ids=[f"{list(k)[0]}={list(k.values())[0]}" for k, _ in COMMON_BAD]
)
def test_invalid_common_hyperparameters(cls, kwargs, option):
    with pytest.raises(ValueError, match=re.escape(option)):
        cls(make_params(), **kwargs)


@pytest.mark.parametrize(
    "cls, kwargs, option",
    [
        (PaperESGD, dict(bias_correction="none"), "bias_correction"),
        (AdaHessian, dict(estimator="gauss-newton"), "estimator"),
        (AdaHessian, dict(hessian_power=1.5), "hessian_power"),
        (AdaHessian, dict(hessian_power=-0.1), "hessian_power"),
        (AdaHessian, dict(hessian_power=float("nan")), "hessian_power"),
    ],
)
def test_invalid_specific_hyperparameters(cls, kwargs, option):
    with pytest.raises(ValueError, match=re.escape(option)):
        cls(make_params(), **kwargs)


@pytest.mark.parametrize(
    "cls, kwargs",
    [
        (PaperESGD, dict(lr=0.0, betas=(0.0, 0.0), eps=0.0, weight_decay=0.0, update_d_every=1, d_warmup=1)),
        (PaperESGD, dict(bias_correction="hvp")),
        (ESGDMax, dict(lr=0.0, betas=(0.0, 0.0), eps=0.0, weight_decay=0.0, update_d_every=1, d_warmup=1)),
        (AdaHessian, dict(lr=0.0, betas=(0.0, 0.0), eps=0.0, hessian_power=0.0, update_d_every=1, d_warmup=1)),
        (AdaHessian, dict(estimator="jacobi", hessian_power=1.0)),
    ],
)
def test_boundary_hyperparameters_accepted(cls, kwargs):
    cls(make_params(), **kwargs)


# ----------------------------------------------------------------------------------------------
# 8. param groups, params without grad, sparse gradients, missing graph
# ----------------------------------------------------------------------------------------------


@pytest.fixture
def hvp_calls(monkeypatch):
    calls = []
    original = optim_base.hvp

    def counting_hvp(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(optim_base, "hvp", counting_hvp)
    return calls


def _run_counting(opt, params, num_steps, hvp_calls):
    trajectory, graphs, per_step = [], [], []
    for _ in range(num_steps):
        graphs.append(opt.should_create_graph())
        before = len(hvp_calls)
        opt.zero_grad(set_to_none=True)
        quadratic(params).backward(create_graph=opt.should_create_graph())
        opt.step()
        per_step.append(len(hvp_calls) - before)
        trajectory.append(flat(params))
    return torch.stack(trajectory), graphs, per_step


GROUP_CASES = {
    "esgd-ema-same-schedule": (
        "esgd",
        dict(lr=0.05, betas=(0.9, 0.999), eps=1e-4, update_d_every=7, d_warmup=3),
        dict(lr=0.01, betas=(0.8, 0.99), weight_decay=0.02, bias_correction="hvp"),
    ),
    "esgd-max-same-schedule": (
        "esgd-max",
        dict(lr=0.05, betas=(0.9, 0.999), eps=1e-4, update_d_every=7, d_warmup=3),
        dict(lr=0.02, betas=(0.8, 0.99), eps=1e-3),
    ),
    "esgd-different-schedules": (
        "esgd",
        dict(lr=0.05, betas=(0.9, 0.999), eps=1e-4, update_d_every=3, d_warmup=1),
        dict(lr=0.03, update_d_every=5, d_warmup=2),
    ),
    "adah-E-vs-J": (
        "adahessian",
        dict(lr=0.05, betas=(0.9, 0.999), eps=1e-4, update_d_every=7, d_warmup=3),
        dict(lr=0.01, estimator="jacobi", hessian_power=0.5, weight_decay=0.01),
    ),
    "adah-different-schedules": (
        "adahessian",
        dict(lr=0.05, betas=(0.9, 0.999), eps=1e-4, update_d_every=4, d_warmup=1, hessian_power=0.5),
        dict(lr=0.02, update_d_every=6, d_warmup=5, betas=(0.5, 0.9)),
    ),
}


@pytest.mark.parametrize("case", list(GROUP_CASES))
def test_param_groups_follow_their_own_recurrence_with_one_hvp_per_step(case, hvp_calls):
    family, defaults, overrides = GROUP_CASES[case]
    p1, p2 = make_params()
    opt = CLASSES[family]([{"params": [p1]}, {"params": [p2], **overrides}], **defaults)
    num_steps = 120
    actual, graphs, per_step = _run_counting(opt, [p1, p2], num_steps, hvp_calls)

    hp1 = dict(defaults)
    hp2 = {**defaults, **overrides}
    expected1, schedule1 = reference(family, A[:6], B[:6], THETA0[:6], num_steps, hp1)
    expected2, schedule2 = reference(family, A[6:], B[6:], THETA0[6:], num_steps, hp2)
    assert_trajectory(actual[:, :6], expected1)
    assert_trajectory(actual[:, 6:], expected2)
    any_due = [d1 or d2 for d1, d2 in zip(schedule1, schedule2)]
    assert graphs == any_due
    assert per_step == [int(d) for d in any_due]  # a single HVP, and only when some group is due
    assert (schedule1 != schedule2) == ("schedules" in case)


@pytest.mark.parametrize("config_id", ["esgd-ema-paper-7/3", "esgd-max-7/3", "adah-E-p1-7/3-wd", "adah-J-p0.5-7/3-wd"])
def test_params_without_grad_are_skipped(config_id):
    family, hp = CONFIGS[config_id]
    p_used = torch.tensor(THETA0[:6], dtype=F64).view(2, 3).requires_grad_()
    p_sometimes = torch.tensor(THETA0[6:], dtype=F64).requires_grad_()
    p_never = torch.tensor([1.0, -2.0, 3.0], dtype=F64, requires_grad=True)
    opt = CLASSES[family]([p_used, p_never, p_sometimes], **hp)
    absent = range(5, 12)

    def loss_at(k):
        loss = 0.5 * (_A1 * p_used * p_used).sum() - (_B1 * p_used).sum()
        if k not in absent:
            loss = loss + 0.5 * (_A2 * p_sometimes * p_sometimes).sum() - (_B2 * p_sometimes).sum()
        return loss

    used_traj = []
    for k in range(30):
        if k == absent.start:
            saved_value = p_sometimes.detach().clone()
            saved_state = copy.deepcopy(opt.state[p_sometimes])
            assert saved_state  # it has been stepped before
        opt.zero_grad(set_to_none=True)
        loss_at(k).backward(create_graph=opt.should_create_graph())
        assert p_never.grad is None
        opt.step()
        used_traj.append(p_used.detach().reshape(-1).clone())
        if k in absent:
            assert torch.equal(p_sometimes.detach(), saved_value)
            state = opt.state[p_sometimes]
            assert state.keys() == saved_state.keys()
            for key, value in saved_state.items():
                assert torch.equal(state[key], value) if torch.is_tensor(value) else state[key] == value
    assert not torch.equal(p_sometimes.detach(), saved_value)  # it resumed afterwards
    assert torch.equal(p_never.detach(), torch.tensor([1.0, -2.0, 3.0], dtype=F64))
    assert len(opt.state[p_never]) == 0
    expected, _ = reference(family, A[:6], B[:6], THETA0[:6], 30, hp)
    assert_trajectory(torch.stack(used_traj), expected)


@pytest.mark.parametrize("cls", [PaperESGD, AdaHessian])
def test_sparse_gradients_raise(cls):
    embedding = torch.nn.Embedding(10, 3, sparse=True).double()
    opt = cls(embedding.parameters())
    before = embedding.weight.detach().clone()
    opt.zero_grad(set_to_none=True)
    embedding(torch.tensor([1, 2, 2, 7])).square().sum().backward()
    assert embedding.weight.grad.is_sparse
    with pytest.raises(RuntimeError, match="sparse"):
        opt.step()
    assert torch.equal(embedding.weight.detach(), before)


@pytest.mark.parametrize("config_id", ["esgd-ema-paper-7/3", "esgd-max-7/3", "adah-E-p1-7/3-wd", "adah-J-p0.5-7/3-wd"])
@pytest.mark.parametrize("fail_at", [0, 9])  # both are HVP steps of the 7/3 schedule
def test_hvp_step_without_graph_raises_with_hint(config_id, fail_at):
    family, hp, params, opt = _build(config_id)
    trajectory = []
    for k in range(20):
        if k == fail_at:
            assert opt.should_create_graph()
            before_params = flat(params)
            before_state = copy.deepcopy(opt.state_dict())
            opt.zero_grad(set_to_none=True)
            quadratic(params).backward()  # the contract broken: no graph on an HVP step
            with pytest.raises(RuntimeError, match=re.escape(HINT)):
                opt.step()
            assert torch.equal(flat(params), before_params)
            assert_same_state(opt.state_dict(), before_state)
            assert opt.should_create_graph()
        opt.zero_grad(set_to_none=True)
        quadratic(params).backward(create_graph=opt.should_create_graph())
        opt.step()
        trajectory.append(flat(params))
    expected, _ = reference(family, A, B, THETA0, 20, hp)
    assert_trajectory(torch.stack(trajectory), expected)


def assert_same_state(actual: dict, expected: dict) -> None:
    assert actual["param_groups"] == expected["param_groups"]
    assert actual["state"].keys() == expected["state"].keys()
    for index, entries in expected["state"].items():
        assert actual["state"][index].keys() == entries.keys()
        for key, value in entries.items():
            if torch.is_tensor(value):
                assert torch.equal(actual["state"][index][key], value), (index, key)
            else:
                assert actual["state"][index][key] == value, (index, key)


# ----------------------------------------------------------------------------------------------
# 9. non-finite gradients and Hessian-vector products
# ----------------------------------------------------------------------------------------------


def faulty_quadratic(kind: str):
    def loss_fn(params):
        p1, _ = params
        loss = quadratic(params)
        x = p1.reshape(-1)[1]
        if kind == "nan_grad":
            return loss + x * float("nan")
        if kind == "inf_grad":
            return loss + x * float("inf")
        if kind == "inf_hv":
            # u ≡ 0 with du/dx = 1: the term adds 0 to the loss and 1.5·u^0.5 = 0 to the gradient,
            # but 0.75·u^-0.5 = inf to the Hessian's diagonal
            u = x - x.detach()
            return loss + u**1.5
        raise AssertionError(kind)

    return loss_fn


FAULT_CONFIGS = ["esgd-ema-hvp-7/3-wd", "esgd-max-7/3", "adah-E-p1-7/3-wd", "adah-J-p0.5-7/3-wd"]


@pytest.mark.parametrize("config_id", FAULT_CONFIGS)
@pytest.mark.parametrize(
    "kind, fault_at",
    [("nan_grad", 5), ("nan_grad", 9), ("inf_grad", 5), ("inf_grad", 9), ("inf_hv", 9), ("nan_grad", 0), ("inf_hv", 0)],
)
def test_non_finite_step_is_skipped(config_id, kind, fault_at):
    """Steps 0, 1, 2, 9, 16, ... take an HVP (7/3); a skipped step changes nothing, so the HVP is retried."""
    family, hp, params, opt = _build(config_id)
    num_calls = 30
    trajectory = []
    for call in range(num_calls):
        if call == fault_at:
            due_before = opt.should_create_graph()
            assert due_before == (fault_at != 5)
            before_params = flat(params)
            before_state = copy.deepcopy(opt.state_dict())
            opt.zero_grad(set_to_none=True)
            faulty_quadratic(kind)(params).backward(create_graph=opt.should_create_graph())
            if kind == "inf_hv":
                assert all(bool(torch.isfinite(p.grad).all()) for p in params)
            with pytest.warns(RuntimeWarning):
                opt.step()
            assert torch.equal(flat(params), before_params)
            assert_same_state(opt.state_dict(), before_state)
            assert opt.should_create_graph() == due_before  # the HVP schedule retries
            assert all(p.grad is None or p.grad.grad_fn is None for p in params)
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("error", RuntimeWarning)
            opt.zero_grad(set_to_none=True)
            quadratic(params).backward(create_graph=opt.should_create_graph())
            opt.step()
        trajectory.append(flat(params))
    expected, _ = reference(family, A, B, THETA0, num_calls - 1, hp)
    assert_trajectory(torch.stack(trajectory), expected)


@pytest.mark.parametrize("config_id", FAULT_CONFIGS)
def test_infinite_hessian_on_step_without_hvp_is_harmless(config_id):
    family, hp, params, opt = _build(config_id)
    trajectory = []
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        for k in range(20):
            loss_fn = faulty_quadratic("inf_hv") if k in (5, 6) else quadratic
            assert opt.should_create_graph() == (k in (0, 1, 2, 9, 16))
            opt.zero_grad(set_to_none=True)
            loss_fn(params).backward(create_graph=opt.should_create_graph())
            opt.step()
            trajectory.append(flat(params))
    expected, _ = reference(family, A, B, THETA0, 20, hp)
    assert_trajectory(torch.stack(trajectory), expected)


# ----------------------------------------------------------------------------------------------
# a non-separable quadratic: the probe must span all parameters, and Jacobi averages signed samples
# ----------------------------------------------------------------------------------------------

# symmetric, indefinite, strongly coupled across the two parameter tensors (coordinates 0-2 | 3-4)
DENSE_H = [
    [2.0, 1.5, -0.3, 0.8, 0.0],
    [1.5, -1.0, 0.4, -2.0, 0.6],
    [-0.3, 0.4, 0.5, 0.1, 1.2],
    [0.8, -2.0, 0.1, 3.0, -0.7],
    [0.0, 0.6, 1.2, -0.7, 0.05],
]
DENSE_B = [0.5, -1.0, 0.3, 0.0, 2.0]
DENSE_THETA0 = [1.0, -0.5, 0.25, 2.0, -1.5]


@pytest.mark.parametrize(
    "config_id",
    [
        "esgd-ema-paper-7/3",
        "esgd-ema-hvp-7/3-wd",
        "esgd-max-7/3-wd",
        "adah-E-p1-7/3-wd",
        "adah-J-p0.5-7/3-wd",
        "adah-J-p1-betas-eps-4/10-wd",
    ],
)
def test_dense_quadratic_matches_recurrence_with_recorded_probes(config_id, monkeypatch):
    family, hp = CONFIGS[config_id]
    recorded = []
    original = optim_base.rademacher_like

    def recording_rademacher_like(tensors, *args, **kwargs):
        probes = original(tensors, *args, **kwargs)
        recorded.append([float(x) for x in torch.cat([v.reshape(-1) for v in probes])])
        return probes

    monkeypatch.setattr(optim_base, "rademacher_like", recording_rademacher_like)
    H = torch.tensor(DENSE_H, dtype=F64)
    b = torch.tensor(DENSE_B, dtype=F64)
    params = [
        torch.tensor(DENSE_THETA0[:3], dtype=F64).requires_grad_(),
        torch.tensor(DENSE_THETA0[3:], dtype=F64).view(2, 1).requires_grad_(),
    ]

    def loss_fn(ps):
        theta = torch.cat([p.reshape(-1) for p in ps])
        return 0.5 * theta @ H @ theta - b @ theta

    opt = CLASSES[family](params, **hp)
    num_steps = 100
    actual, graphs = run(opt, params, num_steps, loss_fn=loss_fn)
    assert len(recorded) == sum(graphs)
    assert all(len(v) == 5 and set(v) <= {-1.0, 1.0} for v in recorded)
    expected, schedule = reference(family, None, DENSE_B, DENSE_THETA0, num_steps, hp, dense_h=DENSE_H, probes=recorded)
    assert graphs == schedule
    assert_trajectory(actual, expected)
