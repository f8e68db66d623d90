"""Shared pieces of the benchmark scripts: peak-memory probes, one process per point, RESULTS.md."""
from __future__ import annotations

import json
import random
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import List, Sequence

HERE = Path(__file__).resolve().parent
MEMORY_LIMIT_GB = 22
# Pause before each timed call of an interleaved comparison. Right after compiled (inductor, OpenMP)
# kernels, an eager layer measured 1.08-1.11x its time after eager ones (stop 20): whichever method
# runs next would pay for the previous one's threads.
SETTLE_SECONDS = 0.02


def round_order(names: Sequence[str], round_index: int) -> List[str]:
    """``names`` in a seeded random order for round ``round_index`` of an interleaved timing, so that
    over the rounds every method follows every other about equally often (a fixed order, or one
    reversed every round, pins each method's predecessors: an eager baseline always ran after a
    compiled model)."""
    order = list(names)
    random.Random(round_index).shuffle(order)
    return order


def settle() -> None:
    """Let the previous timed call's worker threads go idle (`SETTLE_SECONDS`)."""
    time.sleep(SETTLE_SECONDS)


def rss_kb(field: str = "VmRSS") -> int:
    """Current (``VmRSS``) or peak (``VmHWM``) resident memory of this process in KiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} missing from /proc/self/status")


def start_memory_probe() -> int:
    """Cap the address space, return freed heap to the OS, reset the peak-RSS watermark and return the
    baseline RSS (KiB). Without the trim, memory a warm-up freed but glibc kept would serve the measured
    repetitions without raising the peak, hiding part of their memory (unevenly across methods)."""
    from graph_sparse_attn.train.heap import release_freed_heap

    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT_GB << 30, resource.RLIM_INFINITY))
    release_freed_heap()
    Path("/proc/self/clear_refs").write_text("5")
    return rss_kb("VmRSS")


def peak_mb_since(baseline_kb: int) -> float:
    return (rss_kb("VmHWM") - baseline_kb) / 1024


def run_point(script: str, args: List[str], timeout: float) -> dict:
    """Run ``script --point ARGS`` in a fresh interpreter and parse the JSON line it prints last."""
    try:
        proc = subprocess.run([sys.executable, script, "--point", *args], capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"status": f"timeout (> {timeout:.0f} s)"}
    if proc.returncode != 0:
        # Only what says so is out of memory (the address-space cap makes allocations fail with these);
        # a crash or another signal is a failure, not a memory win for the other methods.
        oom = any(s in proc.stderr for s in ("MemoryError", "std::bad_alloc", "can't allocate memory", "out of memory"))
        signal = f"killed by signal {-proc.returncode}" if proc.returncode < 0 else ""
        detail = signal or proc.stderr.strip().splitlines()[-1:]
        return {"status": "out of memory" if oom else f"failed: {detail}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def is_oom(error: BaseException) -> bool:
    """Whether ``error`` says memory ran out (not, e.g., a CUDA "illegal memory access")."""
    import torch

    text = str(error).lower()
    return isinstance(error, (MemoryError, torch.OutOfMemoryError)) or any(
        phrase in text for phrase in ("out of memory", "can't allocate memory", "not enough memory"))


def update_results(section: str, markdown: str, path: Path = HERE / "RESULTS.md") -> None:
    """Replace (or append) the block ``section`` of RESULTS.md with ``markdown``."""
    start, end = f"<!-- {section}:start -->", f"<!-- {section}:end -->"
    text = path.read_text() if path.exists() else "# Benchmark results\n\nLatest figures; each block names the command that produced it.\n"
    block = f"{start}\n{markdown}\n{end}"
    if start in text:
        text = text[: text.index(start)] + block + text[text.index(end) + len(end):]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    path.write_text(text)
