"""Which kernel runs `sparse_attention`: the backend names, their modules and the ``"auto"`` rule.

``"gather"`` is one gathered pass differentiated by autograd (`gather_kernel.attention`, called
by `ops.attention` directly), ``"band"`` dense masked attention over query blocks for patterns
inside a band ``|i - j| <= w`` (`band_kernel`, also called directly; ``"auto"`` takes it where
`band_candidate` allows and the pattern qualifies); ``"reference"`` is the test oracle. Every other backend is a
fused kernel: a module of this package with two plain functions (no autograd),
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


BACKENDS = ("auto", "gather", "band", "csr", "compiled", "triton", "reference")
_KERNEL_MODULES = {"csr": "csr_kernel", "compiled": "compiled_kernel", "triton": "triton_kernel"}
# What a training run may choose (`gsa train --backend`): everything but the reference oracle.
KERNEL_BACKENDS = ("auto", "gather", *_KERNEL_MODULES)
_warned: set = set()


def kernel_module(name: str) -> ModuleType:
    """The module implementing kernel backend ``name`` (``"csr"``, ``"compiled"`` or ``"triton"``)."""
    return importlib.import_module(f".{_KERNEL_MODULES[name]}", __package__)


# The "auto" rule's thresholds, measured on a 2-core CPU (forward+backward, H=4, D=16;
# benchmarks/RESULTS.md, "Backends"). `gather` keeps [E, H, D] gathers alive for backward, so it
# wins while call count dominates (E·W <= 2^16: 0.9 ms vs csr's 2.0 ms at E=256) and, on sparse
# graphs, somewhat beyond: on ogbg-molhiv batches of 128 molecules (mean in-degree 2.1,
# E·W = 4.7e5) it took 5.2 ms against csr's 6.0 (prebuilt pattern) and 4.6 ms against 6.4 on a raw
# edge_index, which it needs no sort for; at 512 molecules (E·W = 1.8e6) csr is ahead on a prebuilt
# pattern (22 vs 24 ms). On denser graphs its memory-bound gathers lose (random graphs of in-degree
# 16: 2x csr's time at E=16k).
# `compiled` beats `csr` from ~2k edges (0.75x csr's time at E=8.4M) but its first call per
# dtype/shape compiles for seconds, so auto uses it only where a step takes long enough (from
# ~1M edges, ≥0.3 s a step) to repay that at once.
GATHER_MAX_ELEMENTS = 1 << 16
GATHER_SPARSE_MAX_ELEMENTS = 1 << 19
GATHER_SPARSE_MAX_DEGREE = 3
COMPILED_MIN_EDGES = 1 << 20


# A model that runs many steps repays the compiled kernels' first-call compile at any size: on
# ogbg-molhiv batches (E ~ 10k) they take about 0.75x the gathered pass's step, ~20 ms less a step
# (benchmarks/molecules.py), so 2,000 steps cover even a cold compile (45 s).
COMPILED_MIN_STEPS = 2000


# `band` (dense masked attention over query blocks) computes N (B + 2w) scores where the others
# compute E, but as matrix products, and needs no transposed pattern: on windows of ±16 and ±64
# it was the fastest backend at every size measured (benchmarks/RESULTS.md, "Backends"), from
# E = 28,864 (±64 at N = 256: 2.6 ms against compiled's 4.6 and csr's 5.5) to E = 8.4M (0.28 s
# against 0.81 and 1.48). Smaller patterns stay with the per-edge backends, which `gather` runs
# in a handful of calls.
BAND_MIN_EDGES = 1 << 14


def band_candidate(device: torch.device, num_edges: int, num_src: int, num_dst: int) -> bool:
    """Whether ``"auto"`` checks a call's pattern for the ``band`` backend: on CPU, outside
    ``torch.compile`` (the check reads the pattern on the host), for square patterns of at least
    ``BAND_MIN_EDGES`` edges. It takes ``band`` when `band_kernel.band_layout` accepts the pattern
    and the call has no per-edge bias, gate, values, dropout or returned weights."""
    return (device.type == "cpu" and num_edges >= BAND_MIN_EDGES and num_src == num_dst
            and not torch.compiler.is_compiling())


def backend_for_steps(backend: str, device: torch.device, steps: int, windows: bool = False) -> str:
    """The backend a model should take for a run of ``steps`` training steps: ``"auto"`` becomes
    ``"compiled"`` on CPU when ``steps >= COMPILED_MIN_STEPS`` and a C++ compiler is found (the
    per-call rule of `resolve_backend` cannot know that many calls will follow), unless the model
    attends over ``windows``, which ``"auto"`` runs on ``band``, faster still (0.15 s against
    0.23 s on a ListOps-sized batch of Longformer windows). Any other ``backend``, or a shorter
    run, is returned as is."""
    check_backend(backend)
    if (backend == "auto" and device.type == "cpu" and steps >= COMPILED_MIN_STEPS and not windows
            and kernel_module("compiled").available()):
        return "compiled"
    return backend


def check_backend(backend: str) -> None:
    """Raise ``ValueError`` unless ``backend`` is one of `BACKENDS`."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")


def resolve_backend(backend: str, device: torch.device, num_edges: int, num_dst: int, width: int) -> str:
    """The kernel backend that runs a call of ``num_edges`` edges into ``num_dst`` targets
    (``backend`` is one of `BACKENDS` but ``"reference"`` and ``"band"``; ``"auto"`` has already
    declined ``band``, see `band_candidate`).

    ``width`` is ``H · max(D, Dv)``, the size of one edge's gathered row. ``"auto"`` picks:

    * on CUDA, ``"triton"`` when triton is installed, else ``"csr"``;
    * on CPU, ``"gather"`` when ``E · width <= GATHER_MAX_ELEMENTS`` (tiny patterns, where call
      count dominates) or when ``E · width <= GATHER_SPARSE_MAX_ELEMENTS`` and the mean in-degree
      ``E / num_dst`` is at most ``GATHER_SPARSE_MAX_DEGREE`` (small sparse graphs: molecule
      batches); else ``"compiled"`` when ``E >= COMPILED_MIN_EDGES`` and a C++ compiler is found;
      else ``"csr"``;
    * on other devices, the CPU rule without ``"compiled"`` (a CPU-only backend).

    A forced ``"compiled"`` outside CPU is refused, and without a compiler falls back to ``"csr"``
    with a one-time warning;
    a forced ``"triton"`` without triton or outside CUDA (and ``TRITON_INTERPRET=1``) is refused.
    """
    if backend == "auto":
        if device.type == "cuda":
            return "triton" if kernel_module("triton").available() else "csr"
        size = num_edges * width
        if size <= GATHER_MAX_ELEMENTS or (size <= GATHER_SPARSE_MAX_ELEMENTS and num_edges <= GATHER_SPARSE_MAX_DEGREE * num_dst):
            return "gather"
        if num_edges >= COMPILED_MIN_EDGES and device.type == "cpu" and kernel_module("compiled").available():
            return "compiled"
        return "csr"
    check_backend_runs_on(backend, device)
    if backend == "compiled" and not kernel_module("compiled").available():
        _warn_once("compiled", "backend='compiled' needs a C++ compiler for torch.compile (inductor); none was found, using 'csr'")
        return "csr"
    return backend


def check_backend_runs_on(backend: str, device: torch.device) -> None:
    """Raise ``ValueError`` if a forced ``backend`` cannot run on ``device`` (``"compiled"`` off CPU;
    ``"triton"`` without triton, or off CUDA unless ``TRITON_INTERPRET=1``)."""
    if backend == "compiled" and device.type != "cpu":
        raise ValueError(f"backend='compiled' is the CPU fused backend, got device {device}: use 'auto' or 'triton' on GPUs")
    if backend == "triton":
        if not kernel_module("triton").available():
            raise ValueError("backend='triton' needs the triton package: pip install 'graph-sparse-attn[gpu]'")
        if device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
            raise ValueError(f"backend='triton' runs on CUDA tensors (or on CPU with TRITON_INTERPRET=1), got device {device}")


def _warn_once(key: str, message: str) -> None:
    if key not in _warned:
        _warned.add(key)
        warnings.warn(message, RuntimeWarning, stacklevel=3)
