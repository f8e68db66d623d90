"""Training on top of everything else: the task table, task adapters, the loop (checkpoints, exact resume, DDP) and the ``gsa`` CLI."""
from .loop import TrainConfig, Trainer
from .table import TASKS, TaskSpec, find_task, make_task, resolve_config

__all__ = ["TASKS", "TaskSpec", "TrainConfig", "Trainer", "find_task", "make_task", "resolve_config"]
