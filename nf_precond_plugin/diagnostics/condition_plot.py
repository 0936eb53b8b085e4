"""The Fig. 2 picture: κ along plain GD, before/after per preconditioned run, and the GD losses."""

from __future__ import annotations

from pathlib import Path


def condition_plot(result: dict, path: Path) -> None:
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
        rf"(c) GD, $\theta \leftarrow \theta - \eta D^{{-1}} \nabla L$, "
        rf"$\eta = {result['step_scale']:g}/\lambda_{{max}}$ at init"
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
