"""The ``gsa`` command line: ``gsa train [TASK] [options]`` and ``gsa evaluate RUN_DIR``.

Tasks, their defaults and the options each accepts come from the task table (`table.py`):
``gsa train TASK --help`` shows that task's options with its resolved defaults, and an option
that does not apply to the task is refused (one line, exit code 2) before any work.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import pickle
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

from ..nn.graph import ATTENTION_PATTERNS
from ..nn.layers import ACTIVATIONS, NORMS
from ..nn.sequence import POSITIONS
from ..ops.dispatch import COMPILED_MIN_STEPS, KERNEL_BACKENDS, check_backend_runs_on
from ..patterns.registry import PATTERN_ALIASES, POSITIONAL_PATTERNS, parse_pattern
from .checkpoint import load_checkpoint
from .distributed import cleanup, is_main, local_device
from .loop import OPTIMIZERS, SCHEDULES, TrainConfig, Trainer, config_differences, planned_steps
from .table import (DEFAULT_TASK, KINDS, TASKS, TaskSpec, find_task, load_config_file, make_task, parse_fanouts, parse_pe,
                    resolve_config, shipped_configs)


class _Parser(argparse.ArgumentParser):
    """Errors are one line (``gsa train: error: ...``) and exit with code 2. No abbreviated options:
    ``--conf FILE`` would parse, but `_config_argument` reads the file of ``--config`` only."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, allow_abbrev=False, **kwargs)

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n")


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Appends ``(default: X)`` to options whose default is set (None means "see the help text")."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.option_strings and action.default not in (None, argparse.SUPPRESS) and "(default" not in text:
            text += f" (default: {_spell(action.default)})".replace("%", "%%")
        return text


def _spell(value: Any) -> str:
    """A parsed option value as it is typed: patterns ``name:k=v,...``, encodings ``kind:dim``, fanouts ``k1,k2``."""
    if isinstance(value, (list, tuple)) and len(value) == 2 and isinstance(value[0], str):
        if isinstance(value[1], dict):
            params = ",".join(f"{key}={'+'.join(map(str, v)) if isinstance(v, list) else v}" for key, v in value[1].items())
            return value[0] + (":" + params if params else "")
        return f"{value[0]}:{value[1]}"
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value))
    return str(value)


def _checked(parse: Callable[[str], Any], condition: Callable[[Any], bool], expected: str) -> Callable[[str], Any]:
    def convert(text: str) -> Any:
        try:
            value = parse(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {expected}, got {text!r}") from None
        if not condition(value):
            raise argparse.ArgumentTypeError(f"must be {expected}, got {value}")
        return value

    return convert


def _argument_type(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """A parser whose `ValueError` becomes argparse's one-line error."""

    def convert(text: str) -> Any:
        try:
            return parse(text)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from None

    convert.__name__ = parse.__name__
    return convert


_positive_int = _checked(int, lambda v: v > 0, "a positive integer")
_non_negative_int = _checked(int, lambda v: v >= 0, "a non-negative integer")
# torch's generators take seeds below 2**64; epochs are added to the seed, so leave room.
_seed = _checked(int, lambda v: 0 <= v < 2**63, "an integer in [0, 2**63)")
_positive_float = _checked(float, lambda v: 0 < v < math.inf, "a finite positive number")
_non_negative_float = _checked(float, lambda v: 0 <= v < math.inf, "a finite non-negative number")
_probability = _checked(float, lambda v: 0.0 <= v < 1.0, "in [0, 1)")


def _pattern_names() -> str:
    aliases = ", ".join(f"{alias} = {name}" for alias, name in PATTERN_ALIASES.items())
    return f"{', '.join(sorted(POSITIONAL_PATTERNS))} ({aliases})"


def _attention_choices() -> Tuple[str, ...]:
    return tuple(ATTENTION_PATTERNS)


# Every option of `gsa train`: (group, name, argparse keywords). Whether it applies to a task,
# and its default, come from the task table.
_OPTIONS: List[Tuple[str, str, Dict[str, Any]]] = [
    ("data", "root", dict(help="data root (downloads, generated data, caches)")),
    ("data", "num_train", dict(type=_positive_int, help="ListOps: training samples to generate (LRA: 96000); imdb: a seeded "
                                                        "subset of the training reviews (none given: all)")),
    ("data", "num_val", dict(type=_positive_int, help="validation samples to generate (LRA: 2000)")),
    ("data", "num_test", dict(type=_positive_int, help="test samples to generate (LRA: 2000)")),
    ("data", "min_length", dict(type=_positive_int, help="shortest generated sequence in tokens (LRA: 500)")),
    ("data", "max_length", dict(type=_positive_int, help="ListOps: longest generated sequence in tokens (LRA: 2000); "
                                                         "imdb: bytes kept per review (LRA: 4096)")),
    ("data", "imdb_path", dict(help="aclImdb folder or aclImdb_v1.tar.gz (none given: ROOT/aclImdb)")),
    ("data", "num_neighbors", dict(type=_argument_type(parse_fanouts), metavar="K1,K2,...",
                                   help="train on neighbour-sampled mini-batches of --batch-size seed nodes with these fanouts "
                                        "per hop (-1: all); none given: the full graph")),
    ("model", "pe", dict(type=_argument_type(parse_pe), metavar="KIND:DIM",
                         help="positional encoding computed once per graph (cached beside the processed dataset) and "
                              "fed to the model: rwse:DIM (random-walk landing probabilities) or lap:DIM (Laplacian eigenvectors), e.g. rwse:20, or none")),
    ("model", "dim", dict(type=_positive_int, help="model width (hidden channels)")),
    ("model", "depth", dict(type=_positive_int, help="number of Transformer blocks")),
    ("model", "heads", dict(type=_positive_int, help="attention heads")),
    ("model", "ffn_dim", dict(type=_positive_int, help="feed-forward hidden width (none given: 4 x --dim; GraphGPS: 2 x)")),
    ("model", "activation", dict(choices=tuple(ACTIVATIONS), help="feed-forward activation (and the GPS branch's MLP); GraphGPS: relu")),
    ("model", "dropout", dict(type=_probability, help="residual/feed-forward dropout")),
    ("model", "attn_dropout", dict(type=_probability, help="attention-weight dropout")),
    ("model", "pattern", dict(type=_argument_type(parse_pattern), metavar="NAME[:k=v,...]",
                              help="positional attention pattern, e.g. 'longformer:window=64,global_indices=0', "
                                   "'bigbird:window=32,global_indices=0,num_random=4', 'window:window=128'. Names: "
                                   + _pattern_names())),
    ("model", "position", dict(choices=POSITIONS,
                               help="absolute positions: learned (one embedding per position) or fixed sinusoidal (no parameters)")),
    ("model", "gate", dict(action=argparse.BooleanOptionalAction, help="learnable relative-position gates (a learnable pattern)")),
    ("model", "knn", dict(type=_positive_int, metavar="K", help="dynamic kNN attention with K keys per query (none given: off)")),
    ("model", "attention", dict(choices=_attention_choices(), help="attention pattern over the graph")),
    ("model", "gps", dict(action=argparse.BooleanOptionalAction, help="add a local message-passing branch to each block (GraphGPS: GINE with edge features, else GIN)")),
    ("model", "norm", dict(choices=tuple(NORMS), help="block normalisation: pre-norm LayerNorm, or post-norm BatchNorm (GraphGPS)")),
    ("optimisation", "epochs", dict(type=_positive_int, help="training epochs")),
    ("optimisation", "max_steps", dict(type=_non_negative_int, help="stop after this many optimiser steps; the learning-rate schedule then ends there (0: run all epochs)")),
    ("optimisation", "batch_size", dict(type=_positive_int, help="global batch size (split across data-parallel ranks)")),
    ("optimisation", "lr", dict(type=_positive_float, help="peak learning rate")),
    ("optimisation", "optimizer", dict(choices=OPTIMIZERS, help="AdamW, or SGD with momentum 0.9")),
    ("optimisation", "weight_decay", dict(type=_non_negative_float, help="weight decay")),
    ("optimisation", "schedule", dict(choices=SCHEDULES, help="learning-rate schedule after warm-up")),
    ("optimisation", "warmup_steps", dict(type=_non_negative_int, help="linear warm-up steps")),
    ("optimisation", "grad_clip", dict(type=_non_negative_float, help="gradient norm clip (0 disables)")),
    ("run", "seed", dict(type=_seed, help="random seed (initialisation, order, dropout; ListOps: the generated data too)")),
    ("run", "run_dir", dict(help="run directory (none given: a new runs/TASK-seedSEED[-K])")),
    ("run", "device", dict(help="auto (CUDA when present), cpu, cuda, cuda:1, ...")),
    ("run", "backend", dict(choices=KERNEL_BACKENDS,
                            help="attention kernel (sparse_attention's backend=); 'auto' takes 'compiled' (fused CPU kernels, "
                                 f"compiled in the first step) for CPU runs of {COMPILED_MIN_STEPS:,} steps or more, "
                                 "except over window patterns, which it runs on 'band'")),
    ("run", "deterministic", dict(action=argparse.BooleanOptionalAction, help="use deterministic algorithms only")),
    ("run", "config_file", dict(metavar="NAME|PATH", flags=("--config",),
                                help="start from a configuration file: a shipped one (" + ", ".join(shipped_configs())
                                     + ") or a JSON file {\"task\": ..., \"options\": {...}}; options given here override it")),
    ("run", "checkpoint_every", dict(type=_non_negative_float, metavar="MINUTES",
                                     help="also checkpoint inside an epoch every MINUTES (0: after every step)")),
]


# What a configuration file may set: every option of a run (those of other tasks are refused by name later).
_FILE_OPTIONS = frozenset(name for _, name, _ in _OPTIONS) - {"config_file"}


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _tasks_help() -> str:
    return "\n".join(f"  {name:<15} {spec.summary} [{spec.kind}]" for name, spec in TASKS.items())


# Options that may be none (no value): those whose default is none for some task.
_NULLABLE = frozenset(name for spec in TASKS.values() for name, value in spec.options.items() if value is None)
# The default of options that do not apply to the task: given at all (even as --pe none), they are refused.
_NOT_GIVEN = object()


def build_train_parser(spec: TaskSpec) -> _Parser:
    """``gsa train TASK``'s parser: the options that apply to ``spec`` with its defaults, the others hidden (and refused)."""
    parser = _Parser(prog=f"gsa train {spec.name}", formatter_class=_HelpFormatter,
                     description=f"Train a sparse-attention model on {spec.name}: {spec.summary} ({KINDS[spec.kind]}).\n\n"
                                 f"Tasks (gsa train TASK --help shows each one's options and defaults):\n{_tasks_help()}")
    groups = {name: parser.add_argument_group(name) for name in ("data", "model", "optimisation", "run")}
    accepted, inapplicable = spec.options, []
    for group, name, keywords in _OPTIONS:
        keywords = dict(keywords)
        flags = keywords.pop("flags", (_flag(name),))
        if name in accepted:
            groups[group].add_argument(*flags, dest=name, default=accepted[name], **keywords)
        else:  # parsed (so it can be named in the refusal), never shown
            groups[group].add_argument(*flags, dest=name, default=_NOT_GIVEN, **{**keywords, "help": argparse.SUPPRESS})
            inapplicable.append(name)
    parser.set_defaults(inapplicable=inapplicable)
    groups["run"].add_argument("--resume", action="store_true",
                               help="continue --run-dir from its last.pt, exactly where it stopped (mid-epoch too)")
    return parser


def build_parser() -> _Parser:
    """The top-level parser (``gsa train`` itself is parsed per task by `build_train_parser`)."""
    parser = _Parser(prog="gsa", description="Train and evaluate sparse-attention models on graph and long-sequence benchmarks.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    commands.add_parser("train", help="train a model on a task (gsa train [TASK] --help)", add_help=False)
    evaluate = commands.add_parser("evaluate", help="evaluate a run's best checkpoint on its validation and test splits")
    evaluate.add_argument("run_dir", help="a run directory written by 'gsa train'")
    evaluate.add_argument("--checkpoint", choices=("best", "last"), default="best", help="which checkpoint to evaluate")
    evaluate.add_argument("--device", default="auto", help="auto, cpu, cuda, ...")
    evaluate.add_argument("--root", help="the data root, where it differs from the one the run trained on (data moved)")
    return parser


def config_from_args(argv: List[str]) -> Tuple[TrainConfig, bool]:
    """Parse ``gsa train`` arguments (after ``train``) into ``(TrainConfig, resume)``; exits 2 on bad input."""
    given = argv[0] if argv and not argv[0].startswith("-") else None
    options = argv[1:] if given else argv
    from_file: List[str] = []
    nulls: Dict[str, None] = {}  # the file's null options: no value, as config.json records one
    path = None
    try:
        config_file = _config_argument(options)
        if config_file is not None:
            file_task, file_options, path = load_config_file(config_file)
            if given is not None and given != file_task:
                raise ValueError(f"config {config_file!r} is for task {file_task!r}, not {given!r}")
            not_options = sorted(set(file_options) - _FILE_OPTIONS)
            if not_options:  # e.g. "resume" or "help": flags of a launch, not settings of a run
                raise ValueError(f"config {str(path)!r} sets {', '.join(not_options)}, which "
                                 f"{'is not an option' if len(not_options) == 1 else 'are not options'} of a run (see gsa train TASK --help)")
            given, from_file = file_task, _as_arguments(file_options)
            nulls = {option.replace("-", "_"): None for option, value in file_options.items() if value is None}
            required = sorted(set(nulls) & set(find_task(file_task).options) - _NULLABLE)
            if required:  # null means "none", which only some options take
                raise ValueError(f"config {str(path)!r}: {', '.join(required)} cannot be null (it needs a value)")
        name = given or DEFAULT_TASK
        spec = find_task(name)
    except ValueError as error:  # UnknownTask too
        _Parser(prog="gsa train").error(str(error))
    parser = build_train_parser(spec)
    if from_file or nulls:  # the file's values become the defaults: checked like typed options, shown by --help, overridden by options
        defaults = vars(parser.parse_args(from_file))
        parser.set_defaults(**{**defaults, **nulls})
    args, unrecognised = parser.parse_known_args(options)
    if unrecognised:
        misplaced = [token for token in unrecognised if token in TASKS]
        if misplaced and given is None:
            _Parser(prog="gsa train").error(f"the task comes first: gsa train {misplaced[0]} [options]")
        parser.error(f"unrecognized arguments: {' '.join(unrecognised)}")
    args.config_file = None if path is None else str(path)
    refused = [_flag(option) for option in args.inapplicable if getattr(args, option) is not _NOT_GIVEN]
    if refused:
        parser.error(f"{', '.join(refused)} {'does' if len(refused) == 1 else 'do'} not apply to {name} "
                     f"({KINDS[spec.kind]}); see 'gsa train {name} --help'")
    if args.resume and args.run_dir is None:
        parser.error("--resume needs the --run-dir of the run to continue")
    try:
        device = local_device(args.device)
    except (RuntimeError, ValueError) as error:  # a device string torch does not know, or one this machine lacks
        parser.error(f"--device {args.device}: {error}")
    try:
        check_backend_runs_on(args.backend, device)
    except ValueError as error:
        parser.error(f"--backend {args.backend} with --device {args.device}: {error}")
    values = {option: getattr(args, option) for option in spec.options}
    values["run_dir"] = values["run_dir"] or _new_run_dir(f"runs/{name}-seed{args.seed}")
    try:
        config = resolve_config(name, values)
    except ValueError as error:  # options valid alone but not together
        parser.error(str(error))
    if Path(config.run_dir).exists() and not Path(config.run_dir).is_dir():
        parser.error(f"--run-dir {config.run_dir} is a file, not a run directory")
    blocking = next((parent for parent in Path(config.run_dir).parents if parent.exists()), None)
    if blocking is not None and not blocking.is_dir():
        parser.error(f"--run-dir {config.run_dir} cannot be created: {blocking} is a file")
    if Path(config.run_dir, "last.pt").exists() and not args.resume:
        parser.error(f"{config.run_dir} already holds a run; pass --resume to continue it or choose another --run-dir")

    saved = Path(config.run_dir, "config.json")
    if args.resume and not saved.exists():  # most likely a mistyped --run-dir: training afresh would hide it
        parser.error(f"--resume: {config.run_dir} holds no run to continue (no config.json); drop --resume to start one")
    try:
        changed = config_differences(json.loads(saved.read_text()), config) if args.resume else []
    except (ValueError, OSError) as error:
        parser.error(f"--resume: {saved} is not a readable run configuration ({error})")
    if changed:
        parser.error(f"--resume: {config.run_dir} was run with other options: {'; '.join(changed)}; "
                     "pass the options it was run with")
    return config, args.resume


def _config_argument(argv: List[str]) -> Optional[str]:
    """The value of ``--config`` in ``argv`` (the last one), if any."""
    value = None
    for index, token in enumerate(argv):
        if token == "--config":
            if index + 1 == len(argv):
                raise ValueError("argument --config: expected one argument")
            value = argv[index + 1]
        elif token.startswith("--config="):
            value = token.partition("=")[2]
    return value


def _as_arguments(options: Dict[str, Any]) -> List[str]:
    """A configuration file's options as command-line arguments, so they are checked exactly like typed ones."""
    arguments: List[str] = []
    for name, value in options.items():
        flag = _flag(name)
        if isinstance(value, bool):
            arguments += [flag if value else f"--no-{flag[2:]}"]  # every bool option has its --no- form
        elif isinstance(value, (list, tuple)):  # as config.json records them: ["rwse", 16], ["window", {"window": 3}], [15, 10]
            arguments += [flag, _spell(value)]
        elif value is not None:
            arguments += [flag, str(value)]
    return arguments


def _new_run_dir(base: str) -> str:
    """``base``, or ``base-2``, ``base-3``, ... whichever does not exist yet."""
    candidate, k = base, 1
    while Path(candidate).exists():
        k += 1
        candidate = f"{base}-{k}"
    return candidate


# Errors of loading a dataset, reported in one line (exit code 1) rather than as a traceback;
# EOFError and UnpicklingError come from a truncated or corrupt processed/ cache.
_DATA_ERRORS = (OSError, ImportError, RuntimeError, ValueError, EOFError, pickle.UnpicklingError)


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "train":
        return _train(argv[1:])
    return _evaluate(build_parser().parse_args(argv))


def _train(argv: List[str]) -> int:
    start = time.perf_counter()
    config, resume = config_from_args(argv)
    task = _task_or_report(config, "train")
    if task is None:
        return 1
    try:
        trainer = Trainer(config, task)
    except ValueError as error:  # options this launch cannot run (a batch the data-parallel processes do not divide)
        _Parser(prog="gsa train").error(str(error))
    notices = is_main()  # one process of a torchrun launch speaks for all
    if notices and trainer.backend != config.backend:
        print(f"attention backend: {trainer.backend} (--backend {config.backend} for a run this long; "
              "its kernels compile in the first step)", file=sys.stderr)
    steps = planned_steps(config, len(trainer.loaders["train"]))
    if notices and config.warmup_steps >= steps:
        print(f"note: --warmup-steps {config.warmup_steps} spans the whole run ({steps} step{'' if steps == 1 else 's'}): "
              f"the learning rate never reaches --lr {config.lr:g}", file=sys.stderr)
    try:
        resumed = resume and trainer.resume()
    except ValueError as error:  # a checkpoint this launch cannot continue (another number of processes)
        _Parser(prog="gsa train").error(f"--resume: {error}")
    if resumed and notices:
        print(f"resumed {config.run_dir} at epoch {trainer.epoch + 1}, batch {trainer.progress['batches']}", file=sys.stderr)
    elif resume and notices:  # its configuration was written, but it stopped before its first checkpoint
        print(f"--resume: {config.run_dir} holds no last.pt yet; training it from the start", file=sys.stderr)
    try:
        summary = trainer.fit()
    finally:
        cleanup()  # leave a torchrun process group as it found it: none
    if not notices or not summary.get("epochs"):
        return 0
    if summary["best_epoch"] is None:
        print(f"{config.task}: every epoch diverged (non-finite predictions); nothing to report", file=sys.stderr)
        return 1
    print(f"{config.task}: best validation {summary['metric']} {summary['val']:.4f} at epoch {summary['best_epoch']}; "
          f"test {summary['metric']} {summary['test']:.4f}; {time.perf_counter() - start:.1f} s wall, "
          f"{summary['train_samples_per_s']:.1f} training samples/s")
    return 0


def _task_or_report(config, command: str):
    """The task of ``config``, or ``None`` after one error line when its data cannot be loaded."""
    try:
        return make_task(config)
    except _DATA_ERRORS as error:
        print(f"gsa {command}: error: {config.task} data under {config.root}: {error}", file=sys.stderr)
        return None


def _evaluate(args: argparse.Namespace) -> int:
    refuse = _Parser(prog="gsa evaluate").error
    run_dir = Path(args.run_dir)
    checkpoint = run_dir / f"{args.checkpoint}.pt"
    if not checkpoint.exists():
        refuse(f"{checkpoint} does not exist (is {run_dir} a run directory written by 'gsa train'?)")
    try:
        device = local_device(args.device)
    except (RuntimeError, ValueError) as error:
        refuse(f"--device {args.device}: {error}")
    try:
        state = load_checkpoint(checkpoint)
    except ValueError as error:  # truncated, or not a checkpoint
        refuse(str(error))
    overrides = {"device": args.device}
    if args.root is not None:
        overrides["root"] = str(Path(args.root).resolve())  # absolute, as config.json records roots
    try:
        config = TrainConfig(**{**state["config"], **overrides})
    except TypeError as error:
        print(f"gsa evaluate: error: {checkpoint} holds a configuration this version cannot read ({error})", file=sys.stderr)
        return 1
    try:  # the kernel is a run option, not part of the model: any backend scores the same model
        check_backend_runs_on(config.backend, device)
    except ValueError:
        print(f"gsa evaluate: the run's backend {config.backend} does not run on {device}; scoring with auto", file=sys.stderr)
        config = dataclasses.replace(config, backend="auto")
    task = _task_or_report(config, "evaluate")
    if task is None:
        return 1
    trainer = Trainer(config, task)
    trainer.model.load_state_dict(state["model"])
    result = {"run_dir": str(run_dir.resolve()), "checkpoint": args.checkpoint, "epoch": state["epoch"], "metric": trainer.task.metric,
              "val": trainer.evaluate("val"), "test": trainer.evaluate("test")}
    print(json.dumps(result, indent=2))
    return 0
