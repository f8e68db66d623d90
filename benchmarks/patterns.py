"""Pattern construction cost, exact vs approximate kNN, and attention over dynamic vs fixed patterns.

1. Build time of every fixed pattern at N = 1,000,000 (target < 2 s each); "batch" rows split the
   nodes into sequences of 4,096.
2. Exact chunked kNN at N = 65,536, D = 64, k = 32 (target < 15 s, < 2 GB), and LSH time and
   recall@32 against it at the same size.
3. Forward+backward of `sparse_attention` (4 heads × 16) over the kNN pattern vs a sliding
   window with the same number of edges.

Each measurement runs in a fresh process (peak RSS above its baseline).

Usage::

    python benchmarks/patterns.py          # updates benchmarks/RESULTS.md
"""
from __future__ import annotations

import argparse
import json
import os
import time

from common import peak_mb_since, run_point, start_memory_probe, update_results

N_BUILD, N_KNN, DIM, K = 1_000_000, 65_536, 64, 32


def _fixed_patterns():
    import torch

    from graph_sparse_attn import patterns

    gen = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    n = N_BUILD
    batch = torch.arange(n) // 4096
    ring = torch.arange(n)
    graph = torch.cat([torch.stack([ring, (ring + 1) % n]), torch.stack([(ring + 1) % n, ring])], dim=1)
    return {
        "sliding_window(w=64)": lambda: patterns.sliding_window(n, 64),
        "sliding_window(w=16, dilation=4, batch)": lambda: patterns.sliding_window(n, 16, dilation=4, batch=batch),
        # Over one 1M-token sequence these two have ~N²/128 edges, so they are built per 4,096-token sequence.
        "strided(stride=64, batch)": lambda: patterns.strided(n, 64, batch=batch),
        "fixed(block=64, batch)": lambda: patterns.fixed(n, 64, batch=batch),
        "log_sparse": lambda: patterns.log_sparse(n),
        "block_local(64)": lambda: patterns.block_local(n, 64),
        "global_tokens([0], batch)": lambda: patterns.global_tokens(n, [0], batch=batch),
        "random(8)": lambda: patterns.random(n, 8, generator=gen()),
        "longformer(w=64, [0])": lambda: patterns.longformer(n, 64, [0]),
        "bigbird(w=32, [0], r=8, batch)": lambda: patterns.bigbird(n, 32, [0], 8, generator=gen(), batch=batch),
        "k_hop(ring, k=2)": lambda: patterns.k_hop(graph, 2, n),
        "expander(degree=8)": lambda: patterns.expander(n, 8, generator=gen()),
        "add_virtual_nodes(1, batch)": lambda: patterns.add_virtual_nodes(n, 1, batch=batch).edge_index,
        "window 8 + random 8 + union": lambda: patterns.union(patterns.sliding_window(n, 8), patterns.random(n, 8, generator=gen())),
    }


def measure_build(name: str) -> dict:
    build = _fixed_patterns()[name]
    baseline = start_memory_probe()
    start = time.perf_counter()
    edges = build()
    seconds = time.perf_counter() - start
    return {"status": "ok", "seconds": seconds, "edges": edges.size(1), "peak_mb": peak_mb_since(baseline)}


def measure_knn(method: str) -> dict:
    import torch

    from graph_sparse_attn import patterns

    torch.manual_seed(0)
    x = torch.randn(N_KNN, DIM)
    baseline = start_memory_probe()
    start = time.perf_counter()
    if method == "exact":
        edges = patterns.knn(x, k=K)
    else:
        edges = patterns.lsh_knn(x, K, generator=torch.Generator().manual_seed(0))
    seconds, peak = time.perf_counter() - start, peak_mb_since(baseline)
    extra = {} if method == "exact" else {"recall_at_32": patterns.recall_at_k(edges, patterns.knn(x, k=K), N_KNN)}
    return {"status": "ok", "edges": edges.size(1), "seconds": seconds, "peak_mb": peak, **extra}


def measure_attention(kind: str) -> dict:
    import torch

    from graph_sparse_attn import patterns, sparse_attention

    torch.manual_seed(0)
    heads, head_dim = 4, 16
    q, k, v = (torch.randn(N_KNN, heads, head_dim, requires_grad=True) for _ in range(3))
    start = time.perf_counter()
    if kind == "knn":
        edge_index = patterns.knn(q.detach().reshape(N_KNN, -1), k=K)
    else:
        # ±K/2 without the self loop: K sources per interior query, as kNN gives every query K.
        window = patterns.sliding_window(N_KNN, K // 2)
        edge_index = window[:, window[0] != window[1]]
    build = time.perf_counter() - start
    times = []
    for repetition in range(3):
        if repetition == 1:  # after the warm-up call, which may compile the backend's kernels
            baseline = start_memory_probe()
        start = time.perf_counter()
        sparse_attention(q, k, v, edge_index).square().sum().backward()
        times.append(time.perf_counter() - start)
    return {"status": "ok", "edges": edge_index.size(1), "build_seconds": build, "seconds": min(times[1:]),
            "peak_mb": peak_mb_since(baseline)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--point", nargs=2, metavar=("KIND", "NAME"), help=argparse.SUPPRESS)
    parser.add_argument("--timeout", type=float, default=900)
    args = parser.parse_args()
    if args.point:
        kind, name = args.point
        fn = {"build": measure_build, "knn": measure_knn, "attention": measure_attention}[kind]
        print(json.dumps(fn(name)))
        return

    from tqdm import tqdm

    plan = [("build", name) for name in _fixed_patterns()] + [("knn", "exact"), ("knn", "lsh"), ("attention", "knn"), ("attention", "window")]
    rows = []
    for kind, name in tqdm(plan, desc="pattern benchmarks"):
        result = run_point(__file__, [kind, name], args.timeout)
        rows.append({"kind": kind, "name": name, **result})
        tqdm.write(f"{kind:>9} {name:>40}: {result}")

    ok = lambda r: r.get("status") == "ok"  # noqa: E731
    build = ["| pattern | edges | build time (s) | peak (MB) |", "|---|---|---|---|"]
    build += [f"| {r['name']} | {r['edges']:,} | {r['seconds']:.2f} | {r['peak_mb']:,.0f} |" if ok(r) else f"| {r['name']} | {r['status']} | | |"
              for r in rows if r["kind"] == "build"]
    knn = ["| method | time (s) | peak (MB) | recall@32 vs exact |", "|---|---|---|---|"]
    knn += [f"| {r['name']} | {r['seconds']:.2f} | {r['peak_mb']:,.0f} | {r.get('recall_at_32', 1.0):.3f} |" if ok(r) else f"| {r['name']} | {r['status']} | | |"
            for r in rows if r["kind"] == "knn"]
    att = ["| pattern | edges | pattern build (s) | forward+backward (s, faster of 2 after a warm-up) | peak (MB) |", "|---|---|---|---|---|"]
    att += [f"| {r['name']} | {r['edges']:,} | {r['build_seconds']:.2f} | {r['seconds']:.2f} | {r['peak_mb']:,.0f} |" if ok(r) else f"| {r['name']} | {r['status']} | | | |"
            for r in rows if r["kind"] == "attention"]
    markdown = (
        f"## Patterns (`python benchmarks/patterns.py`)\n\n{os.cpu_count()} CPU cores; each row in a fresh process.\n\n"
        f"### Build time at N = {N_BUILD:,} (target < 2 s each)\n\n" + "\n".join(build)
        + f"\n\n### kNN at N = {N_KNN:,}, D = {DIM}, k = {K} (exact target < 15 s and < 2 GB)\n\n" + "\n".join(knn)
        + f"\n\n### sparse_attention forward+backward, N = {N_KNN:,}, 4 heads × 16: dynamic kNN pattern vs a window of K sources per query\n\n"
        + "\n".join(att)
    )
    print(markdown)
    update_results("patterns", markdown)


if __name__ == "__main__":
    main()
