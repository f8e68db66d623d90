"""One training step of `SequenceTransformer` vs a dense padded Transformer, side by side.

Both models: 4 layers, width 128, 4 heads, feed-forward 512, no dropout, a 2-class head. Ours
attends over window ±64 + one global token per sequence, batched as disjoint chains with no
padding; the baseline is `torch.nn.TransformerEncoder` (pre-norm) over the batch padded to its
longest sequence, with a key-padding mask. Sequence lengths are drawn uniformly from
[512, 4096] until the batch holds the target number of real tokens. Each point runs in a fresh
process; memory is peak RSS above the point's baseline.

Usage::

    python benchmarks/models.py            # full run; updates benchmarks/RESULTS.md
    python benchmarks/models.py --quick    # smoke run, printed only
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time

from common import MEMORY_LIMIT_GB, is_oom, peak_mb_since, run_point, start_memory_probe, update_results

DIM, DEPTH, HEADS, FFN, WINDOW, VOCAB = 128, 4, 4, 512, 64, 256
METHODS = ("sparse", "dense")


def _lengths(total_tokens: int, seed: int = 0):
    import torch

    gen = torch.Generator().manual_seed(seed)
    lengths = []
    while sum(lengths) < total_tokens:
        lengths.append(int(torch.randint(512, 4097, (1,), generator=gen)))
    lengths[-1] -= sum(lengths) - total_tokens
    if lengths[-1] < 2:
        lengths.pop()
    return lengths


def measure_point(method: str, total_tokens: int, repeats: int) -> dict:
    import torch
    import torch.nn.functional as F

    from graph_sparse_attn.nn import SequenceTransformer
    from graph_sparse_attn.patterns import build_pattern

    torch.manual_seed(0)
    lengths = _lengths(total_tokens)
    labels = torch.randint(0, 2, (len(lengths),))
    if method == "sparse":
        model = SequenceTransformer(VOCAB, 2, dim=DIM, depth=DEPTH, heads=HEADS, ffn_dim=FFN, dropout=0.0, max_length=4097)
        batch = torch.cat([torch.full((n,), i) for i, n in enumerate(lengths)])
        tokens = torch.randint(0, VOCAB, (batch.numel(),))
        edge_index = build_pattern("longformer", batch.numel(), batch=batch, window=WINDOW, global_indices=[0])

        def step():
            return F.cross_entropy(model(tokens, batch, edge_index), labels)
    else:
        longest = max(lengths)
        embed = torch.nn.Embedding(VOCAB, DIM)
        pos = torch.nn.Embedding(longest, DIM)
        layer = torch.nn.TransformerEncoderLayer(DIM, HEADS, FFN, dropout=0.0, batch_first=True, norm_first=True)
        encoder = torch.nn.TransformerEncoder(layer, DEPTH, enable_nested_tensor=False)
        head = torch.nn.Linear(DIM, 2)
        model = torch.nn.ModuleList([embed, pos, encoder, head])
        tokens = torch.randint(0, VOCAB, (len(lengths), longest))
        padding = torch.arange(longest)[None] >= torch.tensor(lengths)[:, None]

        def step():
            h = encoder(embed(tokens) + pos.weight[None], src_key_padding_mask=padding)
            return F.cross_entropy(head(h[:, 0]), labels)

    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def train_step() -> float:
        start = time.perf_counter()
        loss = step()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return time.perf_counter() - start

    try:
        train_step()  # warm-up; memory is then measured at steady state, as in attention.py
        baseline_kb = start_memory_probe()
        times = [train_step() for _ in range(repeats)]
    except (MemoryError, RuntimeError) as error:
        return {"status": "out of memory" if is_oom(error) else f"error: {error}"}
    seconds = statistics.median(times)
    return {"status": "ok", "sequences": len(lengths), "padded_tokens": len(lengths) * max(lengths),
            "seconds": seconds, "tokens_per_s": total_tokens / seconds, "peak_mb": peak_mb_since(baseline_kb)}


def format_table(rows: list) -> str:
    lookup = {(r["method"], r["tokens"]): r for r in rows}
    sizes = sorted({r["tokens"] for r in rows})
    lines = ["| tokens / batch | sequences | sparse tokens/s | sparse peak (MB) | dense tokens/s | dense peak (MB) | dense padded tokens | speed-up | memory ratio (sparse/dense) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for n in sizes:
        s, d = lookup.get(("sparse", n), {}), lookup.get(("dense", n), {})
        cell = lambda r, key, fmt: format(r[key], fmt) if r.get("status") == "ok" else r.get("status", "not run")
        ratio = lambda a, b: f"{a / b:.2f}" if s.get("status") == d.get("status") == "ok" else "—"
        sequences = s.get("sequences", d.get("sequences", ""))
        lines.append(
            f"| {n:,} | {sequences} | {cell(s, 'tokens_per_s', ',.0f')} | {cell(s, 'peak_mb', ',.0f')} | {cell(d, 'tokens_per_s', ',.0f')} | "
            f"{cell(d, 'peak_mb', ',.0f')} | {cell(d, 'padded_tokens', ',')} | "
            f"{ratio(s.get('tokens_per_s', 1), d.get('tokens_per_s', 1))} | {ratio(s.get('peak_mb', 1), max(d.get('peak_mb', 1), 1))} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="4k tokens only, printed only")
    parser.add_argument("--repeats", type=int, default=5, help="timed steps after one warm-up (their median is reported)")
    parser.add_argument("--timeout", type=float, default=1200, help="seconds allowed per point")
    parser.add_argument("--point", nargs=2, metavar=("METHOD", "TOKENS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.point:
        print(json.dumps(measure_point(args.point[0], int(args.point[1]), args.repeats)))
        return

    from tqdm import tqdm

    sizes = (4096,) if args.quick else (4096, 16384, 65536, 262144)
    rows = []
    for n in tqdm(sizes, desc="token budgets"):
        for method in METHODS:
            result = run_point(__file__, [method, str(n), "--repeats", str(args.repeats)], args.timeout)
            rows.append({"method": method, "tokens": n, **result})
            tqdm.write(f"{method:>6} T={n:>8,}: {result}")
    command = "python benchmarks/models.py" + (" --quick" if args.quick else "")
    markdown = (
        f"## SequenceTransformer training step (`{command}`)\n\n"
        f"{DEPTH} layers, width {DIM}, {HEADS} heads; ours: window ±{WINDOW} + 1 global token, no padding; dense: "
        f"`nn.TransformerEncoder` on the padded batch. {os.cpu_count()} CPU cores, {MEMORY_LIMIT_GB} GB address-space "
        f"limit per point, median of {args.repeats} steps.\n\n" + format_table(rows)
    )
    print(markdown)
    if not args.quick:
        update_results("models", markdown)


if __name__ == "__main__":
    main()
