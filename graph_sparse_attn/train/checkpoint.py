"""Checkpoint files (written atomically by `graph_sparse_attn.io`) and the random states they carry."""
from __future__ import annotations

import pickle
import random
from typing import Any, Dict, Optional, Union

import numpy as np
import torch

from ..io import PathLike


def rng_state() -> Dict[str, Any]:
    """Python, NumPy, torch (and CUDA) random states, to resume a run exactly."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def load_checkpoint(path: PathLike, map_location: Optional[Union[str, torch.device]] = "cpu") -> Dict[str, Any]:
    """Load a checkpoint written by `graph_sparse_attn.io.atomic_save`; ``ValueError`` naming the file when
    it cannot be read (truncated, or not a checkpoint)."""
    try:
        return torch.load(path, map_location=map_location, weights_only=False)
    except (RuntimeError, EOFError, pickle.UnpicklingError) as error:
        raise ValueError(f"{path} is not a readable checkpoint ({str(error).splitlines()[0] if str(error) else type(error).__name__})") from None
