"""Training: the shared accelerate-based trainer and the registry of training tasks (recipes)."""
from .tasks import TASKS, TaskSetup, apply_overrides, load_recipe, register_task, run_recipe
from .trainer import TrainConfig, Trainer, TrainResult, checkpoints, set_seed

__all__ = [
    "TASKS",
    "TaskSetup",
    "TrainConfig",
    "TrainResult",
    "Trainer",
    "apply_overrides",
    "checkpoints",
    "load_recipe",
    "register_task",
    "run_recipe",
    "set_seed",
]
