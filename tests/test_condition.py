"""Oracles for the Fig. 2 condition-number diagnostic: closed-form spectra, hand-computed
preconditioner scalings, a finite-difference Hessian, and a short end-to-end run."""

from __future__ import annotations

import json
import math

import pytest
import torch

from nf_precond_plugin.curvature.exact import (
    congruence,
    equilibration_diagonal,
    jacobi_diagonal,
    kappa,
    kappa_top_r,
    sorted_magnitudes,
    spectral_spread,
)
from nf_precond_plugin.diagnostics.condition import ConditionConfig, run_condition
from nf_precond_plugin.diagnostics.toy_field import (
    exact_hessian,
    flat_parameters,
    make_field,
    make_problem,
    mse_loss_function,
)
from nf_precond_plugin.fields import CoordinateMLP


def _with_spectrum(eigenvalues: list[float], seed: int = 0) -> torch.Tensor:
    """Q diag(λ) Qᵀ with a random orthogonal Q: a symmetric matrix with known eigenvalues."""
    generator = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(len(eigenvalues), len(eigenvalues), generator=generator, dtype=torch.float64))
    return q @ torch.diag(torch.tensor(eigenvalues, dtype=torch.float64)) @ q.T


def test_kappa_of_indefinite_matrix_with_known_spectrum() -> None:
    # |λ| sorted: 10, 5, 2, 1, 0.5, 0 — signs must not matter, a zero eigenvalue gives κ = ∞.
    a = _with_spectrum([2.0, -5.0, 0.0, 10.0, -1.0, 0.5])
    for r, expected in [(1, 1.0), (2, 2.0), (3, 5.0), (4, 10.0), (5, 20.0)]:
        assert kappa(a, r) == pytest.approx(expected, rel=1e-12)
    assert kappa(a, 6) == math.inf or kappa(a, 6) > 1e14  # rounding leaves ~1e-16 for the zero
    mags = sorted_magnitudes(a)
    assert mags.tolist() == pytest.approx([10, 5, 2, 1, 0.5, 0], abs=1e-12)
    # spread = |λ|₁ / geomean(|λ|₁..r): r = 3 → 10 / (10·5·2)^(1/3) = 10 / 100^(1/3)
    assert spectral_spread(mags, 3) == pytest.approx(10 / 100 ** (1 / 3), rel=1e-12)
    assert spectral_spread(mags, 1) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        kappa_top_r(mags, 0)
    with pytest.raises(ValueError):
        kappa_top_r(mags, 7)


def test_kappa_is_invariant_to_scale_and_orthogonal_similarity() -> None:
    a = _with_spectrum([3.0, -7.0, 0.1, 1.0], seed=1)
    b = _with_spectrum([3.0, -7.0, 0.1, 1.0], seed=2)
    for r in range(1, 5):
        assert kappa(a, r) == pytest.approx(kappa(b, r), rel=1e-10)
        assert kappa(-4.0 * a, r) == pytest.approx(kappa(a, r), rel=1e-10)


def test_diagonal_hessian_is_perfectly_conditioned_by_both_preconditioners() -> None:
    h = torch.diag(torch.tensor([4.0, -9.0, 0.25], dtype=torch.float64))
    for diag in (jacobi_diagonal(h, damping=0.0), equilibration_diagonal(h, damping=0.0)):
        assert diag.tolist() == pytest.approx([4.0, 9.0, 0.25])
        scaled = congruence(h, diag)
        # D^{-1/2} H D^{-1/2} = diag(±1): all |λ| = 1, inertia (2 positive, 1 negative) kept.
        assert torch.linalg.eigvalsh(scaled).tolist() == pytest.approx([-1.0, 1.0, 1.0])
        assert kappa(scaled, 3) == pytest.approx(1.0)
    assert kappa(h, 3) == pytest.approx(36.0)


def test_two_by_two_scalings_by_hand() -> None:
    # H = [[a, b], [b, c]] = [[2, 1], [1, 3]]
    h = torch.tensor([[2.0, 1.0], [1.0, 3.0]], dtype=torch.float64)
    d_e = equilibration_diagonal(h, damping=0.0)
    d_j = jacobi_diagonal(h, damping=0.0)
    assert d_e.tolist() == pytest.approx([math.sqrt(5.0), math.sqrt(10.0)])  # √(a²+b²), √(b²+c²)
    assert d_j.tolist() == pytest.approx([2.0, 3.0])

    def kappa_2x2(p: float, q: float, s: float) -> float:
        """κ₂ of [[p, q], [q, s]] from its closed-form eigenvalues (tr ± √(tr² − 4 det)) / 2."""
        tr, det = p + s, p * s - q * q
        root = math.sqrt(tr * tr - 4 * det)
        lo, hi = sorted([abs((tr - root) / 2), abs((tr + root) / 2)])
        return hi / lo

    # Jacobi: [[1, 1/√6], [1/√6, 1]], eigenvalues 1 ± 1/√6
    scaled_j = congruence(h, d_j)
    c = 1 / math.sqrt(6)
    torch.testing.assert_close(scaled_j, torch.tensor([[1.0, c], [c, 1.0]], dtype=torch.float64))
    assert kappa(scaled_j, 2) == pytest.approx((1 + 1 / math.sqrt(6)) / (1 - 1 / math.sqrt(6)))
    # Equilibration: entries H_ij / √(d_i d_j) with d = (√5, √10)
    p, q, s = 2 / math.sqrt(5), 1 / (5 * 10) ** 0.25, 3 / math.sqrt(10)
    scaled_e = congruence(h, d_e)
    torch.testing.assert_close(scaled_e, torch.tensor([[p, q], [q, s]], dtype=torch.float64))
    assert kappa(scaled_e, 2) == pytest.approx(kappa_2x2(p, q, s))
    assert kappa(h, 2) == pytest.approx(kappa_2x2(2, 1, 3))  # (5 + √5) / (5 − √5)


def test_relative_damping() -> None:
    # Indefinite H with a zero diagonal entry: Jacobi needs the damping, d_i + δ·max d.
    h = torch.tensor([[4.0, 1.0], [1.0, 0.0]], dtype=torch.float64)
    assert jacobi_diagonal(h, damping=1e-3).tolist() == pytest.approx([4.0 + 4e-3, 4e-3])
    assert equilibration_diagonal(h, damping=1e-3).tolist() == pytest.approx(
        [math.sqrt(17) * (1 + 1e-3), 1.0 + 1e-3 * math.sqrt(17)]
    )
    zero = torch.zeros(3, 3, dtype=torch.float64)
    assert torch.isfinite(congruence(zero, jacobi_diagonal(zero))).all()


def test_flattened_loss_matches_the_module() -> None:
    x, y = make_problem(16)
    model = make_field(0.2, seed=3)
    loss = mse_loss_function(model, x, y)
    theta = flat_parameters(model)
    assert theta.numel() == 321  # 1·16+16 + 16·16+16 + 16·1+1: the paper's 2×16 MLP
    with torch.no_grad():
        assert float(loss(theta)) == pytest.approx(float((model(x) - y).square().mean()), rel=1e-14)


def test_exact_hessian_matches_finite_differences_and_autograd() -> None:
    torch.manual_seed(0)
    model = CoordinateMLP(1, 1, hidden_features=3, num_layers=3, activation="gaussian", sigma=0.5).double()
    x, y = make_problem(5)
    loss = mse_loss_function(model, x, y)
    theta = flat_parameters(model)
    p = theta.numel()
    hessian = exact_hessian(loss, theta)

    # Central second differences of the loss itself: error O(h²) + rounding O(ε/h²).
    h = 1e-4
    eye = torch.eye(p, dtype=torch.float64) * h
    fd = torch.empty(p, p, dtype=torch.float64)
    with torch.no_grad():
        for i in range(p):
            for j in range(i, p):
                value = (
                    loss(theta + eye[i] + eye[j])
                    - loss(theta + eye[i] - eye[j])
                    - loss(theta - eye[i] + eye[j])
                    + loss(theta - eye[i] - eye[j])
                ) / (4 * h * h)
                fd[i, j] = fd[j, i] = value
    scale = hessian.abs().max()
    assert (hessian - fd).abs().max() <= 1e-6 * scale
    reference = torch.autograd.functional.hessian(loss, theta)
    assert torch.allclose(hessian, reference, rtol=1e-10, atol=1e-12 * float(scale))


def test_run_condition_writes_outputs(tmp_path) -> None:
    threads = torch.get_num_threads()
    result = run_condition(ConditionConfig(steps=3, samples=16, output_dir=tmp_path), progress=False)
    assert torch.get_num_threads() == threads
    run_dir = tmp_path / result["run_dir"].split("/")[-1]
    assert run_dir.is_dir() and run_dir.name.startswith("condition-")
    assert (run_dir / "condition.png").stat().st_size > 0
    assert result["plot"] == str(run_dir / "condition.png")
    on_disk = json.loads((run_dir / "condition.json").read_text())
    assert on_disk["kappa_H"] == pytest.approx(result["kappa_H"])
    for key in ("kappa_H", "kappa_E", "kappa_J"):
        assert math.isfinite(on_disk[key]) and on_disk[key] >= 1.0
    assert isinstance(on_disk["ordering_holds"], bool)
    assert "kappa_r" in on_disk["kappa_definition"] and on_disk["r"] == 16
    for key in ("kappa_H_per_step", "kappa_E_per_step", "kappa_J_per_step"):
        assert len(on_disk[key]) == 4 and all(math.isfinite(v) for v in on_disk[key])
    for kind in ("none", "equilibration", "jacobi"):
        assert math.isfinite(on_disk["final_loss"][kind])
        assert len(on_disk["loss_per_step"][kind]) == 4
        assert on_disk["learning_rates"][kind] > 0
    # all three runs start from the same parameters
    assert len({on_disk["loss_per_step"][k][0] for k in ("none", "equilibration", "jacobi")}) == 1
    # a second run never overwrites the first
    again = run_condition(ConditionConfig(steps=0, samples=8, output_dir=tmp_path), progress=False)
    assert again["run_dir"] != result["run_dir"]
