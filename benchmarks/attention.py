"""Forward+backward time and peak memory of sparse attention layers, side by side.

Every point runs in a fresh process so that its peak resident memory is its own: the peak RSS
of the timed repetitions above the RSS after a warm-up repetition, so one-time costs (our
``compiled`` backend's kernel compilation, library initialisation) are left out for every method. Methods, all with 64 input channels and
4 heads × 16 channels:

* ``ours``       — ``SparseAttnConv`` as a user gets it (``backend="auto"``)
* ``csr``, ``compiled``, ``reference`` — the same projections around ``sparse_attention`` with that
  backend forced (the sparse-matrix kernels, the ``torch.compile``-generated CPU kernels, the
  gather/scatter oracle); the measured crossover between the first two sets the ``"auto"`` rule
* ``transformer``— PyG ``TransformerConv``
* ``gatv2``      — PyG ``GATv2Conv``
* ``dense``      — dense ``scaled_dot_product_attention`` with the boolean mask (where it fits)

Usage::

    python benchmarks/attention.py            # full run; updates benchmarks/RESULTS.md
    python benchmarks/attention.py --quick    # a one-minute smoke run, printed only
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

from common import HERE, MEMORY_LIMIT_GB, is_oom, peak_mb_since, run_point, start_memory_probe, update_results

METHODS = ("ours", "csr", "compiled", "reference", "transformer", "gatv2", "dense")
KERNELS = ("csr", "compiled", "reference")
IN_CHANNELS, HEADS, HEAD_DIM, WINDOW, RANDOM_DEGREE = 64, 4, 16, 64, 16


def _build_layer(method: str):
    import torch
    from torch_geometric.nn import GATv2Conv, TransformerConv

    from graph_sparse_attn import SparseAttnConv, sparse_attention

    if method == "ours":
        return SparseAttnConv(IN_CHANNELS, HEAD_DIM, heads=HEADS)
    if method == "transformer":
        return TransformerConv(IN_CHANNELS, HEAD_DIM, heads=HEADS)
    if method == "gatv2":
        return GATv2Conv(IN_CHANNELS, HEAD_DIM, heads=HEADS, add_self_loops=False)

    class ProjectedAttention(torch.nn.Module):
        """Query/key/value/skip projections around one `sparse_attention` backend or dense masked SDPA."""

        def __init__(self) -> None:
            super().__init__()
            self.qkv = torch.nn.Linear(IN_CHANNELS, 3 * HEADS * HEAD_DIM)
            self.skip = torch.nn.Linear(IN_CHANNELS, HEADS * HEAD_DIM)

        def forward(self, x, edge_index):
            q, k, v = self.qkv(x).view(x.size(0), 3, HEADS, HEAD_DIM).unbind(1)
            if method in KERNELS:
                out = sparse_attention(q, k, v, edge_index, backend=method)
            else:
                mask = torch.zeros(x.size(0), x.size(0), dtype=torch.bool)
                mask[edge_index[1], edge_index[0]] = True
                out = torch.nn.functional.scaled_dot_product_attention(
                    q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1), attn_mask=mask
                ).transpose(0, 1)
            return out.reshape(x.size(0), -1) + self.skip(x)

    return ProjectedAttention()


def _edges(graph: str, num_nodes: int):
    import torch

    from graph_sparse_attn import patterns

    if graph == "window":
        return patterns.sliding_window(num_nodes, WINDOW)
    return patterns.random(num_nodes, RANDOM_DEGREE, generator=torch.Generator().manual_seed(0))


def measure_point(method: str, graph: str, num_nodes: int, repeats: int) -> dict:
    """Time and measure one (method, graph, N) point inside this process."""
    import torch

    torch.manual_seed(0)
    edge_index = _edges(graph, num_nodes)
    x = torch.randn(num_nodes, IN_CHANNELS, requires_grad=True)
    layer = _build_layer(method)
    baseline_kb = start_memory_probe()
    times = []
    try:
        for repeat in range(repeats + 1):
            if repeat == 1:  # steady state: the watermark restarts after the warm-up (and any compiling)
                baseline_kb = start_memory_probe()
            start = time.perf_counter()
            layer(x, edge_index).square().mean().backward()
            times.append(time.perf_counter() - start)
            layer.zero_grad(set_to_none=True)
            x.grad = None
    except (MemoryError, RuntimeError) as error:
        return {"status": "out of memory" if is_oom(error) else f"error: {error}"}
    return {"status": "ok", "edges": edge_index.size(1), "seconds": statistics.median(times[1:] if repeats else times),
            "peak_mb": peak_mb_since(baseline_kb)}


def _fits(method: str, num_nodes: int) -> bool:
    # Dense SDPA builds [H, N, N] float scores (and their gradients): skip where that alone tops the limit.
    return method != "dense" or 3 * HEADS * num_nodes**2 * 4 < (MEMORY_LIMIT_GB << 30)


def format_table(rows: list[dict], graph: str) -> str:
    sizes = sorted({r["num_nodes"] for r in rows if r["graph"] == graph})
    methods = [m for m in METHODS if any(r["method"] == m and r["graph"] == graph for r in rows)]
    lookup = {(r["method"], r["num_nodes"]): r for r in rows if r["graph"] == graph}
    head = "| N | E | " + " | ".join(f"{m} time (s) | {m} peak (MB)" for m in methods) + " | ours time / transformer | ours peak / transformer |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for n in sizes:
        edges = next((lookup[m, n]["edges"] for m in methods if lookup.get((m, n), {}).get("status") == "ok"), "")
        cells = []
        for m in methods:
            r = lookup.get((m, n), {"status": "not run"})
            cells += [f"{r['seconds']:.3f}", f"{r['peak_mb']:.0f}"] if r["status"] == "ok" else [r["status"], "—"]
        ours, base = lookup.get(("ours", n), {}), lookup.get(("transformer", n), {})
        if ours.get("status") == base.get("status") == "ok":
            cells += [f"{ours['seconds'] / base['seconds']:.2f}", f"{ours['peak_mb'] / max(base['peak_mb'], 1):.3f}"]
        else:
            cells += ["—", "—"]
        lines.append(f"| {n:,} | {edges:,} | " + " | ".join(cells) + " |" if edges != "" else f"| {n:,} | | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for m in METHODS:
        pts = [r for r in rows if r["method"] == m and r["graph"] == "window" and r["status"] == "ok"]
        if pts:
            axes[0].plot([p["num_nodes"] for p in pts], [p["seconds"] for p in pts], "o-", label=m)
            axes[1].plot([p["num_nodes"] for p in pts], [p["peak_mb"] for p in pts], "o-", label=m)
    for ax, label in zip(axes, ("forward+backward time (s)", "peak memory above baseline (MB)")):
        ax.set(xscale="log", yscale="log", xlabel="nodes N (window ±64)", ylabel=label)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes, printed only (a smoke run)")
    parser.add_argument("--repeats", type=int, default=3, help="timed repetitions after one warm-up")
    parser.add_argument("--timeout", type=float, default=900, help="seconds allowed per point")
    parser.add_argument("--point", nargs=3, metavar=("METHOD", "GRAPH", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.point:
        method, graph, num_nodes = args.point
        print(json.dumps(measure_point(method, graph, int(num_nodes), args.repeats)))
        return

    from tqdm import tqdm

    if args.quick:
        plan = [(m, "window", n) for n in (1024, 4096) for m in METHODS]
        args.repeats = 1
    else:
        plan = [(m, "window", n) for n in (1024, 4096, 16384, 65536, 262144) for m in METHODS]
        plan += [("ours", "window", 1048576)]  # E ≈ 135M: must fit in 24 GB
        plan += [(m, "random", n) for n in (16384, 65536, 262144, 1048576) for m in ("ours", "csr", "compiled", "transformer", "gatv2")]
    rows = []
    for method, graph, n in tqdm(plan, desc="benchmark points"):
        if not _fits(method, n):
            rows.append({"method": method, "graph": graph, "num_nodes": n, "status": f"skipped: [H, N, N] > {MEMORY_LIMIT_GB} GB"})
            continue
        result = run_point(__file__, [method, graph, str(n), "--repeats", str(args.repeats)], args.timeout)
        rows.append({"method": method, "graph": graph, "num_nodes": n, **result})
        tqdm.write(f"{method:>11} {graph:>6} N={n:>9,}: {result}")

    command = "python benchmarks/attention.py" + (" --quick" if args.quick else "")
    tables = [
        f"### Sliding window ±{WINDOW}, one sequence ({IN_CHANNELS} in-channels, {HEADS} heads × {HEAD_DIM}, forward+backward, median of {args.repeats})\n\n"
        + format_table(rows, "window")
    ]
    if any(r["graph"] == "random" for r in rows):
        tables.append(f"### Random graph, {RANDOM_DEGREE} random sources per node\n\n" + format_table(rows, "random"))
    markdown = (
        f"## Attention layers (`{command}`)\n\n"
        f"Machine: {os.cpu_count()} CPU cores; memory = steady-state peak RSS above the point's own baseline (after a warm-up repetition); "
        f"each point in a fresh process with a {MEMORY_LIMIT_GB} GB address-space limit.\n\n"
        + "\n\n".join(tables)
    )
    print(markdown)
    if not args.quick:  # a smoke run's rows must not replace a full run's
        out_dir = HERE / "out"
        out_dir.mkdir(exist_ok=True)
        (out_dir / "attention.json").write_text(json.dumps(rows, indent=1))
        plot(rows, HERE / "attention.png")
        update_results("attention", markdown + "\n\n![attention benchmark](attention.png)")


if __name__ == "__main__":
    main()
