"""CPU training steps with glibc's default allocator against large blocks kept on the heap.

Replays ListOps-sized training steps of `SequenceTransformer` (32 random sequences of 500-2,000
tokens a batch, width 64, depth 2, 4 heads, Longformer ±32 + one global token, AdamW), trimming
the heap every `TRIM_EVERY_STEPS` steps as `Trainer` does. Each mode runs in a fresh process
(the setting is process-wide): ``default`` leaves glibc as it starts, ``heap`` calls
`train.heap.keep_large_blocks_on_heap` first. Prints ms/step, page faults, system CPU time and
peak resident memory side by side. Run it with nothing else on the machine.

Usage::

    python benchmarks/heap.py                # 192 steps per mode
    python benchmarks/heap.py --steps 8      # smoke run
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import time

from common import rss_kb, run_point

MODES = ("default", "heap")


def measure(mode: str, steps: int) -> dict:
    import torch
    import torch.nn.functional as F

    from graph_sparse_attn.nn import SequenceTransformer
    from graph_sparse_attn.train.heap import TRIM_EVERY_STEPS, keep_large_blocks_on_heap, release_freed_heap

    if mode == "heap" and not keep_large_blocks_on_heap():
        raise RuntimeError("keep_large_blocks_on_heap needs glibc")
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    batches = []
    for _ in range(64):
        lengths = torch.randint(500, 2001, (32,), generator=generator)
        tokens = torch.randint(0, 20, (int(lengths.sum()),), generator=generator)
        batches.append((tokens, torch.repeat_interleave(torch.arange(32), lengths), torch.randint(0, 10, (32,), generator=generator)))
    model = SequenceTransformer(20, 10, dim=64, depth=2, heads=4, max_length=2001,
                                pattern=("longformer", {"window": 32, "global_indices": [0]}))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    times = []
    start = resource.getrusage(resource.RUSAGE_SELF)
    for step in range(steps):
        tokens, batch, labels = batches[step % len(batches)]
        begin = time.perf_counter()
        loss = F.cross_entropy(model(tokens, batch), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if (step + 1) % TRIM_EVERY_STEPS == 0:
            release_freed_heap()
        times.append(time.perf_counter() - begin)
    end = resource.getrusage(resource.RUSAGE_SELF)
    return {"status": "ok", "ms_per_step": statistics.median(times[min(8, steps // 2):]) * 1e3,
            "faults": end.ru_minflt - start.ru_minflt, "sys_s": end.ru_stime - start.ru_stime,
            "peak_gb": rss_kb("VmHWM") / 2**20}


def median_run(results: list) -> dict:
    """The median of each figure over a mode's runs, or the first failure."""
    failed = [r for r in results if r.get("status") != "ok"]
    if failed:
        return failed[0]
    return {"status": "ok", **{key: statistics.median(r[key] for r in results) for key in ("ms_per_step", "faults", "sys_s", "peak_gb")}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=192)
    parser.add_argument("--pairs", type=int, default=2,
                        help="runs of each mode, alternating which goes first (A B B A ...): the second process of a pair ran faster")
    parser.add_argument("--point", nargs=2, metavar=("MODE", "STEPS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.point:
        print(json.dumps(measure(args.point[0], int(args.point[1]))))
        return
    if args.steps < 2:
        parser.error(f"--steps must be at least 2, got {args.steps}")
    if args.pairs < 1:
        parser.error(f"--pairs must be at least 1, got {args.pairs}")
    runs = {mode: [] for mode in MODES}
    for pair in range(args.pairs):
        for mode in (MODES if pair % 2 == 0 else MODES[::-1]):
            runs[mode].append(run_point(__file__, [mode, str(args.steps)], timeout=3600))
    rows = {mode: median_run(results) for mode, results in runs.items()}
    print(f"| {args.steps} steps, median of {args.pairs} runs each | " + " | ".join(MODES) + " |\n|---|---|---|")
    for key, label, fmt in (("ms_per_step", "ms / step (median)", "{:.0f}"), ("faults", "page faults", "{:,.0f}"),
                            ("sys_s", "system CPU time (s)", "{:.1f}"), ("peak_gb", "peak resident memory (GB)", "{:.2f}")):
        cells = [fmt.format(rows[m][key]) if rows[m].get("status") == "ok" else rows[m]["status"] for m in MODES]
        print(f"| {label} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
