"""Returning freed C heap pages to the system: resident memory measured before and after."""
import os
import sys

import pytest
import torch

from graph_sparse_attn.train.heap import release_freed_heap


def resident_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif(not sys.platform.startswith("linux") or os.confstr("CS_GNU_LIBC_VERSION") is None,
                    reason="malloc_trim is glibc's")
def test_release_freed_heap_returns_pages_held_behind_a_live_block():
    # 64 KiB blocks come from the heap (below glibc's mmap threshold); the last one stays alive,
    # so the heap's top cannot shrink on its own and the 127 MiB freed beneath it stay resident.
    blocks = [torch.ones(16 * 1024) for _ in range(2048)]
    survivor = blocks.pop()
    del blocks
    before = resident_bytes()
    assert release_freed_heap()
    after = resident_bytes()
    assert before - after > 64 * 2**20, (before, after)
    assert survivor.sum().item() == survivor.numel()
