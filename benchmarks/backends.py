"""Forward+backward time of each CPU kernel backend of `sparse_attention`, by pattern size.

These are the measurements behind ``backend="auto"`` (`graph_sparse_attn/ops/dispatch.py`):
random graphs with 16 sources per node and sparse ones with 2 (molecule-like degree), 4 heads ×
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

from common import update_results
from graph_sparse_attn import CSRPattern, patterns, sparse_attention
from graph_sparse_attn.ops.dispatch import resolve_backend

BACKENDS = ("gather", "csr", "compiled")
HEADS, HEAD_DIM = 4, 16
DEGREES = (16, 2)


def measure(num_nodes: int, degree: int, repeats: int) -> dict:
    """Median forward+backward seconds of each backend on a random graph of ``num_nodes`` with ``degree`` sources each."""
    edge_index = patterns.random(num_nodes, degree, generator=torch.Generator().manual_seed(0))
    pattern = CSRPattern.from_edge_index(edge_index, num_nodes)
    q, k, v = (torch.randn(num_nodes, HEADS, HEAD_DIM, requires_grad=True) for _ in range(3))

    def run(backend: str) -> float:
        start = time.perf_counter()
        sparse_attention(q, k, v, pattern, backend=backend).square().sum().backward()
        return time.perf_counter() - start

    for backend in BACKENDS:
        run(backend)  # warm-up: compiles `compiled`'s kernels for this dtype and shape
    times = {backend: [] for backend in BACKENDS}
    for _ in range(repeats):
        for backend in BACKENDS:
            times[backend].append(run(backend))
    auto = resolve_backend("auto", q.device, pattern.num_edges, pattern.num_dst, HEADS * HEAD_DIM)
    return {"edges": pattern.num_edges, "auto": auto, **{b: statistics.median(t) for b, t in times.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes, printed only")
    parser.add_argument("--repeats", type=int, default=5, help="timed repetitions per backend")
    args = parser.parse_args()
    sizes = {16: (16, 64, 256, 1024, 4096, 16384, 65536, 262144), 2: (256, 1024, 4096, 16384, 65536)}
    if args.quick:
        sizes = {degree: [n for n in ns if n <= 1024] for degree, ns in sizes.items()}
    cases = [(degree, n) for degree in DEGREES for n in sizes[degree]]
    rows = [(degree, n, measure(n, degree, args.repeats)) for degree, n in tqdm(cases, desc="pattern sizes")]

    header = "| in-degree | N | E | " + " | ".join(f"{b} (ms)" for b in BACKENDS) + " | fastest | auto picks |"
    lines = [header, "|" + "---|" * (len(BACKENDS) + 5)]
    for degree, n, r in rows:
        fastest = min(BACKENDS, key=lambda b: r[b])
        lines.append(f"| {degree} | {n:,} | {r['edges']:,} | " + " | ".join(f"{1000 * r[b]:.2f}" for b in BACKENDS)
                     + f" | {fastest} | {r['auto']} |")
    command = "python benchmarks/backends.py" + (" --quick" if args.quick else "")
    markdown = (
        f"## Backends (`{command}`)\n\n"
        f"`sparse_attention` forward+backward on CPU ({os.cpu_count()} cores, {torch.get_num_threads()} threads), random "
        f"graphs with {' or '.join(map(str, DEGREES))} sources per node, a prebuilt `CSRPattern`, {HEADS} heads × {HEAD_DIM}, float32; median of {args.repeats} "
        "interleaved repetitions after a warm-up call. These set the `\"auto\"` thresholds in "
        "`graph_sparse_attn/ops/dispatch.py` (`compiled` is left to larger patterns because its first call compiles "
        "for seconds).\n\n" + "\n".join(lines)
    )
    print(markdown)
    if not args.quick:
        update_results("backends", markdown)


if __name__ == "__main__":
    main()
