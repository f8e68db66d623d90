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


# The "auto" rule's two thresholds, measured on a 2-core CPU with benchmarks/attention.py --backends
# (RESULTS.md, "Backends"): up to GATHER_MAX_ELEMENTS gathered [E, H, D] elements (16 MB in
# float32) the few vectorised calls of `gather` win; from COMPILED_MIN_EDGES edges up the
# generated loops of `compiled` beat the sparse-matrix calls of `csr`.
GATHER_MAX_ELEMENTS = 1 << 22
COMPILED_MIN_EDGES = 1 << 62


def resolve_backend(backend: str, device: torch.device, pattern: CSRPattern, width: int) -> str:
    """The kernel backend that runs a call (``backend`` is one of `BACKENDS` but ``"reference"``).

    ``width`` is ``H · max(D, Dv)``, the size of one edge's gathered row. ``"auto"`` picks:

    * on CUDA, ``"triton"`` when triton is installed, else ``"csr"``;
    * on CPU, ``"gather"`` when ``E · width <= GATHER_MAX_ELEMENTS`` (small patterns such as
      molecule batches, where launch count dominates); else ``"compiled"`` when
      ``E >= COMPILED_MIN_EDGES`` and a C++ compiler is found; else ``"csr"``.

    A forced ``"compiled"`` without a compiler falls back to ``"csr"`` with a one-time warning;
    a forced ``"triton"`` without triton or outside CUDA (and ``TRITON_INTERPRET=1``) is refused.
    """
    if backend == "auto":
        if device.type == "cuda":
            return "triton" if kernel_module("triton").available() else "csr"
        if pattern.num_edges * width <= GATHER_MAX_ELEMENTS:
            return "gather"
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


def _warn_once(key: str, message: str) -> None:
    if key not in _warned:
        _warned.add(key)
        warnings.warn(message, RuntimeWarning, stacklevel=3)
