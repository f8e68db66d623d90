"""Input checks on tensor values that do not stall the device."""
import torch
from torch import Tensor


def check_on_device(condition: Tensor, message: str) -> None:
    """Raise ``ValueError(message)`` unless the boolean scalar ``condition`` holds.

    On CUDA and under ``torch.compile`` the check is asynchronous (``torch._assert_async``): no
    host sync and no graph break, and a failure raises from the device at its next sync. On CPU
    it raises at once, where reading the value costs nothing.
    """
    if condition.is_cuda or torch.compiler.is_compiling():
        torch._assert_async(condition, message)
    elif not bool(condition):
        raise ValueError(message)
