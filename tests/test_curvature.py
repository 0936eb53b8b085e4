"""Oracle tests of the curvature core: probes, Hessian-vector products, estimators, accumulators,
the curvature schedule, and the nerfstudio-free imports.

Every expected value is computed independently here: exact Hessians come from
``torch.autograd.functional.hessian`` on a flattened parameter vector, expectations over
Rademacher probes from enumerating every sign vector, closed forms from plain Python floats.
"""

from __future__ import annotations

import itertools
import math
import subprocess
import sys
import textwrap

import pytest
import torch
from torch.func import functional_call

from nf_precond_plugin.curvature import (
    ESTIMATORS,
    decayed_max_,
    ema_,
    ema_debias,
    equilibration_sample,
    functional_hvp,
    hvp,
    is_curvature_step,
    jacobi_sample,
    rademacher_like,
)
from nf_precond_plugin.fields import CoordinateMLP

F64 = torch.float64


# ----------------------------------------------------------------------------------------------
# helpers: a small MLP loss as a function of one flat parameter vector, and its exact Hessian
# ----------------------------------------------------------------------------------------------


class FlatProblem:
    """MSE loss of a float64 CoordinateMLP on fixed random data, as a function of the params."""

    def __init__(self, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
        self.model = model
        self.x = x
        self.y = y
        self.names = [name for name, _ in model.named_parameters()]
        self.params = [p for _, p in model.named_parameters()]
        self.shapes = [p.shape for p in self.params]
        self.sizes = [p.numel() for p in self.params]

    def loss_of(self, params: dict[str, torch.Tensor]) -> torch.Tensor:
        return (functional_call(self.model, params, (self.x,)) - self.y).square().mean()

    def split(self, flat: torch.Tensor) -> list[torch.Tensor]:
        return [chunk.view(shape) for chunk, shape in zip(flat.split(self.sizes), self.shapes)]

    def flat_loss(self, flat: torch.Tensor) -> torch.Tensor:
        return self.loss_of(dict(zip(self.names, self.split(flat))))

    def flat0(self) -> torch.Tensor:
        return torch.cat([p.detach().reshape(-1) for p in self.params])

    def exact_hessian(self) -> torch.Tensor:
        return torch.autograd.functional.hessian(self.flat_loss, self.flat0())

    def exact_grad(self) -> torch.Tensor:
        return torch.autograd.functional.jacobian(self.flat_loss, self.flat0())

    def module_loss(self) -> torch.Tensor:
        return (self.model(self.x) - self.y).square().mean()


def make_problem(activation: str, in_features=2, hidden=8, layers=3, points=16, seed=0) -> FlatProblem:
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = CoordinateMLP(in_features, 1, hidden_features=hidden, num_layers=layers, activation=activation)
    model = model.double()
    x = torch.rand(points, in_features, generator=gen, dtype=F64) * 2 - 1
    y = torch.randn(points, 1, generator=gen, dtype=F64)
    return FlatProblem(model, x, y)


def flatten(tensors) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in tensors])


# ----------------------------------------------------------------------------------------------
# 1. Rademacher probes
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_rademacher_entries_shape_dtype_device(dtype):
    tensors = [
        torch.empty(3, 4, dtype=dtype),
        torch.empty((), dtype=dtype),
        torch.empty(0, 5, dtype=dtype),
        torch.empty(2, 3, 5, dtype=dtype).transpose(0, 2),
        torch.empty(257, dtype=dtype),
    ]
    probes = rademacher_like(tensors)
    assert len(probes) == len(tensors)
    for probe, tensor in zip(probes, tensors):
        assert probe.shape == tensor.shape
        assert probe.dtype == tensor.dtype
        assert probe.device == tensor.device
        assert bool(((probe == 1) | (probe == -1)).all())
    # both signs actually occur
    big = probes[-1]
    assert bool((big == 1).any()) and bool((big == -1).any())


def test_rademacher_generator_reproducible_and_independent_of_global_rng():
    tensors = [torch.empty(40, 25), torch.empty(7, dtype=F64)]
    a = rademacher_like(tensors, generator=torch.Generator().manual_seed(123))
    b = rademacher_like(tensors, generator=torch.Generator().manual_seed(123))
    c = rademacher_like(tensors, generator=torch.Generator().manual_seed(124))
    for x, y in zip(a, b):
        assert torch.equal(x, y)
    # 1007 independent fair signs agree with probability 2^-1007
    assert not torch.equal(flatten(a).double(), flatten(c).double())

    # a given generator leaves the global RNG alone, and is advanced by the draw
    global_state = torch.get_rng_state()
    gen = torch.Generator().manual_seed(5)
    first = rademacher_like(tensors, generator=gen)
    second = rademacher_like(tensors, generator=gen)
    assert torch.equal(torch.get_rng_state(), global_state)
    assert not torch.equal(flatten(first).double(), flatten(second).double())


def test_rademacher_global_rng_reproducible():
    tensors = [torch.empty(30, 30), torch.empty(11, dtype=F64)]
    torch.manual_seed(77)
    a = rademacher_like(tensors)
    b = rademacher_like(tensors)
    torch.manual_seed(77)
    a2 = rademacher_like(tensors)
    for x, y in zip(a, a2):
        assert torch.equal(x, y)
    # the draw consumes the global RNG
    assert not torch.equal(flatten(a).double(), flatten(b).double())


@pytest.mark.parametrize("use_generator", [True, False])
def test_rademacher_moments(use_generator):
    """mean ≈ 0 and E[v vᵀ] ≈ I, across entries of one tensor and across tensors of one call."""
    num_draws = 6000
    template = [torch.empty(3, dtype=F64), torch.empty(2, 2, dtype=F64), torch.empty((), dtype=F64)]
    n = 8
    kwargs = {"generator": torch.Generator().manual_seed(2024)} if use_generator else {}
    if not use_generator:
        torch.manual_seed(2024)
    probes = rademacher_like(template * num_draws, **kwargs)
    # probes come in call order: draw i is probes[3i : 3i + 3], 8 entries once flattened
    draws = flatten(probes).view(num_draws, n)
    assert draws.shape == (num_draws, n)

    # each entry: mean of N fair signs has std 1/sqrt(N); allow 5 sigma
    sigma = 1.0 / math.sqrt(num_draws)
    mean = draws.mean(0)
    assert float(mean.abs().max()) < 5 * sigma

    second = draws.T @ draws / num_draws
    assert torch.equal(torch.diagonal(second), torch.ones(n, dtype=F64))  # v_i² = 1 exactly
    off = second - torch.diag(torch.diagonal(second))
    # v_i v_j for i ≠ j is itself a fair sign: same 1/sqrt(N) std
    assert float(off.abs().max()) < 5 * sigma


# ----------------------------------------------------------------------------------------------
# 2. Hessian-vector products against the exact Hessian
# ----------------------------------------------------------------------------------------------


ACTIVATIONS = ["gaussian", "sine", "relu"]


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("grads_from", ["autograd.grad", "backward"])
def test_hvp_matches_exact_hessian(activation, grads_from):
    problem = make_problem(activation)
    H = problem.exact_hessian()
    assert H.shape == (105, 105)
    assert float((H - torch.diag(torch.diagonal(H))).abs().max()) > 1e-3  # not trivially diagonal
    params = problem.params

    gen = torch.Generator().manual_seed(1)
    rademacher = rademacher_like(params, generator=gen)
    gaussian = [torch.randn(p.shape, generator=gen, dtype=F64) for p in params]
    for vectors in (rademacher, gaussian):
        loss = problem.module_loss()
        if grads_from == "autograd.grad":
            grads = torch.autograd.grad(loss, params, create_graph=True)
        else:
            for p in params:
                p.grad = None
            loss.backward(create_graph=True)
            grads = [p.grad for p in params]
        products = hvp(grads, params, vectors)
        assert [h.shape for h in products] == [p.shape for p in params]
        expected = H @ flatten(vectors)
        torch.testing.assert_close(flatten(products), expected, rtol=1e-10, atol=1e-12)
        for p in params:
            p.grad = None


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_functional_hvp_matches_exact_gradient_and_hessian(activation):
    problem = make_problem(activation, seed=3)
    H = problem.exact_hessian()
    g_exact = problem.exact_grad()
    params = {name: p.detach().clone() for name, p in zip(problem.names, problem.params)}
    gen = torch.Generator().manual_seed(9)
    vectors = {name: torch.randn(p.shape, generator=gen, dtype=F64) for name, p in params.items()}

    grad, hv = functional_hvp(problem.loss_of, params, vectors)
    assert set(grad) == set(params) and set(hv) == set(params)
    for name in params:
        assert grad[name].shape == params[name].shape
        assert hv[name].shape == params[name].shape
    torch.testing.assert_close(flatten([grad[n] for n in problem.names]), g_exact, rtol=1e-10, atol=1e-12)
    expected = H @ flatten([vectors[n] for n in problem.names])
    torch.testing.assert_close(flatten([hv[n] for n in problem.names]), expected, rtol=1e-10, atol=1e-12)

    # and it agrees with the double-backward product
    grads = torch.autograd.grad(problem.module_loss(), problem.params, create_graph=True)
    reverse = hvp(grads, problem.params, [vectors[n] for n in problem.names])
    torch.testing.assert_close(flatten(reverse), flatten([hv[n] for n in problem.names]), rtol=1e-10, atol=1e-12)


def test_hvp_raises_without_graph():
    problem = make_problem("gaussian")
    grads = torch.autograd.grad(problem.module_loss(), problem.params)  # no create_graph
    with pytest.raises(RuntimeError, match="create_graph"):
        hvp(grads, problem.params, rademacher_like(problem.params))


def test_hvp_length_mismatch_raises():
    problem = make_problem("gaussian")
    grads = torch.autograd.grad(problem.module_loss(), problem.params, create_graph=True)
    with pytest.raises(ValueError):
        hvp(grads, problem.params[:-1], rademacher_like(problem.params))


def test_hvp_constant_gradient_gives_zero_rows():
    """A parameter whose gradient does not depend on any parameter has a zero row (and column) of H."""
    theta = torch.tensor([0.3, -1.2, 2.0], dtype=F64, requires_grad=True)
    phi = torch.tensor([0.7, 0.1], dtype=F64, requires_grad=True)
    c = torch.tensor([1.5, -2.5], dtype=F64)

    def loss_fn(t, p):
        return torch.sin(t).prod() + t.square().sum() * 0.5 + (c * p).sum()

    g_theta, g_phi = torch.autograd.grad(loss_fn(theta, phi), (theta, phi), create_graph=True)
    assert not g_phi.requires_grad
    v = [torch.tensor([1.0, -1.0, 1.0], dtype=F64), torch.tensor([-1.0, 1.0], dtype=F64)]
    h_theta, h_phi = hvp([g_theta, g_phi], [theta, phi], v)
    H = torch.autograd.functional.hessian(lambda flat: loss_fn(flat[:3], flat[3:]), torch.cat([theta, phi]).detach())
    torch.testing.assert_close(torch.cat([h_theta, h_phi]), H @ torch.cat(v), rtol=1e-12, atol=1e-14)
    assert torch.equal(h_phi, torch.zeros(2, dtype=F64))


def test_hvp_frees_graph_unless_retained():
    problem = make_problem("sine")
    v = rademacher_like(problem.params)
    grads = torch.autograd.grad(problem.module_loss(), problem.params, create_graph=True)
    first = hvp(grads, problem.params, v, retain_graph=True)
    second = hvp(grads, problem.params, v)  # graph was retained
    for a, b in zip(first, second):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=0)
    with pytest.raises(RuntimeError):
        hvp(grads, problem.params, v)  # graph now freed


# ----------------------------------------------------------------------------------------------
# 3. Estimators
# ----------------------------------------------------------------------------------------------


def test_estimator_samples_by_hand():
    v = torch.tensor([1.0, -1.0, 1.0, -1.0], dtype=F64)
    h = torch.tensor([2.0, 3.0, -0.5, -4.0], dtype=F64)
    assert torch.equal(equilibration_sample(v, h), torch.tensor([4.0, 9.0, 0.25, 16.0], dtype=F64))
    assert torch.equal(jacobi_sample(v, h), torch.tensor([2.0, -3.0, -0.5, 4.0], dtype=F64))
    assert ESTIMATORS["equilibration"](v, h).tolist() == [4.0, 9.0, 0.25, 16.0]
    assert ESTIMATORS["jacobi"](v, h).tolist() == [2.0, -3.0, -0.5, 4.0]
    assert set(ESTIMATORS) == {"equilibration", "jacobi"}


def test_estimators_exact_expectation_by_enumeration():
    """Over all 2^10 sign vectors: mean(v⊙Hv) = diag(H), mean((Hv)²) = diag(H²) = ‖H_i,:‖², exactly."""
    problem = make_problem("gaussian", in_features=1, hidden=3, layers=2, points=12, seed=4)
    n = sum(problem.sizes)
    assert n == 10
    H = problem.exact_hessian()
    off_diagonal = H - torch.diag(torch.diagonal(H))
    assert float(off_diagonal.abs().max()) > 1e-2  # the off-diagonal terms must cancel for this to pass

    grads = torch.autograd.grad(problem.module_loss(), problem.params, create_graph=True)
    jacobi, equil = [], []
    for signs in itertools.product((-1.0, 1.0), repeat=n):
        v_flat = torch.tensor(signs, dtype=F64)
        v = problem.split(v_flat)
        h = hvp(grads, problem.params, v, retain_graph=True)
        j = flatten([jacobi_sample(vi, hi) for vi, hi in zip(v, h)])
        e = flatten([equilibration_sample(vi, hi) for vi, hi in zip(v, h)])
        assert torch.equal(j.square(), e)  # (v⊙Hv)² == (Hv)² for ±1 probes
        torch.testing.assert_close(flatten(h), H @ v_flat, rtol=1e-10, atol=1e-12)
        jacobi.append(j)
        equil.append(e)
    jacobi_mean = torch.stack(jacobi).mean(0)
    equil_mean = torch.stack(equil).mean(0)
    torch.testing.assert_close(jacobi_mean, torch.diagonal(H), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(equil_mean, (H * H).sum(1), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(equil_mean, torch.diagonal(H @ H), rtol=1e-10, atol=1e-12)


def test_estimators_monte_carlo_with_rademacher_probes():
    """Many probes from rademacher_like on a 105-parameter Gaussian MLP, 5-sigma bounds from exact variances."""
    problem = make_problem("gaussian", seed=5)
    H = problem.exact_hessian()
    n = H.shape[0]
    num = 4000
    gen = torch.Generator().manual_seed(11)
    probes = rademacher_like([torch.empty(n, dtype=F64)] * num, generator=gen)
    V = torch.stack(probes)  # (num, n)
    HV = V @ H.T  # rows are H v
    j = torch.stack([jacobi_sample(v, h) for v, h in zip(V, HV)])
    e = torch.stack([equilibration_sample(v, h) for v, h in zip(V, HV)])

    H2 = H * H
    diag_sq = torch.diagonal(H2)
    # v_i (Hv)_i = H_ii + Σ_{j≠i} H_ij v_i v_j: variance Σ_{j≠i} H_ij²
    var_j = H2.sum(1) - diag_sq
    # (Hv)_i² with s = Σ_j H_ij v_j: E s⁴ = 3(Σ H_ij²)² − 2 Σ H_ij⁴, so Var = 2((Σ H_ij²)² − Σ H_ij⁴)
    var_e = 2 * (H2.sum(1).square() - (H2 * H2).sum(1))
    tol_j = 5 * torch.sqrt(var_j / num) + 1e-12
    tol_e = 5 * torch.sqrt(var_e / num) + 1e-12
    assert bool(((j.mean(0) - torch.diagonal(H)).abs() <= tol_j).all())
    assert bool(((e.mean(0) - H2.sum(1)).abs() <= tol_e).all())
    # the bounds are informative: the Jacobi mean is not the mean of |v⊙Hv| = |Hv|
    assert float((j.mean(0) - j.abs().mean(0)).abs().max()) > 10 * float(tol_j.max())


# ----------------------------------------------------------------------------------------------
# 4. Accumulators
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("beta", [0.0, 0.5, 0.9, 0.999])
def test_ema_closed_form(beta):
    gen = torch.Generator().manual_seed(3)
    a0 = torch.randn(5, generator=gen, dtype=F64)
    samples = [torch.randn(5, generator=gen, dtype=F64) for _ in range(25)]
    acc = a0.clone()
    for count, x in enumerate(samples, start=1):
        out = ema_(acc, x, beta)
        assert out is acc  # in place
        # a_n = β^n a_0 + Σ_k (1 − β) β^(n−1−k) x_k, element by element in Python floats
        for i in range(5):
            expected = beta**count * float(a0[i]) + sum(
                (1 - beta) * beta ** (count - 1 - k) * float(samples[k][i]) for k in range(count)
            )
            assert math.isclose(float(acc[i]), expected, rel_tol=1e-12, abs_tol=1e-14)


@pytest.mark.parametrize("beta", [0.0, 0.5, 0.9, 0.999])
def test_decayed_max_closed_form(beta):
    gen = torch.Generator().manual_seed(4)
    a0 = torch.rand(6, generator=gen, dtype=F64) * 3
    samples = [torch.randn(6, generator=gen, dtype=F64) for _ in range(25)]
    acc = a0.clone()
    for count, x in enumerate(samples, start=1):
        out = decayed_max_(acc, x, beta)
        assert out is acc  # in place
        # a_n = max(β^n a_0, max_k β^(n−1−k) x_k)
        for i in range(6):
            candidates = [beta**count * float(a0[i])]
            candidates += [beta ** (count - 1 - k) * float(samples[k][i]) for k in range(count)]
            assert math.isclose(float(acc[i]), max(candidates), rel_tol=1e-12, abs_tol=1e-14)


@pytest.mark.parametrize("beta", [0.0, 0.3, 0.9, 0.999])
def test_ema_debias_closed_form(beta):
    assert ema_debias(beta, 0) == 0.0
    mass = 0.0
    for count in range(1, 60):
        mass += (1 - beta) * beta ** (count - 1)  # weight gathered by the count-th sample
        assert math.isclose(ema_debias(beta, count), mass, rel_tol=1e-12, abs_tol=1e-15)


def test_debiased_ema_of_constant_is_constant():
    beta = 0.999
    x = torch.tensor([2.5, -0.25, 1e-3], dtype=F64)
    acc = torch.zeros(3, dtype=F64)
    for count in range(1, 40):
        ema_(acc, x, beta)
        torch.testing.assert_close(acc / ema_debias(beta, count), x, rtol=1e-10, atol=0)


# ----------------------------------------------------------------------------------------------
# 5. Schedule
# ----------------------------------------------------------------------------------------------


def _simulate_schedule(num_steps: int, every: int, warmup: int) -> list[int]:
    sampled, last = [], None
    for k in range(num_steps):
        if is_curvature_step(k, last, every, warmup):
            sampled.append(k)
            last = k
    return sampled


def test_schedule_warmup_50_every_100():
    expected = list(range(50)) + list(range(149, 1001, 100))
    assert expected[:3] == [0, 1, 2] and expected[49:52] == [49, 149, 249] and expected[-1] == 949
    assert _simulate_schedule(1001, every=100, warmup=50) == expected


@pytest.mark.parametrize(
    "every, warmup, expected",
    [
        (1, 1, list(range(60))),
        (7, 3, [0, 1, 2] + list(range(9, 60, 7))),
        (7, 1, list(range(0, 60, 7))),
        (5, 20, list(range(20)) + list(range(24, 60, 5))),
    ],
)
def test_schedule_small_cases(every, warmup, expected):
    assert _simulate_schedule(60, every=every, warmup=warmup) == expected


def test_schedule_direct_queries():
    assert is_curvature_step(0, None, 100, 50)
    assert is_curvature_step(49, 48, 100, 50)
    assert not is_curvature_step(50, 49, 100, 50)
    assert not is_curvature_step(148, 49, 100, 50)
    assert is_curvature_step(149, 49, 100, 50)
    assert is_curvature_step(500, None, 100, 50)  # never sampled yet: sample now


# ----------------------------------------------------------------------------------------------
# 12. nerfstudio-free imports
# ----------------------------------------------------------------------------------------------


def test_core_imports_without_nerfstudio():
    code = textwrap.dedent(
        """
        import sys
        sys.modules["nerfstudio"] = None  # any `import nerfstudio...` now raises ImportError
        import nf_precond_plugin
        import nf_precond_plugin.curvature as curvature
        import nf_precond_plugin.optim as optim
        import nf_precond_plugin.fields as fields
        import torch
        model = fields.CoordinateMLP(2, 1, hidden_features=4, num_layers=2)
        opt = optim.ESGD(model.parameters())
        opt.zero_grad(set_to_none=True)
        model(torch.rand(3, 2)).square().mean().backward(create_graph=opt.should_create_graph())
        opt.step()
        assert callable(curvature.hvp) and optim.AdaHessian
        assert sys.modules["nerfstudio"] is None
        assert not [m for m in sys.modules if m.startswith("nerfstudio.")]
        print("OK")
        """
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("OK")
