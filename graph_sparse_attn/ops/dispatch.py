"""Which kernel runs `sparse_attention`: the backend names, their modules and the ``"auto"`` rule.

A kernel backend is a module of this package with two plain functions (no autograd),
``forward(q, k, v, pattern, bias, gate, keep) -> (out, lse)`` and
``backward(grad_out, q, k, v, out, lse, pattern, bias, gate, keep, need_dlogits) -> (dq, dk, dv, dlogits)``,
and an ``available()`` check; `ops.fused` gives them autograd and a `torch.library` custom op.
"""
from __future__ import annotations

import importlib
import os
import warnings
from types import ModuleType

import torch

from .pattern import CSRPattern

BACKENDS = ("auto", "gather", "csr", "compiled", "triton", "reference")
_KERNEL_MODULES = {"gather": "gather_kernel", "csr": "csr_kernel", "compiled": "compiled_kernel", "triton": "triton_kernel"}
_warned: set = set()


def kernel_module(name: str) -> ModuleType:
    """The module implementing kernel backend ``name`` (``"csr"``, ``"compiled"`` or ``"triton"``)."""
    return importlib.import_module(f".{_KERNEL_MODULES[name]}", __package__)


def resolve_backend(backend: str, device: torch.device, pattern: CSRPattern) -> str:
    """The kernel backend that runs a call (``backend`` is one of `BACKENDS` but ``"reference"``).

    ``"auto"`` picks ``"triton"`` on CUDA when triton is installed, else ``"csr"``; on CPU it picks
    ``"compiled"`` when a C++ compiler is found and the pattern has at least
    `COMPILED_MIN_EDGES` edges (below that, inductor's per-call overhead outweighs its faster
    loops; measured in ``benchmarks/attention.py``), else ``"csr"``.
    A forced ``"compiled"`` without a compiler falls back to ``"csr"`` with a one-time warning.
    """
    if backend == "auto":
        if device.type == "cuda":
            return "triton" if kernel_module("triton").available() else "csr"
        if pattern.num_edges >= COMPILED_MIN_EDGES and kernel_module("compiled").available():
            return "compiled"
        return "csr"
    if backend == "compiled" and not kernel_module("compiled").available():
        _warn_once("compiled", "backend='compiled' needs a C++ compiler for torch.compile (inductor); none was found, using 'csr'")
        return "csr"
    if backend == "triton":
        if not kernel_module("triton").available():
            raise ValueError("backend='triton' needs the triton package: pip install 'graph-sparse-attn[gpu]'")
        if device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
            raise ValueError(f"backend='triton' runs on CUDA tensors (or on CPU with TRITON_INTERPRET=1), got device {device}")
    return backend


# Measured on a 2-core CPU (benchmarks/RESULTS.md, "Backends"): the compiled kernels win from here up.
COMPILED_MIN_EDGES = 1 << 62


def _warn_once(key: str, message: str) -> None:
    if key not in _warned:
        _warned.add(key)
        warnings.warn(message, RuntimeWarning, stacklevel=3)
