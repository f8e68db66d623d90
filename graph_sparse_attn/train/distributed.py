"""Data-parallel helpers: ``torchrun`` set-up (gloo on CPU, NCCL on GPU), rank checks, reductions."""
from __future__ import annotations

import os
from typing import Any, List, Optional

import torch
import torch.distributed as dist


def init_from_env(device: torch.device) -> bool:
    """Join the process group that ``torchrun`` describes in the environment; ``False`` when not launched by it."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ or int(os.environ["WORLD_SIZE"]) <= 1:
        return False
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend)
    return True


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    """Only rank 0 writes files and shows progress."""
    return rank() == 0


def local_device(requested: str) -> torch.device:
    """``auto`` → this rank's CUDA device when present, else CPU; ``cpu``, ``cuda`` (this rank's
    device, ``cuda:$LOCAL_RANK``: under torchrun each rank its own GPU) or ``cuda:K`` when this machine
    has it (``ValueError`` otherwise; ``RuntimeError`` for a string torch cannot read)."""
    if requested == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        return torch.device("cpu")
    device = torch.device(requested)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("this machine has no CUDA device (this torch build or driver sees none)")
        if device.index is None:
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        if device.index >= torch.cuda.device_count():
            raise ValueError(f"this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif device.type != "cpu":
        raise ValueError(f"training runs on cpu or cuda, got {device.type}")
    return device


def sum_across_ranks(value: float, device: Optional[torch.device] = None) -> float:
    """Sum a Python number over all ranks (identity when not distributed)."""
    if not is_distributed():
        return value
    tensor = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return float(tensor)


def mean_across_ranks(value: float, device: Optional[torch.device] = None) -> float:
    """Average a Python number over all ranks (identity when not distributed)."""
    return sum_across_ranks(value, device) / world_size()


def gather_objects(value: Any) -> List[Any]:
    """Every rank's ``value``, in rank order (``[value]`` when not distributed); every rank must call it."""
    if not is_distributed():
        return [value]
    gathered: List[Any] = [None] * world_size()
    dist.all_gather_object(gathered, value)
    return gathered


def any_rank(flag: bool, device: Optional[torch.device] = None) -> bool:
    """Whether ``flag`` holds on some rank (``flag`` when not distributed), so that all ranks take the same
    branch around a collective call; every rank must call it."""
    if not is_distributed():
        return flag
    tensor = torch.tensor([int(flag)], device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return bool(tensor)


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def cleanup() -> None:
    """Leave the process group `init_from_env` joined (a no-op when not distributed)."""
    if is_distributed():
        dist.destroy_process_group()
