"""The accumulation and reduction pieces of the curvature core, in one process.

Oracles: the exact Hessian of a small field (H v = Σₖ Hₖ v for one probe), the byte sizes of
buckets, and the no-op a single process must be.
"""

from __future__ import annotations

import pytest
import torch

from nf_precond_plugin.curvature import (
    DEFAULT_BUCKET_BYTES,
    HvpSum,
    active_process_group,
    all_reduce_mean_,
    broadcast_int,
    rademacher_like,
)
from nf_precond_plugin.curvature.reduction import buckets
from nf_precond_plugin.optim import ESGD, AdaHessian
from nf_precond_plugin.optim.base import PROBE_GENERATOR
from nf_precond_plugin.training.step import training_step


def small_problem(dtype=torch.float64):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(2, 5), torch.nn.Tanh(), torch.nn.Linear(5, 1)).to(dtype)
    x = torch.randn(12, 2, dtype=dtype)
    y = torch.randn(12, 1, dtype=dtype)
    return model, x, y


def flat_hessian(model, x, y) -> torch.Tensor:
    params = list(model.parameters())
    shapes = [p.shape for p in params]
    sizes = [p.numel() for p in params]

    def loss_of(flat):
        pieces = [piece.view(shape) for piece, shape in zip(flat.split(sizes), shapes)]
        names = [name for name, _ in model.named_parameters()]
        out = torch.func.functional_call(model, dict(zip(names, pieces)), (x,))
        return torch.nn.functional.mse_loss(out, y)

    flat = torch.cat([p.detach().reshape(-1) for p in params])
    return torch.autograd.functional.hessian(loss_of, flat)


def test_the_micro_batch_sum_of_hvp_is_the_exact_full_batch_hessian_times_the_probe():
    model, x, y = small_problem()
    params = list(model.parameters())
    probes = rademacher_like(params, generator=torch.Generator().manual_seed(3))
    total = HvpSum(params, probes)
    for xs, ys in zip(x.chunk(4), y.chunk(4)):
        loss = torch.nn.functional.mse_loss(model(xs), ys) / 4  # the four equal chunks' mean is the full loss
        grads = torch.autograd.grad(loss, params, create_graph=True)
        total.add(grads)
    expected = flat_hessian(model, x, y) @ torch.cat([v.reshape(-1) for v in probes])
    torch.testing.assert_close(torch.cat([h.reshape(-1) for h in total.total]), expected, rtol=1e-12, atol=1e-12)


def test_accumulate_after_backward_folds_in_only_the_new_micro_batch():
    """After a second backward p.grad is (first gradient, constant) + g₂(θ): its H·v is H₂ v alone."""
    model, x, y = small_problem()
    optimizer = ESGD(model.parameters(), d_warmup=5)
    optimizer.zero_grad()
    for xs, ys in zip(x.chunk(2), y.chunk(2)):
        (torch.nn.functional.mse_loss(model(xs), ys) / 2).backward(create_graph=optimizer.should_create_graph())
        optimizer.accumulate()
    pending = optimizer._pending_hvp
    expected = flat_hessian(model, x, y) @ torch.cat([v.reshape(-1) for v in pending.probes])
    torch.testing.assert_close(torch.cat([h.reshape(-1) for h in pending.total]), expected, rtol=1e-12, atol=1e-12)
    assert all(p.grad.grad_fn is None for p in model.parameters())  # each micro-batch's graph was freed


@pytest.mark.parametrize("optimizer_type", [ESGD, AdaHessian])
def test_micro_batches_through_training_step_equal_one_full_batch_step(optimizer_type):
    model, x, y = small_problem()
    twin, _, _ = small_problem()
    full = optimizer_type(twin.parameters(), probe_seed=11)
    split = optimizer_type(model.parameters(), probe_seed=11)
    for _ in range(5):
        full.zero_grad()
        torch.nn.functional.mse_loss(twin(x), y).backward(create_graph=full.should_create_graph())
        full.step()
        for k, (xs, ys) in enumerate(zip(x.chunk(3), y.chunk(3))):
            training_step(
                [split], lambda xs=xs, ys=ys: (torch.nn.functional.mse_loss(model(xs), ys), None), micro_batch=(k, 3)
            )
    for a, b in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_a_micro_batch_that_reaches_other_parameters_is_refused_with_a_clear_error():
    first, second = torch.nn.Linear(2, 1).double(), torch.nn.Linear(2, 1).double()
    optimizer = ESGD([*first.parameters(), *second.parameters()])
    x = torch.randn(4, 2, dtype=torch.float64)
    first(x).square().mean().backward(create_graph=optimizer.should_create_graph())
    optimizer.accumulate()
    (first(x) + second(x)).square().mean().backward(create_graph=optimizer.should_create_graph())
    with pytest.raises(RuntimeError, match="parameters with a gradient changed between micro-batches"):
        optimizer.accumulate()


def test_the_probe_generator_is_seeded_saved_and_restored():
    model, x, y = small_problem()
    a = ESGD(model.parameters(), probe_seed=5)
    b = ESGD(model.parameters(), probe_seed=5)
    c = ESGD(model.parameters(), probe_seed=6)
    params = list(model.parameters())
    first = a._probes(params)
    assert all(torch.equal(u, v) for u, v in zip(first, b._probes(params)))
    assert not all(torch.equal(u, v) for u, v in zip(first, c._probes(params)))
    saved = a.state_dict()
    assert saved[PROBE_GENERATOR]["seed"] == 5
    upcoming = a._probes(params)
    restored = ESGD(model.parameters(), probe_seed=99)
    restored.load_state_dict(saved)
    assert all(torch.equal(u, v) for u, v in zip(upcoming, restored._probes(params)))


def test_without_a_seed_the_probes_follow_torch_manual_seed():
    model, _, _ = small_problem()
    params = list(model.parameters())
    torch.manual_seed(42)
    a = ESGD(params)._probes(params)
    torch.manual_seed(42)
    b = ESGD(params)._probes(params)
    assert all(torch.equal(u, v) for u, v in zip(a, b))


@pytest.mark.parametrize("seed", [-1, 2**63, 1.5, True])
def test_invalid_probe_seeds_are_refused(seed):
    with pytest.raises(ValueError, match="Invalid probe_seed"):
        ESGD([torch.nn.Parameter(torch.zeros(2))], probe_seed=seed)


def test_buckets_hold_at_most_their_bytes_and_never_mix_dtypes():
    tensors = [
        torch.zeros(100),  # 400 B
        torch.zeros(100),  # 400 B
        torch.zeros(300),  # 1200 B: alone, larger than a bucket
        torch.zeros(10, dtype=torch.float64),  # 80 B, another dtype
        torch.zeros(10, dtype=torch.float64),
    ]
    assert list(buckets(tensors, bucket_bytes=1000)) == [[0, 1], [2], [3, 4]]
    assert list(buckets(tensors)) == [[0, 1, 2], [3, 4]]  # 25 MiB by default
    assert DEFAULT_BUCKET_BYTES == 25 * 2**20


def test_one_process_reduces_nothing():
    tensors = [torch.randn(3), torch.randn(2, 2)]
    before = [t.clone() for t in tensors]
    group = active_process_group()
    assert group is None
    assert all_reduce_mean_(tensors, group) == 0
    assert all(torch.equal(a, b) for a, b in zip(tensors, before))
    assert broadcast_int(123, group) == 123
