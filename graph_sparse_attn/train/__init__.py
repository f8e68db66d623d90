"""Training on top of everything else: tasks, the loop (checkpoints, resume, DDP) and the ``gsa`` CLI."""
from .loop import TrainConfig, Trainer

__all__ = ["TrainConfig", "Trainer"]
