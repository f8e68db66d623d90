"""Suite-wide settings: the device tests run on, Triton's CPU interpreter, the C allocator left as it is.

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


@pytest.fixture(autouse=True)
def _trainer_leaves_the_allocator_alone(monkeypatch):
    """A CPU `Trainer` switches glibc to serving large blocks from the heap, process-wide and for
    good (`train.heap`); tests keep the pytest process as it started. `tests/train/test_heap.py`
    checks the setting itself in fresh processes."""
    from graph_sparse_attn.train import loop

    monkeypatch.setattr(loop, "keep_large_blocks_on_heap", lambda: False)
