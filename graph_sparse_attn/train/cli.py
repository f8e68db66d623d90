"""The ``gsa`` command line: ``gsa train [TASK] [options]`` and ``gsa evaluate RUN_DIR``."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

DEFAULT_TASK = "listops"
TASKS_HELP = (
    "listops (generated LRA ListOps; default), imdb (LRA Text, byte level), any OGB graph-property "
    "dataset by name (ogbg-molhiv, ogbg-molbace, ogbg-molesol, ...), ogbn-arxiv / ogbn-products, "
    "peptides-func (LRGB), cora, citeseer"
)


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a non-negative integer, got {value}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {value}")
    return value


def _probability(text: str) -> float:
    value = float(text)
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {value}")
    return value


def _fanouts(text: str) -> List[int]:
    try:
        fanouts = [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be comma-separated integers, got {text!r}") from None
    if not fanouts or any(f == 0 or f < -1 for f in fanouts):
        raise argparse.ArgumentTypeError(f"fanouts must be positive or -1, got {text!r}")
    return fanouts


def _pattern(text: str):
    from ..patterns.registry import parse_pattern

    try:
        return parse_pattern(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gsa", description="Train and evaluate sparse-attention models on graph and long-sequence benchmarks.")
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train a model on a task", description=f"Train a sparse-attention model. Tasks: {TASKS_HELP}.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    train.add_argument("task", nargs="?", default=DEFAULT_TASK, help="task name (default: a small generated ListOps job that runs offline)")
    data = train.add_argument_group("data")
    data.add_argument("--root", default="datasets", help="data root (downloads, generated data, caches)")
    data.add_argument("--num-neighbors", type=_fanouts, default=None, metavar="K1,K2,...",
                      help="node tasks: train on neighbour-sampled mini-batches of --batch-size seeds with these fanouts per hop "
                           "(-1: all); default: the full graph, except ogbn-products (15,10)")
    data.add_argument("--imdb-path", default=None, help="aclImdb folder or aclImdb_v1.tar.gz for the imdb task (default: ROOT/aclImdb)")
    data.add_argument("--num-train", type=_positive_int, default=None, help="ListOps: training samples to generate (default 3000, a quick offline job; LRA: 96000); imdb: a seeded subset of the training reviews")
    data.add_argument("--num-val", type=_positive_int, default=None, help="ListOps: validation samples (default 300; LRA: 2000)")
    data.add_argument("--num-test", type=_positive_int, default=None, help="ListOps: test samples (default 300; LRA: 2000)")
    data.add_argument("--min-length", type=_positive_int, default=None, help="ListOps: shortest sequence in tokens (default 100; LRA: 500)")
    data.add_argument("--max-length", type=_positive_int, default=None, help="ListOps: longest sequence in tokens (default 500; LRA: 2000); imdb: bytes kept (default and LRA: 4096)")

    model = train.add_argument_group("model")
    model.add_argument("--dim", type=_positive_int, default=None, help="model width (hidden channels)")
    model.add_argument("--depth", type=_positive_int, default=None, help="number of Transformer blocks")
    model.add_argument("--heads", type=_positive_int, default=None, help="attention heads")
    model.add_argument("--dropout", type=_probability, default=None, help="residual/feed-forward dropout")
    model.add_argument("--attn-dropout", type=_probability, default=None, help="attention-weight dropout")
    model.add_argument("--pattern", type=_pattern, default=None, metavar="NAME[:k=v,...]",
                       help="sequence tasks: positional pattern, e.g. 'longformer:window=64,global_indices=0', 'bigbird:window=32,global_indices=0,num_random=4', 'window:window=128'")
    model.add_argument("--gate", action="store_true", help="sequence tasks: learnable relative-position gates (a learnable pattern)")
    model.add_argument("--knn", type=_positive_int, default=None, help="sequence tasks: dynamic kNN attention with K keys per query")
    model.add_argument("--attention", choices=("graph", "k_hop", "exphormer"), default=None, help="graph tasks: attention pattern")
    model.add_argument("--gps", action=argparse.BooleanOptionalAction, default=None, help="graph tasks: add a local GINE branch to each block")

    optim = train.add_argument_group("optimisation")
    optim.add_argument("--epochs", type=_positive_int, default=None, help="training epochs")
    optim.add_argument("--max-steps", type=_non_negative_int, default=0, help="stop after this many optimiser steps (0: run all epochs)")
    optim.add_argument("--batch-size", type=_positive_int, default=None, help="global batch size (split across data-parallel ranks)")
    optim.add_argument("--lr", type=_positive_float, default=None, help="peak learning rate")
    optim.add_argument("--optimizer", choices=("adamw", "sgd"), default="adamw", help="AdamW, or SGD with momentum 0.9")
    optim.add_argument("--weight-decay", type=float, default=0.01, help="weight decay")
    optim.add_argument("--schedule", choices=("cosine", "linear", "constant"), default="cosine", help="learning-rate schedule after warm-up")
    optim.add_argument("--warmup-steps", type=_non_negative_int, default=None, help="linear warm-up steps (default: the task's, else 0)")
    optim.add_argument("--grad-clip", type=float, default=1.0, help="gradient norm clip (0 disables)")

    run = train.add_argument_group("run")
    run.add_argument("--seed", type=int, default=0, help="random seed")
    run.add_argument("--run-dir", default=None, help="run directory (default: a new runs/TASK-seedSEED[-K])")
    run.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:1, ...")
    run.add_argument("--deterministic", action="store_true", help="use deterministic algorithms only")
    run.add_argument("--resume", action="store_true", help="continue --run-dir from its last.pt (same epoch, optimiser, scheduler and RNG state)")

    evaluate = commands.add_parser("evaluate", help="evaluate a run's best checkpoint on its validation and test splits")
    evaluate.add_argument("run_dir", help="a run directory written by 'gsa train'")
    evaluate.add_argument("--checkpoint", choices=("best", "last"), default="best", help="which checkpoint to evaluate")
    evaluate.add_argument("--device", default="auto", help="auto, cpu, cuda, ...")
    return parser


def config_from_args(args: argparse.Namespace):
    """Resolve the defaults that depend on the task into a `TrainConfig`."""
    from .loop import TrainConfig
    from .registry import task_defaults

    defaults = task_defaults(args.task)
    model_options: Dict[str, Any] = dict(defaults.get("model", {}))
    for flag, key in (("dim", defaults["width_key"]), ("depth", "depth"), ("heads", "heads"), ("dropout", "dropout"),
                      ("attn_dropout", "attn_dropout"), ("knn", "knn"), ("attention", "attention"), ("gps", "gps")):
        if getattr(args, flag) is not None:
            model_options[key] = getattr(args, flag)
    if args.gate:
        model_options["gate"] = True
    task_options = dict(defaults.get("task", {}))
    for flag in ("num_train", "num_val", "num_test", "min_length", "max_length", "imdb_path", "num_neighbors"):
        if getattr(args, flag) is not None:
            task_options[flag] = getattr(args, flag)
    if args.pattern is not None:
        task_options["pattern"] = list(args.pattern)
    return TrainConfig(
        task=args.task,
        epochs=args.epochs or defaults["epochs"],
        max_steps=args.max_steps,
        batch_size=args.batch_size or defaults["batch_size"],
        lr=args.lr or defaults["lr"],
        optimizer=args.optimizer,
        weight_decay=args.weight_decay,
        schedule=args.schedule,
        warmup_steps=args.warmup_steps if args.warmup_steps is not None else defaults.get("warmup_steps", 0),
        grad_clip=args.grad_clip,
        seed=args.seed,
        device=args.device,
        deterministic=args.deterministic,
        run_dir=args.run_dir or _new_run_dir(f"runs/{args.task}-seed{args.seed}"),
        root=args.root,
        task_options=task_options,
        model_options=model_options,
    )


def _new_run_dir(base: str) -> str:
    """``base``, or ``base-2``, ``base-3``, ... whichever does not exist yet."""
    candidate, k = base, 1
    while Path(candidate).exists():
        k += 1
        candidate = f"{base}-{k}"
    return candidate


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from .registry import UnknownTask, make_task

    if args.command == "train":
        from .loop import Trainer

        if args.resume and args.run_dir is None:
            parser.error("--resume needs the --run-dir of the run to continue")
        try:
            config = config_from_args(args)
        except UnknownTask as error:
            parser.error(str(error))
        if Path(config.run_dir, "last.pt").exists() and not args.resume:
            parser.error(f"{config.run_dir} already holds a run; pass --resume to continue it or choose another --run-dir")
        try:
            task = make_task(config)
        except FileNotFoundError as error:
            print(f"gsa: error: {error}", file=sys.stderr)
            return 1
        trainer = Trainer(config, task)
        if args.resume and trainer.resume():
            print(f"resumed {config.run_dir} at epoch {trainer.epoch}", file=sys.stderr)
        summary = trainer.fit()
        if summary.get("epochs"):
            print(f"{config.task}: best validation {summary['metric']} {summary['val']:.4f} at epoch {summary['best_epoch']}; "
                  f"test {summary['metric']} {summary['test']:.4f}")
        return 0

    from .loop import TrainConfig, Trainer
    from .checkpoint import load_checkpoint

    run_dir = Path(args.run_dir)
    checkpoint = run_dir / f"{args.checkpoint}.pt"
    if not checkpoint.exists():
        parser.error(f"{checkpoint} does not exist (is {run_dir} a run directory written by 'gsa train'?)")
    state = load_checkpoint(checkpoint)
    config = TrainConfig(**{**state["config"], "device": args.device})
    trainer = Trainer(config, make_task(config))
    trainer.model.load_state_dict(state["model"])
    result = {"run_dir": str(run_dir), "checkpoint": args.checkpoint, "epoch": state["epoch"], "metric": trainer.task.metric,
              "val": trainer.evaluate("val"), "test": trainer.evaluate("test")}
    print(json.dumps(result, indent=2))
    return 0
