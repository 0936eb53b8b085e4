"""One training runner shared by every standalone task, and the training step every loop uses."""

from nf_precond_plugin.errors import TrainingDiverged
from nf_precond_plugin.training.runner import RunSettings, Task, run_task
from nf_precond_plugin.training.step import NonFiniteLossError, StepResult, needs_create_graph, training_step

__all__ = [
    "NonFiniteLossError",
    "RunSettings",
    "StepResult",
    "Task",
    "TrainingDiverged",
    "needs_create_graph",
    "run_task",
    "training_step",
]
