"""One optimizer's checkpoint in a runner's run directory: ``checkpoints/<optimizer>.pt``.

It holds what ``resume_run`` needs to continue bit-identically: the model's and the optimizer's
state, torch's CPU generator (which the optimizers draw their probes from), the metrics rows so
far and the counters. Written after every epoch by rank 0, through ``nf_precond_plugin.checkpoints``
(atomic, loaded with ``weights_only=True``). It holds the replicated state only, so a run started
on N processes resumes on any number.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from nf_precond_plugin.checkpoints import load_checkpoint, save_atomically
from nf_precond_plugin.errors import UserInputError

if TYPE_CHECKING:
    from nf_precond_plugin.training.run import OptimizerRun


def save_checkpoint(run: OptimizerRun) -> None:
    """Write ``run``'s checkpoint through a temporary file, so that a crash never leaves half of one."""
    save_atomically(
        {
            "model": run.model.state_dict(),
            "optimizer": run.optimizer.state_dict(),
            "scheduler": run.scheduler.state_dict() if run.scheduler is not None else None,
            "torch_rng": torch.get_rng_state(),
            "history": run.history,
            "epoch": run.epoch,
            "step": run.step,
            "wall_seconds": run.wall_seconds,
            "optimizer_step_seconds": run.optimizer_step_seconds,
        },
        run.checkpoint_path,
    )


def resume_run(run: OptimizerRun) -> bool:
    """Restore ``run`` from its checkpoint if there is one; whether it did.

    A checkpoint that cannot be read, or that does not fit this run's model and optimizer, is a
    ``UserInputError`` naming the file.
    """
    path = run.checkpoint_path
    if not path.exists():
        return False
    checkpoint = load_checkpoint(path)
    try:
        run.model.load_state_dict(checkpoint["model"])
        run.optimizer.load_state_dict(checkpoint["optimizer"])
        if run.scheduler is not None and checkpoint.get("scheduler") is not None:
            run.scheduler.load_state_dict(checkpoint["scheduler"])
        torch.set_rng_state(checkpoint["torch_rng"])
        run.history, run.epoch, run.step = checkpoint["history"], checkpoint["epoch"], checkpoint["step"]
        run.wall_seconds = checkpoint["wall_seconds"]
        run.optimizer_step_seconds = checkpoint["optimizer_step_seconds"]
    except (KeyError, TypeError, ValueError, RuntimeError) as error:
        reason = f"no {error}" if isinstance(error, KeyError) else str(error).strip().splitlines()[0]
        raise UserInputError(
            f"{path}: this checkpoint does not fit {run.name}'s model and optimizer ({reason}); "
            "resume with the settings the run was started with"
        ) from None
    return True
