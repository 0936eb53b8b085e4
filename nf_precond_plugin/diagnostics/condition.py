"""Figure 2 of the paper as a reproducible computation: condition numbers of the exact Hessian
of a small neural field before and after diagonal (equilibration / Jacobi) preconditioning.

Setup
-----
A 2×16 Gaussian MLP (``CoordinateMLP(1, 1, hidden_features=16, num_layers=3,
activation="gaussian")``, P = 321 parameters, float64) fits f(x) = sin(2πx) + sin(6πx) on N
evenly spaced points of [-1, 1] with the MSE loss L(θ) = (1/N) Σᵢ (F(xᵢ; θ) − yᵢ)². At every
step the EXACT P×P Hessian H = ∇²L is formed (``torch.func.hessian`` — forward-over-reverse —
of the loss as a function of the flattened parameter vector through
``torch.func.functional_call``; it equals ``torch.autograd.functional.hessian`` to rounding and
is ~4× faster, which the tests check together with a finite-difference Hessian).

Preconditioners (paper §4.1)
----------------------------
    D_E = diag(‖H_{i,:}‖₂)   (equilibration, row 2-norms; ESGD's D ≈ |H|)
    D_J = |diag H|           (Jacobi)
each damped as d_i ← d_i + δ·max_j d_j with δ = ``DAMPING`` = 1e-10 (relative), only so that no
division by zero can occur. The preconditioned Hessian is the congruence
D^{-1/2} H D^{-1/2} of Eq. (4).

The condition number used (``KAPPA_DEFINITION``)
------------------------------------------------
Definition 4.1, σ_max/σ_min, is useless here as written: H is indefinite and its spectrum runs
continuously down to ~1e-20 (rounding), so σ_min — and any κ with an eigenvalue *tolerance* —
measures the cutoff, not the matrix. Instead every matrix is compared on a FIXED NUMBER r of its
largest-|λ| eigenvalues:

    κ_r(A) = |λ|_(1) / |λ|_(r)        (|λ|_(k): k-th largest eigenvalue magnitude of A)

Why this is meaningful: a congruence D^{-1/2} H D^{-1/2} with D > 0 preserves rank and inertia
(Sylvester's law), so the same count of eigenvalues "exists" in all three matrices and comparing
them at the same index r is apples to apples; r is chosen *structurally*, never by a tolerance.
The headline is r = N (the number of training points) when N < P: H = (2/N) JᵀJ + (2/N) Σᵢ rᵢ ∇²Fᵢ
and the Gauss–Newton part JᵀJ (J the N×P Jacobian of the outputs) has rank ≤ N, i.e. r = N is the
number of directions the data can constrain to first order. κ_r for r = 8, 16, 32 is also
reported, and a tolerance-free spread |λ|_(1) / geomean(|λ|_(1..r)) (how far the top curvature
sticks out of the bulk of the top-r spectrum). Because these are ratios, they do not depend on the
overall scale of D.

Where the condition numbers are measured
----------------------------------------
Headline ("kappa_H", "kappa_E", "kappa_J"): all three matrices at the SAME points, the iterates of
plain (un-preconditioned) gradient descent, medians over steps. In addition, as in the paper's
Fig. 2a (dotted = before, solid = after), each preconditioned run records κ_r(H) and κ_r of its own
preconditioned Hessian along its own trajectory ("paper_style_per_run"; the full per-step records
of all three runs — loss, κ_r of H/E/J for every r, spreads, λ_max — are under "history").

"ordering_holds" tests exactly: median κ_E < median κ_J < median κ_H (headline r, plain-GD
trajectory) — the paper's claim that D^E reduces κ more than D^J and both reduce it. Per-step
fractions and the same test at the other r are reported next to it.

Preconditioned gradient descent
-------------------------------
θ ← θ − η D⁻¹ ∇L, D = D_E or D_J recomputed from the exact Hessian at every step (D = I for plain
GD). D⁻¹, not D^{-1/2}: with x̃ = D^{1/2} x, plain GD on x̃ is exactly x ← x − η D⁻¹ ∇f, whose
effective Hessian D⁻¹H is similar to D^{-1/2} H D^{-1/2}, the matrix whose κ is measured. (The
paper's Eq. (6)/Algorithm 1 writes D^{-1/2}∇f, which is GD in x̃ only if D^{1/2} is read as the
preconditioner ≈ |H|; ESGD's actual update divides by D_E itself, as here.) Fair step sizes: each
run uses η = c / max|λ(D₀^{-1/2} H₀ D₀^{-1/2})| at the (shared) initial point, with the same c
(``ConditionConfig.step_scale``) for all three, i.e. every run starts at the same fraction of its
own stability limit 2/λ_max. A run whose loss becomes non-finite is stopped and reported as
diverged.

Choice of σ, and what was found (200 steps, N = 64, c = 1, seeds 0–2)
---------------------------------------------------------------------
σ = 0.1 (also ``CoordinateMLP``'s default) was chosen because plain GD fits best with it: mean final
loss 0.24 (from ~1.1) against 0.28, 0.28, 0.40, 0.44 for σ = 0.15, 0.2, 0.25, 0.3. The result
depends on σ, and this module reports it rather than hides it:
- κ_N(D_E^{-1/2} H D_E^{-1/2}) < κ_N(H) at every step of every run tried (all σ, all seeds);
- κ_N(D_J^{-1/2} H D_J^{-1/2}) < κ_N(H) on 69–99 % of the steps, with spikes whenever a diagonal
  entry of the indefinite H passes through zero (Jacobi then rescales by a near-zero number; its
  κ there depends on the damping, see "damping_sensitivity_at_init");
- the paper's E-below-J ordering of the medians held for σ = 0.1 (all seeds, all r) and σ = 0.15
  (r = N), but not for σ ≥ 0.2, where κ_J's median is usually the smaller one (σ = 0.2: 1 of 3
  seeds, σ = 0.25: 0 of 3, σ = 0.3: 2 of 3 at r = N, 0 of 3 at r = 8, 16, 32).
Two caveats on the GD runs: plain GD with a step fixed at init reaches the edge of stability
(η·λ_max(H) > 2 from step ~24 at σ = 0.1, loss oscillating after step ~50), so the later plain-GD
iterates — where the headline κ's are measured — sit on an oscillating trajectory; and the
step-size rule is hard on Jacobi, whose preconditioned λ_max at init is inflated by near-zero
diagonal entries of the indefinite H, which makes its η ~100× smaller than equilibration's.
"""

from __future__ import annotations

import json as _json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch.func import functional_call

from nf_precond_plugin.fields import CoordinateMLP
from nf_precond_plugin.rundir import new_run_dir
from nf_precond_plugin.runtime import enable_fast_cpu_math

DAMPING = 1e-10
"""Relative damping δ of both diagonal preconditioners: d_i ← d_i + δ·max_j d_j."""

EXTRA_RANKS: tuple[int, ...] = (8, 16, 32)
"""Further fixed counts r at which κ_r is reported next to the structural headline r = N."""

PRECONDITIONERS: tuple[str, ...] = ("none", "equilibration", "jacobi")

KAPPA_DEFINITION = (
    "kappa_r(A) = |lambda|_(1) / |lambda|_(r): ratio of the largest to the r-th largest eigenvalue "
    "magnitude of the symmetric matrix A (H, D_E^-1/2 H D_E^-1/2 or D_J^-1/2 H D_J^-1/2), with a "
    "fixed count r = {r} = number of training points N (N < P = {p}; the rank bound of the "
    "Gauss-Newton part J^T J). No eigenvalue tolerance: H is indefinite and its spectrum decays "
    "continuously to rounding level, so sigma_max/sigma_min would only measure a cutoff. Diagonal "
    "congruence preserves rank and inertia (Sylvester), so comparing the three matrices at the same "
    "index r is like for like. Headline values are medians over the steps of plain gradient descent, "
    "all three matrices evaluated at the same iterates. D_E = diag(row 2-norms of H), D_J = |diag H|, "
    "each damped d += {damping:g} * max(d)."
)


@dataclass
class ConditionConfig:
    """Condition numbers of the exact Hessian of a 2x16 Gaussian MLP fitting sin(2πx)+sin(6πx),
    before and after equilibration / Jacobi preconditioning (paper Fig. 2), plus preconditioned GD."""

    steps: int = 200
    """Gradient-descent steps of each of the three runs (none / equilibration / Jacobi); the exact Hessian is formed at every step."""
    samples: int = 64
    """Number N of evenly spaced training points on [-1, 1]; the headline κ uses the N-th largest |eigenvalue|."""
    sigma: float = 0.1
    """Width σ of the Gaussian activation exp(-z²/2σ²); 0.1 fitted best with plain GD over σ in 0.1..0.3 (see module docstring)."""
    seed: int = 0
    """Seed of the network initialisation (all three runs start from the same parameters)."""
    output_dir: Path = Path("outputs")
    """A new run directory condition-<timestamp> is created under this directory."""
    json: bool = False
    """Print the result dictionary as JSON instead of a summary (the CLI does the printing)."""
    step_scale: float = 1.0
    """Step size of every run as a fraction c of 1/λ_max of its preconditioned Hessian at init: η = c / max|λ(D^-1/2 H D^-1/2)|."""


# ----------------------------------------------------------------------------------------------
# Linear algebra: preconditioner diagonals, congruence, condition numbers
# ----------------------------------------------------------------------------------------------


def _damped(d: torch.Tensor, damping: float) -> torch.Tensor:
    scale = d.max()
    if not scale > 0:  # H == 0: every direction is equally (un)curved
        return torch.ones_like(d)
    return d + damping * scale


def equilibration_diagonal(hessian: torch.Tensor, damping: float = DAMPING) -> torch.Tensor:
    """Diagonal of D_E: the 2-norm of each row of H, plus ``damping`` · the largest row norm."""
    return _damped(torch.linalg.vector_norm(hessian, dim=1), damping)


def jacobi_diagonal(hessian: torch.Tensor, damping: float = DAMPING) -> torch.Tensor:
    """Diagonal of D_J: |H_ii|, plus ``damping`` · max_i |H_ii|."""
    return _damped(hessian.diagonal().abs(), damping)


def preconditioner_diagonal(hessian: torch.Tensor, kind: str, damping: float = DAMPING) -> torch.Tensor:
    if kind == "none":
        return torch.ones(hessian.shape[0], dtype=hessian.dtype, device=hessian.device)
    if kind == "equilibration":
        return equilibration_diagonal(hessian, damping)
    if kind == "jacobi":
        return jacobi_diagonal(hessian, damping)
    raise ValueError(f"Unknown preconditioner {kind!r}; expected one of {', '.join(PRECONDITIONERS)}")


def congruence(hessian: torch.Tensor, diagonal: torch.Tensor) -> torch.Tensor:
    """D^{-1/2} H D^{-1/2} for D = diag(``diagonal``) > 0 (Eq. 4), symmetrised against rounding."""
    s = diagonal.rsqrt()
    a = hessian * s[:, None] * s[None, :]
    return 0.5 * (a + a.T)


def sorted_magnitudes(matrix: torch.Tensor) -> torch.Tensor:
    """|eigenvalues| of a symmetric matrix, largest first."""
    return torch.linalg.eigvalsh(matrix).abs().sort(descending=True).values


def kappa_top_r(magnitudes: torch.Tensor, r: int) -> float:
    """κ_r = |λ|_(1) / |λ|_(r) from eigenvalue magnitudes sorted largest first (r is 1-based)."""
    if not 1 <= r <= magnitudes.numel():
        raise ValueError(f"r = {r} outside 1..{magnitudes.numel()}")
    top, rth = float(magnitudes[0]), float(magnitudes[r - 1])
    return top / rth if rth > 0 else math.inf


def spectral_spread(magnitudes: torch.Tensor, r: int) -> float:
    """|λ|_(1) / geometric mean of |λ|_(1..r): tolerance-free spread of the top-r spectrum."""
    top = magnitudes[:r]
    if not float(top[-1]) > 0:
        return math.inf
    return float(top[0] / torch.exp(torch.log(top).mean()))


def kappa(matrix: torch.Tensor, r: int) -> float:
    """κ_r of a symmetric matrix (see the module docstring)."""
    return kappa_top_r(sorted_magnitudes(matrix), r)


# ----------------------------------------------------------------------------------------------
# The neural field and its exact loss Hessian
# ----------------------------------------------------------------------------------------------


def target_signal(x: torch.Tensor) -> torch.Tensor:
    return torch.sin(2 * math.pi * x) + torch.sin(6 * math.pi * x)


def make_problem(samples: int, dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.linspace(-1.0, 1.0, samples, dtype=dtype)[:, None]
    return x, target_signal(x)


def make_field(sigma: float, seed: int, hidden_features: int = 16, num_layers: int = 3) -> CoordinateMLP:
    """The paper's 2×16 Gaussian MLP (``num_layers`` counts linear layers), in float64."""
    torch.manual_seed(seed)
    model = CoordinateMLP(
        1, 1, hidden_features=hidden_features, num_layers=num_layers, activation="gaussian", sigma=sigma
    )
    return model.double()


def flat_parameters(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()]).clone()


def mse_loss_function(
    model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor
) -> Callable[[torch.Tensor], torch.Tensor]:
    """L(θ) = mean((F(x; θ) − y)²) as a pure function of the flattened parameter vector θ."""
    names = [name for name, _ in model.named_parameters()]
    shapes = [p.shape for _, p in model.named_parameters()]
    sizes = [math.prod(s) for s in shapes]

    def loss(theta: torch.Tensor) -> torch.Tensor:
        chunks = torch.split(theta, sizes)
        params = {n: c.view(s) for n, c, s in zip(names, chunks, shapes)}
        return (functional_call(model, params, (x,)) - y).square().mean()

    return loss


def exact_hessian(loss: Callable[[torch.Tensor], torch.Tensor], theta: torch.Tensor) -> torch.Tensor:
    """The exact P×P Hessian of ``loss`` at ``theta`` (forward-over-reverse), symmetrised."""
    h = torch.func.hessian(loss)(theta.detach())
    return 0.5 * (h + h.T)


# ----------------------------------------------------------------------------------------------
# The experiment
# ----------------------------------------------------------------------------------------------


def _spectra(hessian: torch.Tensor) -> dict[str, torch.Tensor]:
    return {
        "H": sorted_magnitudes(hessian),
        "E": sorted_magnitudes(congruence(hessian, equilibration_diagonal(hessian))),
        "J": sorted_magnitudes(congruence(hessian, jacobi_diagonal(hessian))),
    }


def _finite_or_none(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


def _median(values: Sequence[float | None]) -> float | None:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    if not finite:
        return None
    return float(torch.tensor(finite, dtype=torch.float64).median())


def _gd_run(kind: str, config: ConditionConfig, ranks: Sequence[int], advance: Callable[[], None]) -> dict:
    """Gradient descent θ ← θ − η D⁻¹∇L from the shared initial point; κ of H, E, J at every iterate."""
    x, y = make_problem(config.samples)
    model = make_field(config.sigma, config.seed)
    loss_fn = mse_loss_function(model, x, y)
    grad_fn = torch.func.grad_and_value(loss_fn)
    theta = flat_parameters(model)
    headline = ranks[0]

    record: dict = {
        "loss": [],
        "kappa": {m: {str(r): [] for r in ranks} for m in ("H", "E", "J")},
        "spread": {m: [] for m in ("H", "E", "J")},
        "lambda_max": {m: [] for m in ("H", "E", "J")},
        "diverged_at": None,
    }
    lr = math.nan
    for step in range(config.steps + 1):
        grad, value = grad_fn(theta)
        loss_value = float(value)
        if not math.isfinite(loss_value):
            record["diverged_at"] = step
            break
        record["loss"].append(loss_value)
        hessian = exact_hessian(loss_fn, theta)
        spectra = _spectra(hessian)
        for m, mags in spectra.items():
            for r in ranks:
                record["kappa"][m][str(r)].append(_finite_or_none(kappa_top_r(mags, r)))
            record["spread"][m].append(_finite_or_none(spectral_spread(mags, headline)))
            record["lambda_max"][m].append(float(mags[0]))
        diag = preconditioner_diagonal(hessian, kind)
        if step == 0:
            own = {"none": "H", "equilibration": "E", "jacobi": "J"}[kind]
            lr = config.step_scale / float(spectra[own][0])
        if step == config.steps:
            break
        theta = theta - lr * grad / diag
        advance()
    record["lr"] = lr
    record["final_loss"] = record["loss"][-1] if record["diverged_at"] is None else None
    return record


def _damping_sensitivity(config: ConditionConfig, r: int) -> dict:
    """κ_r of E and J at the initial point for several relative dampings δ (does δ matter?)."""
    x, y = make_problem(config.samples)
    model = make_field(config.sigma, config.seed)
    hessian = exact_hessian(mse_loss_function(model, x, y), flat_parameters(model))
    out = {}
    for delta in (1e-4, 1e-6, 1e-8, 1e-10, 1e-12):
        out[f"{delta:g}"] = {
            "E": _finite_or_none(kappa(congruence(hessian, equilibration_diagonal(hessian, delta)), r)),
            "J": _finite_or_none(kappa(congruence(hessian, jacobi_diagonal(hessian, delta)), r)),
        }
    return out


def _plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    r = str(result["r"])
    runs = result["history"]
    colors = {"H": "tab:blue", "E": "tab:orange", "J": "tab:green"}
    labels = {"H": "H", "E": r"$D_E^{-1/2} H D_E^{-1/2}$", "J": r"$D_J^{-1/2} H D_J^{-1/2}$"}
    fig, axes = plt.subplots(1, 3, figsize=(17, 4.8))

    ax = axes[0]
    for m in ("H", "E", "J"):
        ax.plot(
            [float("nan") if v is None else v for v in runs["none"]["kappa"][m][r]], color=colors[m], label=labels[m]
        )
    ax.set_yscale("log")
    ax.set_xlabel("GD step (plain GD trajectory)")
    ax.set_ylabel(rf"$\kappa_{{{r}}} = |\lambda|_{{(1)}} / |\lambda|_{{({r})}}$")
    ax.set_title("(a) same iterates: H vs. its two preconditioned versions")
    ax.legend()

    ax = axes[1]
    for kind, m in (("equilibration", "E"), ("jacobi", "J")):
        run = runs[kind]
        ax.plot(
            [float("nan") if v is None else v for v in run["kappa"]["H"][r]],
            color=colors[m],
            ls=":",
            label=f"{kind} run: H (before)",
        )
        ax.plot(
            [float("nan") if v is None else v for v in run["kappa"][m][r]],
            color=colors[m],
            label=f"{kind} run: preconditioned (after)",
        )
    ax.set_yscale("log")
    ax.set_xlabel("GD step (each preconditioned run's own trajectory)")
    ax.set_ylabel(rf"$\kappa_{{{r}}}$")
    ax.set_title("(b) paper Fig. 2a style: before (dotted) / after (solid)")
    ax.legend(fontsize=8)

    ax = axes[2]
    for kind, m in (("none", "H"), ("equilibration", "E"), ("jacobi", "J")):
        run = runs[kind]
        ax.plot(run["loss"], color=colors[m], label=f"{kind} (η={run['lr']:.3g})")
    ax.set_yscale("log")
    ax.set_xlabel("GD step")
    ax.set_ylabel("MSE loss")
    ax.set_title(
        rf"(c) GD, $\theta \leftarrow \theta - \eta D^{{-1}} \nabla L$, $\eta = {result['step_scale']:g}/\lambda_{{max}}$ at init"
    )
    ax.legend()

    fig.suptitle(
        f"2x16 Gaussian MLP (σ={result['sigma']:g}, P={result['num_parameters']}), "
        f"f(x)=sin(2πx)+sin(6πx), N={result['samples']}; exact Hessian every step",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run_condition(config: ConditionConfig, progress: bool = True) -> dict:
    """Run the Fig. 2 experiment; write condition.json and condition.png into a new run directory."""
    enable_fast_cpu_math()
    if config.steps < 0:
        raise ValueError(f"Invalid steps: {config.steps} (expected >= 0)")
    if config.samples < 2:
        raise ValueError(f"Invalid samples: {config.samples} (expected >= 2)")
    started = time.perf_counter()
    run_dir = new_run_dir(config.output_dir, "condition")
    threads = torch.get_num_threads()
    # 321×321 matrices gain nothing from intra-op threads, and on a shared 2-core machine OpenMP
    # spin-waiting made single steps take seconds; restore the caller's setting afterwards.
    torch.set_num_threads(1)
    try:
        return _run(config, progress, run_dir, started)
    finally:
        torch.set_num_threads(threads)


def _run(config: ConditionConfig, progress: bool, run_dir: Path, started: float) -> dict:

    num_parameters = flat_parameters(make_field(config.sigma, config.seed)).numel()
    r = config.samples if config.samples < num_parameters else num_parameters
    ranks = [r] + [k for k in EXTRA_RANKS if k != r and k <= num_parameters]

    runs: dict[str, dict] = {}
    if progress:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
        with bar:
            for kind in PRECONDITIONERS:
                task = bar.add_task(f"GD ({kind}) + exact Hessian", total=config.steps)
                runs[kind] = _gd_run(kind, config, ranks, lambda task=task: bar.advance(task))
                bar.update(task, completed=config.steps)
    else:
        for kind in PRECONDITIONERS:
            runs[kind] = _gd_run(kind, config, ranks, lambda: None)

    key = str(r)
    plain = runs["none"]["kappa"]
    medians = {m: _median(plain[m][key]) for m in ("H", "E", "J")}

    def ordering(kappas: dict[str, list], rank: str) -> dict:
        med = {m: _median(kappas[m][rank]) for m in ("H", "E", "J")}
        holds = None not in med.values() and med["E"] < med["J"] < med["H"]
        steps = list(zip(kappas["H"][rank], kappas["E"][rank], kappas["J"][rank]))
        valid = [(h, e, j) for h, e, j in steps if None not in (h, e, j)]
        frac = lambda cond: (sum(1 for t in valid if cond(*t)) / len(valid)) if valid else None  # noqa: E731
        return {
            "E_lt_H": None not in med.values() and med["E"] < med["H"],
            "J_lt_H": None not in med.values() and med["J"] < med["H"],
            "E_lt_J": None not in med.values() and med["E"] < med["J"],
            "median_H": med["H"],
            "median_E": med["E"],
            "median_J": med["J"],
            "holds": bool(holds),
            "fraction_steps_E_lt_J_lt_H": frac(lambda h, e, j: e < j < h),
            "fraction_steps_E_lt_H": frac(lambda h, e, j: e < h),
            "fraction_steps_J_lt_H": frac(lambda h, e, j: j < h),
            "fraction_steps_E_lt_J": frac(lambda h, e, j: e < j),
        }

    per_rank = {str(k): ordering(plain, str(k)) for k in ranks}
    paper_style = {
        kind: {
            "median_kappa_H_before": _median(runs[kind]["kappa"]["H"][key]),
            "median_kappa_after": _median(runs[kind]["kappa"][m][key]),
        }
        for kind, m in (("equilibration", "E"), ("jacobi", "J"))
    }

    result: dict = {
        "kappa_H": medians["H"],
        "kappa_E": medians["E"],
        "kappa_J": medians["J"],
        "kappa_definition": KAPPA_DEFINITION.format(r=r, p=num_parameters, damping=DAMPING),
        "ordering_holds": per_rank[key]["holds"],
        "ordering_test": f"median kappa_{r}(E) < median kappa_{r}(J) < median kappa_{r}(H) along the plain-GD iterates",
        "ordering_by_r": per_rank,
        "paper_style_per_run": paper_style,
        "spread_definition": f"|lambda|_(1) / geometric mean of |lambda|_(1..{r})",
        "median_spread": {m: _median(runs["none"]["spread"][m]) for m in ("H", "E", "J")},
        "r": r,
        "ranks": ranks,
        "kappa_H_per_step": plain["H"][key],
        "kappa_E_per_step": plain["E"][key],
        "kappa_J_per_step": plain["J"][key],
        "final_loss": {kind: runs[kind]["final_loss"] for kind in PRECONDITIONERS},
        "final_loss_none": runs["none"]["final_loss"],
        "final_loss_equilibration": runs["equilibration"]["final_loss"],
        "final_loss_jacobi": runs["jacobi"]["final_loss"],
        "learning_rates": {kind: runs[kind]["lr"] for kind in PRECONDITIONERS},
        "loss_per_step": {kind: runs[kind]["loss"] for kind in PRECONDITIONERS},
        "history": runs,
        "damping": DAMPING,
        "damping_sensitivity_at_init": _damping_sensitivity(config, r),
        "update_rule": "theta <- theta - eta * D^-1 * grad L (D = I, D_E or D_J from the exact Hessian at every step)",
        "step_size_rule": f"eta = {config.step_scale:g} / max|eig(D0^-1/2 H0 D0^-1/2)| at the shared initial point",
        "loss_definition": "mean over the N points of (F(x) - y)^2",
        "num_parameters": num_parameters,
        "samples": config.samples,
        "sigma": config.sigma,
        "seed": config.seed,
        "steps": config.steps,
        "step_scale": config.step_scale,
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(config).items()},
        "run_dir": str(run_dir),
    }
    plot_path = run_dir / "condition.png"
    _plot(result, plot_path)
    result["plot"] = str(plot_path)
    result["runtime_s"] = time.perf_counter() - started
    (run_dir / "condition.json").write_text(_json.dumps(result, indent=1, allow_nan=False))
    return result
