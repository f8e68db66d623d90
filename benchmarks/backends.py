"""Forward+backward time of each CPU kernel backend of `sparse_attention`, by pattern size.

These are the measurements behind ``backend="auto"`` (`graph_sparse_attn/ops/dispatch.py`):
random graphs with 16 sources per node, sparse ones with 2 (molecule-like degree) and sliding
windows of ±16 and ±64 (where the ``band`` backend applies), 4 heads ×
16 channels, float32, a prebuilt `CSRPattern` (as models hold it), one process, the
backends interleaved repetition by repetition so load drift hits them alike; each cell is the
median of the timed repetitions after a warm-up call (which includes ``compiled``'s compile).

Usage::

    python benchmarks/backends.py            # print the table and update benchmarks/RESULTS.md
    python benchmarks/backends.py --quick    # small sizes, printed only
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
from tqdm import tqdm

from common import round_order, settle, update_results
from graph_sparse_attn import CSRPattern, patterns, sparse_attention
from graph_sparse_attn.ops import band_kernel
from graph_sparse_attn.ops.dispatch import band_candidate, resolve_backend

BACKENDS = ("gather", "band", "csr", "compiled")
HEADS, HEAD_DIM = 4, 16
# (pattern, parameter, sizes N): random graphs with that many sources per node, sliding windows of that half-width.
FAMILIES = (
    ("random", 16, (16, 64, 256, 1024, 4096, 16384, 65536, 262144)),
    ("random", 2, (256, 1024, 4096, 16384, 65536)),
    ("window", 16, (1024, 4096, 16384, 65536)),
    ("window", 64, (256, 1024, 4096, 16384, 65536)),
)
# The gathered pass keeps [E, H, D] tensors for backward: beyond this E·H·D it only measures swapping.
GATHER_MAX_MEASURED = 1 << 26


def build(family: str, param: int, num_nodes: int) -> torch.Tensor:
    if family == "random":
        return patterns.random(num_nodes, param, generator=torch.Generator().manual_seed(0))
    return patterns.sliding_window(num_nodes, param)


def auto_choice(q: torch.Tensor, pattern: CSRPattern) -> str:
    """What ``backend="auto"`` runs for a plain call on ``pattern`` (the band check first, as `sparse_attention` does it)."""
    if band_candidate(q.device, pattern.num_edges, pattern.num_src, pattern.num_dst) and \
            band_kernel.band_layout(pattern.col, pattern.row, pattern.num_dst) is not None:
        return "band"
    return resolve_backend("auto", q.device, pattern.num_edges, pattern.num_dst, HEADS * HEAD_DIM)


def measure(family: str, param: int, num_nodes: int, repeats: int) -> dict:
    """Median forward+backward seconds of each backend that applies (``None`` where one does not)."""
    pattern = CSRPattern.from_edge_index(build(family, param, num_nodes), num_nodes)
    q, k, v = (torch.randn(num_nodes, HEADS, HEAD_DIM, requires_grad=True) for _ in range(3))
    applies = [b for b in BACKENDS
               if not (b == "band" and family != "window")
               and not (b == "gather" and pattern.num_edges * HEADS * HEAD_DIM > GATHER_MAX_MEASURED)]

    def run(backend: str) -> float:
        start = time.perf_counter()
        sparse_attention(q, k, v, pattern, backend=backend).square().sum().backward()
        return time.perf_counter() - start

    for backend in applies:
        run(backend)  # warm-up: compiles `compiled`'s kernels for this dtype and shape
    times = {backend: [] for backend in applies}
    for repeat in range(repeats):
        for backend in round_order(applies, repeat):  # no backend always runs right after another
            settle()
            times[backend].append(run(backend))
    return {"edges": pattern.num_edges, "auto": auto_choice(q, pattern),
            **{b: statistics.median(times[b]) if b in times else None for b in BACKENDS}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes, printed only")
    parser.add_argument("--repeats", type=int, default=5, help="timed repetitions per backend")
    args = parser.parse_args()
    cases = [(family, param, n) for family, param, sizes in FAMILIES for n in sizes if not args.quick or n <= 1024]
    rows = [(family, param, n, measure(family, param, n, args.repeats)) for family, param, n in tqdm(cases, desc="patterns")]

    header = "| pattern | N | E | " + " | ".join(f"{b} (ms)" for b in BACKENDS) + " | fastest | auto picks |"
    lines = [header, "|" + "---|" * (len(BACKENDS) + 5)]
    for family, param, n, r in rows:
        ran = [b for b in BACKENDS if r[b] is not None]
        fastest = min(ran, key=lambda b: r[b])
        name = f"random, {param} sources per node" if family == "random" else f"window ±{param}"
        lines.append(f"| {name} | {n:,} | {r['edges']:,} | "
                     + " | ".join("—" if r[b] is None else f"{1000 * r[b]:.2f}" for b in BACKENDS)
                     + f" | {fastest} | {r['auto']} |")
    command = "python benchmarks/backends.py" + (" --quick" if args.quick else "")
    markdown = (
        f"## Backends (`{command}`)\n\n"
        f"`sparse_attention` forward+backward on CPU ({os.cpu_count()} cores, {torch.get_num_threads()} threads), random "
        f"graphs and sliding windows, a prebuilt `CSRPattern`, {HEADS} heads × {HEAD_DIM}, float32; median of {args.repeats} "
        "interleaved repetitions after a warm-up call; — where a backend does not apply (`band` off windows) or would "
        f"only measure swapping (`gather` beyond E·H·D = 2^{GATHER_MAX_MEASURED.bit_length() - 1}). These set the `\"auto\"` "
        "thresholds in `graph_sparse_attn/ops/dispatch.py` (`compiled` is left to larger patterns because its first call "
        "compiles for seconds).\n\n" + "\n".join(lines)
    )
    print(markdown)
    if not args.quick:
        update_results("backends", markdown)


if __name__ == "__main__":
    main()
