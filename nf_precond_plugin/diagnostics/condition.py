"""Figure 2 of the paper as a reproducible computation: condition numbers of the exact Hessian
of a small neural field before and after diagonal (equilibration / Jacobi) preconditioning.

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

What was found across σ and seeds is in the README (Diagnostics).
"""

from __future__ import annotations

import json as _json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from nf_precond_plugin.curvature.exact import (
    DAMPING,
    PRECONDITIONERS,
    congruence,
    equilibration_diagonal,
    jacobi_diagonal,
    kappa,
    kappa_top_r,
    preconditioner_diagonal,
    sorted_magnitudes,
    spectral_spread,
)
from nf_precond_plugin.diagnostics.condition_plot import condition_plot
from nf_precond_plugin.diagnostics.toy_field import (
    exact_hessian,
    flat_parameters,
    make_field,
    make_problem,
    mse_loss_function,
)
from nf_precond_plugin.errors import UserInputError
from nf_precond_plugin.rundir import new_run_dir
from nf_precond_plugin.runtime import enable_fast_cpu_math
from nf_precond_plugin.training.step import NonFiniteLossError, training_step

EXTRA_RANKS: tuple[int, ...] = (8, 16, 32)
"""Further fixed counts r at which κ_r is reported next to the structural headline r = N."""

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
    """Gradient-descent steps of each of the three runs (none / equilibration / Jacobi);
    the exact Hessian is formed at every step."""
    samples: int = 64
    """Number N of evenly spaced training points on [-1, 1];
    the headline κ uses the N-th largest |eigenvalue|."""
    sigma: float = 0.1
    """Width σ of the Gaussian activation exp(-z²/2σ²); 0.1 fitted best with plain GD over σ in 0.1..0.3 (README)."""
    seed: int = 0
    """Seed of the network initialisation (all three runs start from the same parameters)."""
    output_dir: Path = Path("outputs")
    """A new run directory condition-<timestamp> is created under this directory."""
    json: bool = False
    """Print the result dictionary as JSON instead of a summary (the CLI does the printing)."""
    step_scale: float = 1.0
    """Step size of every run as a fraction c of 1/λ_max of its preconditioned Hessian at init:
    η = c / max|λ(D^-1/2 H D^-1/2)|."""


class DiagonalGD(torch.optim.Optimizer):
    """Gradient descent preconditioned by a given diagonal: θ ← θ − lr · g / d.

    ``diagonal`` (one tensor per parameter) is set before each step from the exact Hessian.
    """

    def __init__(self, params, lr: float) -> None:
        super().__init__(params, dict(lr=lr))
        self.diagonal: list[torch.Tensor] | None = None

    @torch.no_grad()
    def step(self, closure=None):
        params = [p for group in self.param_groups for p in group["params"]]
        for p, d in zip(params, self.diagonal):
            p.sub_(self.param_groups[0]["lr"] * p.grad / d)


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
    theta = torch.nn.Parameter(flat_parameters(model))
    optimizer = DiagonalGD([theta], lr=math.nan)  # η is set from the spectrum at the first iterate
    headline = ranks[0]

    record: dict = {
        "loss": [],
        "kappa": {m: {str(r): [] for r in ranks} for m in ("H", "E", "J")},
        "spread": {m: [] for m in ("H", "E", "J")},
        "lambda_max": {m: [] for m in ("H", "E", "J")},
        "diverged_at": None,
    }

    def measured_loss(step: int) -> tuple[torch.Tensor, None]:
        """The loss at θ, after recording κ's at θ and setting the step's exact preconditioner."""
        loss = loss_fn(theta)
        if not math.isfinite(float(loss)):
            raise NonFiniteLossError(float(loss))
        record["loss"].append(float(loss))
        hessian = exact_hessian(loss_fn, theta.detach())
        spectra = _spectra(hessian)
        for m, mags in spectra.items():
            for r in ranks:
                record["kappa"][m][str(r)].append(_finite_or_none(kappa_top_r(mags, r)))
            record["spread"][m].append(_finite_or_none(spectral_spread(mags, headline)))
            record["lambda_max"][m].append(float(mags[0]))
        optimizer.diagonal = [preconditioner_diagonal(hessian, kind)]
        if step == 0:
            own = {"none": "H", "equilibration": "E", "jacobi": "J"}[kind]
            optimizer.param_groups[0]["lr"] = config.step_scale / float(spectra[own][0])
        return loss, None

    for step in range(config.steps + 1):
        try:
            if step == config.steps:
                measured_loss(step)  # the last iterate is measured, not stepped from
                break
            training_step([optimizer], lambda step=step: measured_loss(step), check_finite=False)
        except NonFiniteLossError:
            record["diverged_at"] = step
            break
        advance()
    record["lr"] = optimizer.param_groups[0]["lr"]
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


def run_condition(config: ConditionConfig, progress: bool = True) -> dict:
    """Run the Fig. 2 experiment; write condition.json and condition.png into a new run directory."""
    enable_fast_cpu_math()
    if config.steps < 0:
        raise UserInputError(f"--steps {config.steps}: expected >= 0")
    if config.samples < 2:
        raise UserInputError(f"--samples {config.samples}: expected >= 2")
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
    condition_plot(result, plot_path)
    result["plot"] = str(plot_path)
    result["runtime_s"] = time.perf_counter() - started
    (run_dir / "condition.json").write_text(_json.dumps(result, indent=1, allow_nan=False))
    return result
