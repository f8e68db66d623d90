"""The C heap of a CPU training process: large blocks reused in place, freed pages handed back.

glibc serves every block above its mmap threshold (at most 32 MiB by default) with a fresh
``mmap``, and unmaps it on free, so each step's large activations ([E, H] weights, [T, 64]
activations of 65k-token batches) are faulted in page by page, every step. In a replay of 192
ListOps-sized steps (2 cores) that was 24M page faults and 40 s of system time; with
`keep_large_blocks_on_heap` 3.5M and 6 s, at 754 against 874 ms a step, and peak resident memory
2.9 against 2.0 GB (blocks freed in the heap stay mapped until the next trim). The first 288 steps
of the LRA Text run trained at 44.4 against 35.9 samples/s.

Batches of varying size (sequences of 200 to 2,048 tokens, molecule batches of varying node
counts) leave glibc's heap fragmented: freed activations sit in holes between live blocks, which
glibc keeps mapped. A run's resident memory then grows without bound while its live tensors do
not (an LRA Text run reached 12 GB). ``malloc_trim(0)`` returns those holes' pages to the system;
elsewhere (macOS, musl, Windows) there is nothing to call and this does nothing.

Trimming has a price: the next step faults the returned pages back in. In a replay of ListOps-like
batches (32 sequences of 500-2,000 tokens, 2 cores), resident memory grew from 1.7 to 2.3 GB over
160 steps untrimmed and stayed at 0.5 GB trimmed after every step; the cost in step time ranged from
none to 25 % across runs. Every `TRIM_EVERY_STEPS` steps it falls back to 0.5 GB at each trim, and
the price is spread over the steps between.
"""
from __future__ import annotations

import ctypes
import ctypes.util
from functools import lru_cache
from typing import Callable, Optional

TRIM_EVERY_STEPS = 32
# glibc's mallopt parameters (malloc.h; values are C ints) and the values set: blocks up to 1 GiB
# from the heap, and the heap's top trimmed at a free only beyond 1 GiB (the trainer trims every
# TRIM_EVERY_STEPS steps instead).
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_MMAP_THRESHOLD = _TRIM_THRESHOLD = 1 << 30


@lru_cache(maxsize=None)
def _libc_function(name: str) -> Optional[Callable[..., int]]:
    library = ctypes.util.find_library("c")
    if library is None:
        return None
    try:
        return getattr(ctypes.CDLL(library), name, None)
    except OSError:
        return None


def release_freed_heap() -> bool:
    """Return the C heap's free pages to the operating system; whether the platform can (glibc)."""
    trim = _libc_function("malloc_trim")
    if trim is None:
        return False
    trim(0)
    return True


def keep_large_blocks_on_heap() -> bool:
    """Serve blocks up to 1 GiB from the heap, where freed ones are reused without page faults,
    instead of fresh ``mmap``s; whether the platform allowed it (glibc). Process-wide and lasting:
    pair it with `release_freed_heap` every few steps, or freed blocks stay resident."""
    mallopt = _libc_function("mallopt")
    # The parameter numbers are glibc's: another libc with a mallopt (musl's ignores it) must not get them.
    if mallopt is None or _libc_function("malloc_trim") is None:
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD))
