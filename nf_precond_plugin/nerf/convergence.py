"""convergence.csv and convergence.png of a nerfstudio run: train PSNR against iteration and time.

    train PSNR at iteration k = −10 · log10(mean of the colour MSE of the last W batches),  W = 50

(one batch's PSNR is too noisy to read). Losses stay on the device until a checkpoint writes them:
``float()`` on every iteration would synchronise a GPU on every step.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import torch

PSNR_WINDOW = 50
"""Iterations averaged into the train PSNR."""


class ConvergenceLog:
    def __init__(self) -> None:
        self.rows: list[dict[str, float]] = []
        self._pending: list[torch.Tensor] = []

    def record(self, iteration: int, wall_seconds: float, loss: torch.Tensor) -> None:
        self._pending.append(loss.detach())
        self.rows.append({"iteration": iteration, "wall_seconds": wall_seconds})

    def _flush(self) -> None:
        if self._pending:
            values = torch.stack(self._pending).tolist()
            for row, value in zip(self.rows[len(self.rows) - len(values) :], values):
                row["loss"] = value
            self._pending = []

    def with_psnr(self) -> list[dict[str, float]]:
        self._flush()
        rows, window = [], []
        for row in self.rows:
            window = (window + [row["loss"]])[-PSNR_WINDOW:]
            mean = sum(window) / len(window)
            rows.append({**row, "train_psnr": -10.0 * math.log10(mean) if mean > 0 else float("inf")})
        return rows

    def write(self, run_dir: Path, method_name: str) -> None:
        if not self.rows:
            return
        rows = self.with_psnr()
        run_dir.mkdir(parents=True, exist_ok=True)
        with open(run_dir / "convergence.csv", "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        from nf_precond_plugin.training.plots import convergence_plot

        title = f"{method_name}: train PSNR, mean loss of the last {PSNR_WINDOW} batches"
        convergence_plot({method_name: rows}, "train_psnr", run_dir / "convergence.png", title, "iteration")
