"""One training runner shared by every standalone task."""

from nf_precond_plugin.training.runner import RunSettings, Task, TrainingDiverged, run_task

__all__ = ["RunSettings", "Task", "TrainingDiverged", "run_task"]
