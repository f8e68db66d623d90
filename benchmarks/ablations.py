"""Ablations of our CLI default on an OGB molecule dataset: which setting makes it learn slower per epoch.

Each variant is ``benchmarks/quality.py --models default --set KEY=VALUE ...`` over `BASE` (same trainer, data, split,
evaluator, epochs and seeds as the equal-budget comparison), in its own sweep folder ``OUT/VARIANT``; the
table gives, per variant, the test metric at the best validation epoch (mean ± std over seeds), the
validation metric, the best epochs and the training time, beside the reference models of the comparison
sweep when it has run (``benchmarks/out/quality/DATASET``).

Usage::

    python benchmarks/ablations.py --dataset ogbg-molbbbp --epochs 20 --seeds 0 1 2 --write
    python benchmarks/ablations.py ... --variants baseline dropout-0.5     # a subset (sweeps are resumed)

Two halves of the variants may run side by side, one per core (``OMP_NUM_THREADS=1``), then a last call
with all of them finds every run finished and writes the table.
"""
from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
from pathlib import Path
from typing import Dict, List, Optional

import quality
from common import HERE, update_results

# The recipe the variants change: the CLI default before these ablations, spelled out so the table
# stays reproducible whatever the default becomes (it became "batch-32+batch-norm+ffn-2x-relu": see table.py).
BASE = {"batch_size": 64, "lr": 1e-3, "weight_decay": 0.01, "schedule": "cosine", "grad_clip": 1.0, "pe": None,
        "dim": 64, "depth": 3, "heads": 4, "dropout": 0.1, "attn_dropout": 0.0, "attention": "exphormer", "gps": True,
        "norm": "layer", "ffn_dim": None, "activation": "gelu"}
# name -> task-table options over BASE (each one change, so its effect reads off the table)
VARIANTS: Dict[str, Dict[str, object]] = {
    "baseline": {},
    "batch-norm": {"norm": "batch"},
    "dropout-0.3": {"dropout": 0.3},
    "dropout-0.5": {"dropout": 0.5},
    "batch-32": {"batch_size": 32},
    "gin-vn-optimiser": {"schedule": "constant", "weight_decay": 0.0, "grad_clip": 0.0},
    "no-grad-clip": {"grad_clip": 0.0},
    "constant-lr": {"schedule": "constant"},
    "no-weight-decay": {"weight_decay": 0.0},
    "attention-graph": {"attention": "graph"},
    "no-gps": {"gps": False},
    "rwse-16": {"pe": "rwse:16"},
    "width-128": {"dim": 128},
    "depth-5": {"depth": 5},
    "lr-3e-3": {"lr": 3e-3},
    # The single changes that helped, together.
    "batch-32+batch-norm": {"batch_size": 32, "norm": "batch"},
    "batch-32+batch-norm+constant-lr": {"batch_size": 32, "norm": "batch", "schedule": "constant"},
    # On ogbg-molhiv, where the constant rate left validation oscillating: width on top of cosine decay.
    "batch-32+batch-norm+width-128": {"batch_size": 32, "norm": "batch", "dim": 128},
    # GraphGPS's feed-forward block (2 x dim, ReLU, also in the GINE branch) instead of 4 x GELU: cheaper per step.
    "batch-32+batch-norm+ffn-2x-relu": {"batch_size": 32, "norm": "batch", "ffn_dim": 128, "activation": "relu"},
    # Both: width 128's capacity with the cheaper block (its hidden width, 256, is the 4 x GELU block's at width 64).
    "batch-32+batch-norm+width-128+ffn-2x-relu": {"batch_size": 32, "norm": "batch", "dim": 128, "ffn_dim": 256,
                                                  "activation": "relu"},
}


def sweep_argv(args: argparse.Namespace, variant: str) -> List[str]:
    options = {**BASE, **VARIANTS[variant]}
    sets = [f"--set={key}={json.dumps(value) if not isinstance(value, str) else value}" for key, value in options.items()]
    return ["--dataset", args.dataset, "--models", "default", "--epochs", str(args.epochs), "--seeds", *map(str, args.seeds),
            "--root", str(args.root), "--out", str(args.out / variant), "--resume", *sets]


def records(folder: Path, model: str, seeds: List[int]) -> List[dict]:
    paths = [quality.result_path(folder, model, seed) for seed in seeds]
    return [json.loads(path.read_text()) for path in paths if path.exists()]


def row(name: str, options: str, runs: List[dict]) -> str:
    if not runs:
        return f"| {name} | {options} | not run | — | — | — |"
    tests, vals = [r["summary"]["test"] for r in runs], [r["summary"]["val"] for r in runs]
    return (f"| {name} | {options} | {quality._mean_std(tests)} | {quality._mean_std(vals)} | "
            f"{', '.join(str(r['summary']['best_epoch']) for r in runs)} | "
            f"{statistics.mean(r['summary']['train_seconds'] for r in runs):,.1f} |")


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="ogbg-molbbbp", help="an OGB molecule dataset (default: one no test uses)")
    parser.add_argument("--variants", nargs="+", choices=tuple(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--root", type=Path, default=quality.CLI_ROOT, help="writable folder of OGB dataset folders")
    parser.add_argument("--out", type=Path, help="folder of the variants' sweeps (default: benchmarks/out/ablations/DATASET)")
    parser.add_argument("--write", action="store_true", help="put the table into benchmarks/RESULTS.md")
    args = parser.parse_args(argv)
    if args.epochs <= 0:
        parser.error("--epochs must be positive")
    args.out = (args.out or HERE / "out" / "ablations" / args.dataset).resolve()

    for variant in args.variants:
        quality.main(sweep_argv(args, variant))

    comparison = HERE / "out" / "quality" / args.dataset
    runs = {variant: records(args.out / variant, "default", args.seeds) for variant in args.variants}
    any_run = next(r for rs in runs.values() for r in rs)
    arrow = "↑" if any_run["higher_is_better"] else "↓"
    lines = [f"| variant | options over the base recipe | test {any_run['metric']} {arrow} | val | best epoch | train s / run |",
             "|---|---|---|---|---|---|"]
    for variant in args.variants:
        options = ", ".join(f"{k}={v}" for k, v in VARIANTS[variant].items()) or "—"
        lines.append(row(variant, options, runs[variant]))
    for reference in quality.REFERENCES:
        runs = records(comparison, reference, args.seeds)
        if runs and runs[0]["config"]["epochs"] == args.epochs:
            lines.append(row(f"*{quality.MODELS[reference]}*", "reference, its own recipe", runs))
    argv = sys.argv[1:] if argv is None else argv
    command = shlex.join(["python", "benchmarks/ablations.py", *(a for a in argv if a != "--write")])
    markdown = (f"## Ablations of the CLI default, {args.dataset} (`{command}`)\n\n"
                f"{args.epochs} epochs; test metric at the best validation epoch, mean ± sample std over seeds "
                f"{', '.join(map(str, args.seeds))}; one change per variant over the base recipe, the CLI default's settings "
                f"before the ablations ({', '.join(f'{k}={v}' for k, v in BASE.items())}). References from the equal-budget sweep.\n\n"
                + "\n".join(lines))
    print(markdown)
    if args.write:
        update_results(f"ablations-{args.dataset}", markdown)


if __name__ == "__main__":
    main()
