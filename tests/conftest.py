"""Suite-wide settings: the device tests run on, and Triton's CPU interpreter.

``GSA_TEST_DEVICE`` (``cpu`` by default, or ``cuda``) is the device that the ``device`` fixture
hands to device-aware tests; ``benchmarks/gpu.py`` runs ``tests/ops`` with ``GSA_TEST_DEVICE=cuda``.
Without CUDA, ``TRITON_INTERPRET=1`` is set here, before anything imports triton (importing
torch_geometric does), so the triton backend's kernels run on CPU tensors in its interpreter.
"""
import os

import pytest
import torch

DEVICE = torch.device(os.environ.get("GSA_TEST_DEVICE", "cpu"))
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_configure(config: pytest.Config) -> None:
    if DEVICE.type not in ("cpu", "cuda"):
        raise pytest.UsageError(f"GSA_TEST_DEVICE must be cpu or cuda, got {DEVICE}")
    if DEVICE.type == "cuda" and not torch.cuda.is_available():
        raise pytest.UsageError("GSA_TEST_DEVICE=cuda but torch sees no CUDA device")


@pytest.fixture
def device() -> torch.device:
    """The device under test (``GSA_TEST_DEVICE``, default cpu)."""
    return DEVICE
