"""Optimizer state: exact resumption through state_dict(), release of the autograd graph that
``loss.backward(create_graph=True)`` hangs on ``p.grad``, and flat memory over many HVP steps."""

from __future__ import annotations

import copy
import gc
import io
import os
import warnings

import pytest
import torch

from nf_precond_plugin.fields import CoordinateMLP
from nf_precond_plugin.optim import AdaHessian, ESGDMax, PaperESGD

# ----------------------------------------------------------------------------------------------
# 10. state_dict() / load_state_dict(): bit-identical resumption
# ----------------------------------------------------------------------------------------------

NUM_POINTS = 256
BATCH = 32
TOTAL_STEPS = 40
RESUME_AT = 17

# (class, kwargs of the run that is saved, kwargs of the fresh optimizer the state is loaded into).
# Original schedules: 7/3 → HVPs at 0, 1, 2, 9, 16, 23, 30, 37;  3/2 → 0, 1, 4, 7, ..., 19, 22, ...
# Resuming at step 17 crosses HVP and non-HVP steps. Had the fresh schedule survived the load,
# every step from 17 to 39 would be an HVP step.
RESUME_CASES = {
    "esgd-ema": (
        PaperESGD,
        dict(lr=0.01, update_d_every=7, d_warmup=3),
        dict(update_d_every=50, d_warmup=40),
    ),
    "esgd-max": (
        ESGDMax,
        dict(lr=0.01, update_d_every=7, d_warmup=3),
        dict(update_d_every=1, d_warmup=100),
    ),
    "adahessian-E": (
        AdaHessian,
        dict(lr=0.01, estimator="equilibration", update_d_every=3, d_warmup=2),
        dict(update_d_every=1, d_warmup=1),
    ),
    "adahessian-J": (
        AdaHessian,
        dict(lr=0.01, estimator="jacobi", hessian_power=0.5, update_d_every=3, d_warmup=2),
        dict(update_d_every=1, d_warmup=30),
    ),
}


def _data():
    gen = torch.Generator().manual_seed(1234)
    x = torch.rand(NUM_POINTS, 2, generator=gen) * 2 - 1
    y = torch.rand(NUM_POINTS, 3, generator=gen)
    return x, y


def _model(seed: int) -> CoordinateMLP:
    torch.manual_seed(seed)
    return CoordinateMLP(2, 3, hidden_features=16, num_layers=3, activation="gaussian", sigma=0.5)


def _train(model, opt, batch_gen, x, y, steps, hvp_log):
    for _ in range(steps):
        idx = torch.randint(0, NUM_POINTS, (BATCH,), generator=batch_gen)
        hvp_log.append(opt.should_create_graph())
        opt.zero_grad(set_to_none=True)
        loss = (model(x[idx]) - y[idx]).square().mean()
        loss.backward(create_graph=opt.should_create_graph())
        opt.step()


def _save(obj, how: str):
    if how == "deepcopy":
        return copy.deepcopy(obj)
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    buffer.seek(0)
    return buffer


def _load(saved, how: str):
    if how == "deepcopy":
        return copy.deepcopy(saved)
    saved.seek(0)
    return torch.load(saved, weights_only=True)


@pytest.mark.parametrize("how", ["deepcopy", "torch.save"])
@pytest.mark.parametrize("case", list(RESUME_CASES))
def test_resume_from_state_dict_is_bit_identical(case, how):
    cls, kwargs, fresh_kwargs = RESUME_CASES[case]
    x, y = _data()

    # uninterrupted run, saving everything at RESUME_AT
    model = _model(seed=0)
    opt = cls(model.parameters(), **kwargs)
    batch_gen = torch.Generator().manual_seed(99)
    torch.manual_seed(5)
    log_a: list[bool] = []
    _train(model, opt, batch_gen, x, y, RESUME_AT, log_a)
    saved = _save(
        {
            "model": model.state_dict(),
            "optimizer": opt.state_dict(),
            "rng": torch.get_rng_state(),
            "batch_rng": batch_gen.get_state(),
        },
        how,
    )
    _train(model, opt, batch_gen, x, y, TOTAL_STEPS - RESUME_AT, log_a)
    final_a = [p.detach().clone() for p in model.parameters()]

    # a fresh model (other init) and a fresh optimizer with another schedule, loaded from the save
    model_b = _model(seed=1)
    opt_b = cls(model_b.parameters(), **{**kwargs, **fresh_kwargs})
    checkpoint = _load(saved, how)
    model_b.load_state_dict(checkpoint["model"])
    opt_b.load_state_dict(checkpoint["optimizer"])
    torch.set_rng_state(checkpoint["rng"])
    batch_gen_b = torch.Generator()
    batch_gen_b.set_state(checkpoint["batch_rng"])
    log_b: list[bool] = []
    _train(model_b, opt_b, batch_gen_b, x, y, TOTAL_STEPS - RESUME_AT, log_b)

    resumed = log_a[RESUME_AT:]
    assert any(resumed) and not all(resumed)  # the resumed stretch has HVP and non-HVP steps
    assert log_b == resumed
    for a, b in zip(final_a, model_b.parameters()):
        assert torch.isfinite(a).all()
        assert torch.equal(a, b.detach())
    # the resumed run moved the parameters (the comparison is not between two frozen models)
    saved_params = _load(saved, how)["model"]
    assert any(not torch.equal(saved_params[name], p) for name, p in model_b.state_dict().items())


# ----------------------------------------------------------------------------------------------
# 11. graph release and memory
# ----------------------------------------------------------------------------------------------


def _small_problem():
    torch.manual_seed(3)
    model = CoordinateMLP(2, 1, hidden_features=8, num_layers=3, activation="sine").double()
    x = torch.rand(16, 2, dtype=torch.float64)
    y = torch.rand(16, 1, dtype=torch.float64)
    return model, x, y


def _no_graph_on_grads(model) -> bool:
    return all(p.grad is None or (p.grad.grad_fn is None and not p.grad.requires_grad) for p in model.parameters())


@pytest.mark.parametrize(
    "cls, kwargs",
    [
        (PaperESGD, dict(lr=1e-3, update_d_every=3, d_warmup=1)),
        (ESGDMax, dict(lr=1e-3, update_d_every=3, d_warmup=1)),
        (AdaHessian, dict(lr=1e-3, update_d_every=3, d_warmup=1)),
        (AdaHessian, dict(lr=1e-3, update_d_every=3, d_warmup=1, estimator="jacobi")),
    ],
)
def test_step_releases_the_graph_on_grads(cls, kwargs):
    model, x, y = _small_problem()
    opt = cls(model.parameters(), **kwargs)
    for k in range(7):  # HVP on 0, 3, 6
        hvp_step = opt.should_create_graph()
        assert hvp_step == (k % 3 == 0)
        opt.zero_grad(set_to_none=True)
        # on non-HVP steps build the graph anyway: step() must still drop it
        (model(x) - y).square().mean().backward(create_graph=True)
        assert all(p.grad.grad_fn is not None for p in model.parameters())
        opt.step()
        assert _no_graph_on_grads(model)
    # and with the plain contract on a non-HVP step
    assert not opt.should_create_graph()
    opt.zero_grad(set_to_none=True)
    (model(x) - y).square().mean().backward(create_graph=opt.should_create_graph())
    opt.step()
    assert _no_graph_on_grads(model)


def _rss_bytes() -> int | None:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        try:
            import psutil
        except ImportError:
            return None
        return psutil.Process().memory_info().rss


def _live_tensors() -> int:
    gc.collect()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # isinstance() on some lazy torch modules warns
        return sum(1 for obj in gc.get_objects() if isinstance(obj, torch.Tensor))


def test_memory_stays_flat_over_10000_hvp_steps():
    torch.manual_seed(4)
    model = CoordinateMLP(2, 1, hidden_features=4, num_layers=2, activation="gaussian", sigma=0.5)
    x = torch.rand(8, 2)
    y = torch.rand(8, 1)
    opt = AdaHessian(model.parameters(), lr=1e-3, update_d_every=1)
    checkpoints = {}
    hvp_steps = 0
    for k in range(1, 10_001):
        hvp_steps += opt.should_create_graph()
        opt.zero_grad(set_to_none=True)
        (model(x) - y).square().mean().backward(create_graph=opt.should_create_graph())
        opt.step()
        if k in (1000, 10_000):
            checkpoints[k] = (_live_tensors(), _rss_bytes())
    assert hvp_steps == 10_000
    assert _no_graph_on_grads(model)
    tensors_1k, rss_1k = checkpoints[1000]
    tensors_10k, rss_10k = checkpoints[10_000]
    assert tensors_10k <= tensors_1k
    if rss_1k is not None:
        # a graph kept alive per step costs tens of KiB here, i.e. hundreds of MiB over 9000 steps
        assert rss_10k - rss_1k < 16 * 2**20
