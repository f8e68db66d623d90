"""Equal-budget quality: our graph Transformers against PyG/OGB reference models on an OGB molecule dataset.

Four models train for the same epochs on the same seeds, through the same trainer
(`graph_sparse_attn.train.loop.Trainer`: the loop, loss, checkpoints and exact resume of
``gsa train``) on the same data, split and OGB ``Evaluator`` (the task table's ``ogbg-*`` task).
Each keeps its own published recipe (optimiser, batch size, schedule):

* ``default``  our CLI default, built through the task table exactly as ``gsa train DATASET`` builds it
  (`GraphTransformer`, exphormer attention + GPS local branch, post-norm BatchNorm, width 64, depth 3; AdamW with
  cosine decay, batch 32, RWSE 16 through ``Linear(BatchNorm(pe))``: the molecule recipe the ablations picked);
* ``ours-gps`` our GPS configuration: the shipped GraphGPS molhiv configuration (``gsa train --config
  ogbg-molhiv-gps``: `GraphTransformer` with ``gps=True``, full attention within each molecule, post-norm BatchNorm, width 64, 4 heads, GraphGPS's feed-forward block (2× wide, ReLU), dropout 0.05,
  attention dropout 0.5, RWSE 16, batch 32, AdamW with weight decay 1e-5, cosine schedule), applied to
  ``--dataset``, with three equal-budget changes: depth 3 (``--gps-depth``, as ``gpsconv``; GraphGPS's 10
  layers do not fit this CPU), learning rate 1e-3 (``--gps-lr``; GraphGPS's 1e-4 is tuned to 100 epochs, and
  PyG's ``examples/graph_gps.py`` uses 1e-3), and warm-up over the first 5 % of the sweep's steps (GraphGPS:
  5 of 100 epochs);
* ``gin-vn``   OGB's GIN-virtual-node baseline (``examples/graphproppred/mol``: 5 layers, width 300, virtual
  node, BatchNorm, dropout 0.5, JK "last", mean pool, linear head) on PyG's ``GINEConv``; Adam lr 1e-3
  (AdamW with weight decay 0 is Adam), batch 32, constant learning rate, no clipping — OGB's ``main_pyg.py``;
* ``gpsconv``  PyG ``GPSConv`` (``GINEConv`` local + dense multi-head attention, BatchNorm) with the sizes, dropouts,
  encoding and recipe of ``ours-gps``; mean pool and GraphGPS's ``san_graph`` head (64 → 32 → 16 → out); the
  encoding enters through GraphGPS's ``Atom+RWSE`` node encoder (``Linear(BatchNorm(pe))`` of size 16 beside
  ``AtomEncoder(48)``).

The reported figure of a run is the test metric at its best validation epoch (OGB's metric and direction:
ROC-AUC up for classification, RMSE down for regression); the table gives mean ± sample std over seeds,
wall time per run (training and evaluation; uninterrupted runs only), training time per run (evaluation excluded, summed
across resumes) and training graphs/s.

Usage::

    python benchmarks/quality.py --seeds 0 1 2 --epochs 10 --write            # ogbg-molhiv, the issue's comparison
    python benchmarks/quality.py --dataset ogbg-molbace --seeds 0 1 2 --epochs 20 --write
    python benchmarks/quality.py --dataset ogbg-molbace --epochs 1 --max-steps 5 --seeds 0   # smoke run
    python benchmarks/quality.py ... --resume                                    # continue a killed sweep
    python benchmarks/quality.py ... --backend compiled                          # our models in fused CPU kernels

One process trains one run at a time. Sweeps over disjoint ``--models`` may share an ``--out`` and run side by
side (one per core); a last call with all models and ``--resume`` finds every run finished and only writes the
table::

    OMP_NUM_THREADS=1 python benchmarks/quality.py --seeds 0 1 2 --epochs 10 --models default ours-gps &
    OMP_NUM_THREADS=1 python benchmarks/quality.py --seeds 0 1 2 --epochs 10 --models gin-vn gpsconv &
    wait; python benchmarks/quality.py --seeds 0 1 2 --epochs 10 --resume --write

(On ogbg-molhiv, one CPU core's time per epoch, measured as process CPU time: default 161 s, ours-gps 145 s,
gin-vn 245 s, gpsconv 134 s of training plus 6-19 s of evaluation each, so these two halves are about even:
about 3.5 hours for 10 epochs x 3 seeds on an idle 2-core CPU.)

Every (model, seed) run has a ``gsa train``-style run directory ``OUT/MODEL/seedS/`` (``last.pt`` at each
epoch end and every ``--checkpoint-every`` minutes, ``metrics.jsonl``, ``curves.png``) and, once finished,
``OUT/MODEL-seedS.json``; ``--resume`` skips finished runs and continues the others from ``last.pt``.
``OUT`` (default ``benchmarks/out/quality/DATASET``) also gets ``val_curves.png`` and ``results.md``.
The data is read from ``--root`` (default ``datasets/``, ``gsa train``'s root), into which the dataset
folder is copied from ``../shared/data/ogb`` when it is missing there (OGB writes ``processed/`` beside it);
copying and processing hold a lock on ``--root``. A run continued or reused with other options than it was
made with (budget, recipe, sizes) is refused.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import shlex
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from common import HERE, update_results
from graph_sparse_attn.ops.dispatch import KERNEL_BACKENDS

SHARED_OGB = HERE.parent.parent / "shared" / "data" / "ogb"
CLI_ROOT = HERE.parent / "datasets"
MODELS = {
    "default": "ours: CLI default (`gsa train DATASET`)",
    "ours-gps": "ours: GPS configuration",
    "gin-vn": "OGB GIN-virtual-node (PyG `GINEConv`)",
    "gpsconv": "PyG `GPSConv` (GINE + dense attention)",
}
# (ours, the reference it should match or beat)
PAIRS = (("default", "gin-vn"), ("ours-gps", "gpsconv"))
# The GPS models' settings: the shipped GraphGPS molhiv configuration (`gsa train --config ogbg-molhiv-gps`), with
# these equal-budget changes (its epochs and warm-up steps are the sweep's; see the module docstring).
GPS_CONFIG = "ogbg-molhiv-gps"
GPS_DEPTH, GPS_LR = 3, 1e-3
GPS_WARMUP_FRACTION = 0.05  # GraphGPS: 5 warm-up epochs of 100
BUDGET_OPTIONS = ("epochs", "max_steps", "warmup_steps")
# OGB's main_pyg.py recipe (task-table options): Adam (AdamW without weight decay), constant rate, no clipping;
# no positional encoding (the molecule tasks' default RWSE is ours, not OGB's).
GIN_VN_RECIPE = {"batch_size": 32, "lr": 1e-3, "optimizer": "adamw", "weight_decay": 0.0, "schedule": "constant",
                 "warmup_steps": 0, "grad_clip": 0.0, "pe": None}

# ---------------------------------------------------------------------------- reference models
class GINVirtualNode(nn.Module):
    r"""OGB's GIN-virtual-node molecule baseline on PyG's ``GINEConv``.

    Per layer :math:`\ell`: :math:`h \leftarrow h + v_{b(i)}` (the graph's virtual node), then
    :math:`h' = \mathrm{MLP}((1+\epsilon) h_i + \sum_{j \to i} \mathrm{ReLU}(h_j + \mathrm{Bond}_\ell(e_{ji})))`
    (``GINEConv`` with a trainable :math:`\epsilon`, MLP ``Linear → BN → ReLU → Linear`` of width 2×),
    BatchNorm, ReLU (not after the last layer), dropout; between layers the virtual node becomes
    :math:`v \leftarrow \mathrm{dropout}(\mathrm{MLP}_v(\sum_i h_i + v))`. Readout: mean pool of the last
    layer, one linear layer.

    Shapes: ``forward(x [N, 9] long, edge_index [2, E], edge_attr [E, 3] long, batch [N]) -> [B, out_channels]``.
    """

    def __init__(self, out_channels: int, hidden_channels: int = 300, num_layers: int = 5, dropout: float = 0.5) -> None:
        super().__init__()
        from ogb.graphproppred.mol_encoder import AtomEncoder, BondEncoder
        from torch_geometric.nn import GINEConv

        if num_layers < 2:
            raise ValueError(f"num_layers must be at least 2, got {num_layers}")
        width, wide = hidden_channels, 2 * hidden_channels
        self.dropout = dropout
        self.atom = AtomEncoder(width)
        self.virtual = nn.Embedding(1, width)
        self.bonds = nn.ModuleList(BondEncoder(width) for _ in range(num_layers))
        self.convs = nn.ModuleList(
            GINEConv(nn.Sequential(nn.Linear(width, wide), nn.BatchNorm1d(wide), nn.ReLU(), nn.Linear(wide, width)), train_eps=True)
            for _ in range(num_layers))
        self.norms = nn.ModuleList(nn.BatchNorm1d(width) for _ in range(num_layers))
        self.virtual_mlps = nn.ModuleList(
            nn.Sequential(nn.Linear(width, wide), nn.BatchNorm1d(wide), nn.ReLU(), nn.Linear(wide, width), nn.BatchNorm1d(width), nn.ReLU())
            for _ in range(num_layers - 1))
        self.head = nn.Linear(width, out_channels)
        nn.init.zeros_(self.virtual.weight)  # OGB starts every virtual node at 0

    def forward(self, x: Tensor, edge_index: Tensor, edge_attr: Tensor, batch: Tensor, pe: Optional[Tensor] = None) -> Tensor:
        from torch_geometric.nn import global_add_pool, global_mean_pool

        if pe is not None:
            raise ValueError("pe must be None: OGB's GIN-virtual-node baseline reads no positional encoding")

        num_graphs = int(batch.max()) + 1
        virtual = self.virtual.weight.expand(num_graphs, -1)
        h = self.atom(x)
        last = len(self.convs) - 1
        for layer, (conv, bond, norm) in enumerate(zip(self.convs, self.bonds, self.norms)):
            h = h + virtual[batch]
            out = norm(conv(h, edge_index, bond(edge_attr)))
            out = F.dropout(out if layer == last else F.relu(out), self.dropout, self.training)
            if layer < last:
                # The virtual node reads this layer's input (OGB's order), before h moves on.
                virtual = F.dropout(self.virtual_mlps[layer](global_add_pool(h, batch, num_graphs) + virtual), self.dropout, self.training)
            h = out
        return self.head(global_mean_pool(h, batch, num_graphs))


class GPSConvModel(nn.Module):
    """PyG ``GPSConv`` blocks (``GINEConv`` local + dense multi-head attention within each graph, BatchNorm)
    over OGB atom/bond encoders; mean pool; GraphGPS's ``san_graph`` head (``width → width/2 → width/4 → out``).

    With ``pe_dim`` > 0 the node input is GraphGPS's ``Atom+RWSE`` encoder: ``AtomEncoder(width - pe_width)``
    concatenated with ``Linear(BatchNorm(pe))`` of size ``pe_width`` (GraphGPS: ``dim_pe: 16``, ``raw_norm_type: BatchNorm``).

    Shapes: ``forward(x [N, 9] long, edge_index [2, E], edge_attr [E, 3] long, batch [N], pe [N, pe_dim] = None)
    -> [B, out_channels]``.
    """

    def __init__(self, out_channels: int, hidden_channels: int = 64, num_layers: int = 3, heads: int = 4,
                 dropout: float = 0.05, attn_dropout: float = 0.5, pe_dim: int = 0, pe_width: int = 16) -> None:
        super().__init__()
        from ogb.graphproppred.mol_encoder import AtomEncoder, BondEncoder
        from torch_geometric.nn import GINEConv, GPSConv

        width = hidden_channels
        if pe_dim and not 0 < pe_width < width:
            raise ValueError(f"pe_width must be in (0, hidden_channels={width}), got {pe_width}")
        self.pe_dim = pe_dim
        self.atom, self.bond = AtomEncoder(width - pe_width if pe_dim else width), BondEncoder(width)
        self.pe_encoder = nn.Sequential(nn.BatchNorm1d(pe_dim), nn.Linear(pe_dim, pe_width)) if pe_dim else None
        self.convs = nn.ModuleList(
            GPSConv(width, GINEConv(nn.Sequential(nn.Linear(width, width), nn.ReLU(), nn.Linear(width, width))), heads=heads,
                    dropout=dropout, attn_type="multihead", attn_kwargs={"dropout": attn_dropout})
            for _ in range(num_layers))
        self.head = nn.Sequential(nn.Linear(width, width // 2), nn.ReLU(), nn.Linear(width // 2, width // 4), nn.ReLU(),
                                  nn.Linear(width // 4, out_channels))

    def forward(self, x: Tensor, edge_index: Tensor, edge_attr: Tensor, batch: Tensor, pe: Optional[Tensor] = None) -> Tensor:
        from torch_geometric.nn import global_mean_pool

        if (pe is None) != (self.pe_encoder is None) or (pe is not None and pe.shape != (x.size(0), self.pe_dim)):
            raise ValueError(f"pe must be [N, pe_dim]=[{x.size(0)}, {self.pe_dim}] when pe_dim > 0 and None otherwise")
        h, edge_features = self.atom(x), self.bond(edge_attr)
        if pe is not None:
            h = torch.cat([h, self.pe_encoder(pe)], dim=-1)
        for conv in self.convs:
            h = conv(h, edge_index, batch, edge_attr=edge_features)
        return self.head(global_mean_pool(h, batch))


def build_reference(model: str, data, options: Dict[str, Any]) -> nn.Module:
    """Reference ``model`` for the task table's ``GraphPropertyData`` (its targets, and its ``pe`` when it carries one);
    ``gpsconv`` takes its sizes from the GPS ``options`` (``dim``, ``depth``, ``heads``, ``dropout``, ``attn_dropout``)."""
    if model == "gin-vn":
        return GINVirtualNode(data.num_targets)
    return GPSConvModel(data.num_targets, hidden_channels=options["dim"], num_layers=options["depth"], heads=options["heads"],
                        dropout=options["dropout"], attn_dropout=options["attn_dropout"], pe_dim=data.pe[1] if data.pe else 0)


def ogb_skip_single_graph_task(name: str, data, metric, build_model):
    """A `GraphPropertyTask` whose training loader drops a last batch of a single graph, as OGB's ``main_pyg.py``
    skips it (GIN-VN's BatchNorm over virtual nodes needs two graphs); otherwise the task table's task."""
    from torch_geometric.loader import DataLoader as GraphLoader

    from graph_sparse_attn.train.tasks import GraphPropertyTask, ResumableLoader

    class Task(GraphPropertyTask):
        def loaders(self, batch_size: int, seed: int):
            loaders = super().loaders(batch_size, seed)
            train = loaders["train"].loader.dataset
            if len(train) % batch_size == 1:
                loaders["train"] = ResumableLoader(train, batch_size, seed, loader_class=GraphLoader, drop_last=True)
            return loaders

    return Task(name, data, metric, build_model, {})


REFERENCES = ("gin-vn", "gpsconv")
OURS = ("default", "ours-gps")


# ---------------------------------------------------------------------------- one run
def prepare_dataset(dataset: str, root: Path) -> None:
    """Copy ``../shared/data/ogb/<folder>`` into ``root`` when ``root`` lacks it (never writing into the shared one)
    and let OGB process it, under a lock on ``root``: sweeps started side by side do not copy or process it twice."""
    import contextlib
    import fcntl

    from graph_sparse_attn.train.table import find_task

    folder = dataset.replace("-", "_")
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f".{folder}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (root / folder).exists():
            source = SHARED_OGB / folder
            if not source.exists():
                raise FileNotFoundError(f"--root {root} has no {folder}/ and {source} is absent: pass a --root holding a writable copy")
            shutil.copytree(source, root / folder)
        with contextlib.redirect_stdout(sys.stderr):  # OGB reports its processing on stdout; keep stdout for the table
            find_task(dataset).load(dataset, root, seed=0)


def gps_options(args: argparse.Namespace) -> Tuple[Dict[str, Any], str]:
    """Task-table options of both GPS models (the shipped `GPS_CONFIG` with ``--gps-depth``/``--gps-lr``/``--gps-pe``
    over it, budget options dropped), and the path of the configuration file."""
    from graph_sparse_attn.train.table import load_config_file

    _, options, path = load_config_file(GPS_CONFIG)
    options = {key: value for key, value in options.items() if key not in BUDGET_OPTIONS}
    options.update(depth=args.gps_depth, lr=args.gps_lr)
    if args.gps_pe is not None:
        options["pe"] = args.gps_pe or None
    return options, str(path)


def run_config(model: str, args: argparse.Namespace, seed: int):
    """The `TrainConfig` of one run, as the task table resolves ``model``'s options over ``args.dataset``'s defaults
    (for the references, ``model_options`` names the reference and its sizes; warm-up steps still to come)."""
    from graph_sparse_attn.train.table import resolve_config

    options = {"root": str(args.root), "run_dir": str(args.out / model / f"seed{seed}"), "seed": seed, "epochs": args.epochs,
               "max_steps": args.max_steps, "device": args.device, "backend": args.backend, "checkpoint_every": args.checkpoint_every}
    if model in ("ours-gps", "gpsconv"):
        gps, path = gps_options(args)
        options.update(gps, config_file=path if model == "ours-gps" else None)
    elif model == "gin-vn":
        options.update(GIN_VN_RECIPE)
    if model in OURS:
        options.update(args.overrides)
    config = resolve_config(args.dataset, options)
    if model in REFERENCES:
        sizes = {key: config.model_options[key] for key in ("dim", "depth", "heads", "dropout", "attn_dropout")}
        config = dataclasses.replace(config, model_options={"reference": model, **(sizes if model == "gpsconv" else {})})
    return config


def make_run(model: str, config):
    """``(config, task)``: ``config`` with the GPS models' warm-up steps, and its task (for the references: the task
    table's data, split, loss and evaluator with the reference model)."""
    from graph_sparse_attn.train.table import make_task

    task = make_task(config)
    if model in ("ours-gps", "gpsconv"):
        steps_per_epoch = math.ceil(len(task.data.split_idx["train"]) / config.batch_size)
        config = dataclasses.replace(config, warmup_steps=round(GPS_WARMUP_FRACTION * config.epochs * steps_per_epoch))
    if model in REFERENCES:
        sizes = {key: value for key, value in config.model_options.items() if key != "reference"}
        task = ogb_skip_single_graph_task(config.task, task.data, task.metric_spec,
                                          lambda data, _: build_reference(model, data, sizes))
    return config, task


def check_same_options(saved: Dict[str, Any], config, where: Path) -> None:
    """Refuse to continue or reuse a run made with other options than ``config`` (a table would mix budgets);
    the warm-up steps may differ too, as they follow from the others (`Trainer`'s rule otherwise:
    `graph_sparse_attn.train.loop.config_differences`)."""
    from graph_sparse_attn.train.loop import RUN_OPTIONS, config_differences

    changed = config_differences(saved, config, free=(*RUN_OPTIONS, "warmup_steps"))
    if changed:
        raise SystemExit(f"quality.py: error: {where} was run with other {'; '.join(changed)}; "
                         "pass the same options or another --out")


def run_one(model: str, seed: int, args: argparse.Namespace) -> Dict[str, Any]:
    """Train (or continue) one (model, seed) run and write ``OUT/MODEL-seedS.json``; returns its record."""
    from graph_sparse_attn.io import atomic_write_text
    from graph_sparse_attn.train.loop import Trainer

    config = run_config(model, args, seed)
    saved = Path(config.run_dir) / "config.json"
    if saved.exists():
        check_same_options(json.loads(saved.read_text()), config, saved.parent)
    config, task = make_run(model, config)
    trainer = Trainer(config, task)
    resumed = trainer.resume()
    if resumed:
        tqdm.write(f"{model} seed {seed}: resumed at epoch {trainer.epoch + 1}, batch {trainer.progress['batches']}")
    start = time.perf_counter()
    summary = trainer.fit()
    record = {
        "model": model, "seed": seed, "dataset": args.dataset, "metric": task.metric, "higher_is_better": task.higher_is_better,
        "parameters": sum(p.numel() for p in trainer.model.parameters()), "steps": trainer.step, "summary": summary,
        "history": trainer.history, "resumed": resumed, "torch_threads": torch.get_num_threads(),
        # Training and evaluation of the whole run; unknown for a resumed run (the killed part's time is lost).
        "wall_seconds": None if resumed else time.perf_counter() - start,
        "config": dataclasses.asdict(config),
    }

    atomic_write_text(json.dumps(record, indent=1), result_path(args.out, model, seed))
    return record


def parse_override(text: str) -> Tuple[str, Any]:
    """``"dropout=0.5"`` → ``("dropout", 0.5)``: the value read as JSON where it parses (numbers, true/false, null), else text."""
    key, equals, value = text.partition("=")
    if not key or not equals:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key.replace("-", "_"), json.loads(value)
    except json.JSONDecodeError:
        return key.replace("-", "_"), value


def result_path(out: Path, model: str, seed: int) -> Path:
    return out / f"{model}-seed{seed}.json"


# ---------------------------------------------------------------------------- report
def _mean_std(values: List[float], digits: int = 4) -> str:
    if not values:
        return "—"
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def hardware(device: str, records: Dict[str, List[dict]]) -> str:
    """The machine, and the torch threads the runs themselves used (recorded per run: the process that
    writes the table may have another setting than the runs had)."""
    if device.startswith("cuda") or (device == "auto" and torch.cuda.is_available()):
        return torch.cuda.get_device_name()
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor() or "CPU")
    threads = sorted({r.get("torch_threads") for rs in records.values() for r in rs} - {None})
    used = f"{'/'.join(map(str, threads))} torch thread(s) per run" if threads else "torch threads per run not recorded"
    return f"{model}, {os.cpu_count()} cores, {used}"


def format_table(records: Dict[str, List[dict]], args: argparse.Namespace, command: str, notes: List[str]) -> str:
    """The markdown block: one row per model, then the our-vs-reference pairs."""
    any_record = next(r for rs in records.values() for r in rs)
    metric, higher = any_record["metric"], any_record["higher_is_better"]
    arrow = "↑" if higher else "↓"
    lines = [f"| model | parameters | test {metric} {arrow} | val {metric} | best epoch | wall s / run | train s / run | "
             "train graphs / s | seeds |", "|---|---|---|---|---|---|---|---|---|"]
    means = {}
    for model, runs in records.items():
        if not runs:
            lines.append(f"| {MODELS[model]} | — | not run | — | — | — | — | — | — |")
            continue
        tests = [r["summary"]["test"] for r in runs]
        means[model] = statistics.mean(tests)
        walls = [r["wall_seconds"] for r in runs if r.get("wall_seconds") is not None]
        wall = "—" if not walls else f"{statistics.mean(walls):,.1f}" + ("" if len(walls) == len(runs) else f" ({len(walls)} of {len(runs)} runs)")
        lines.append(
            f"| {MODELS[model]} | {runs[0]['parameters']:,} | {_mean_std(tests)} | {_mean_std([r['summary']['val'] for r in runs])} | "
            f"{', '.join(str(r['summary']['best_epoch']) for r in runs)} | {wall} | "
            f"{statistics.mean(r['summary']['train_seconds'] for r in runs):,.1f} | "
            f"{statistics.mean(r['summary']['train_samples_per_s'] for r in runs):,.0f} | "
            f"{', '.join(str(r['seed']) for r in runs)} |")
    pairs = []
    for ours, reference in PAIRS:
        if ours in means and reference in means:
            better = means[ours] >= means[reference] if higher else means[ours] <= means[reference]
            pairs.append(f"| {MODELS[ours]} vs {MODELS[reference]} | {means[ours] - means[reference]:+.4f} | "
                         f"{'met' if better else 'not met'} |")
    if pairs:
        lines += ["", f"| pair | mean test difference (ours − reference) | target (ours {'≥' if higher else '≤'} reference) |",
                  "|---|---|---|", *pairs]
    budget = f"{args.epochs} epoch{'' if args.epochs == 1 else 's'}" + (f", at most {args.max_steps} steps per run" if args.max_steps else "")
    text = (f"## Equal-budget quality, {args.dataset} (`{command}`)\n\n"
            f"{budget}; test {metric} at the best validation epoch (OGB `Evaluator`, {'higher' if higher else 'lower'} is better), "
            f"mean ± sample std over seeds; wall time = training + evaluation of an uninterrupted run (resumed runs left out), train time excludes evaluation; times are as each run measured them, under whatever else the machine ran then, so compare speed across rows only within one sweep run alone (`benchmarks/molecules.py` times the models side by side). Each model trains with its own recipe "
            f"(see `benchmarks/quality.py`). Hardware: {hardware(args.device, records)}.\n\n" + "\n".join(lines))
    if notes:
        text += "\n\n" + "\n".join(notes)
    return text


def plot_validation(records: Dict[str, List[dict]], path: Path) -> None:
    """Validation metric per epoch: one colour per model, thin lines per seed, thick the mean over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(6, 4))
    metric = None
    for colour, (model, runs) in zip(plt.rcParams["axes.prop_cycle"].by_key()["color"], records.items()):
        if not runs:
            continue
        metric = runs[0]["metric"]
        curves = [[r["val_" + metric] for r in run["history"]] for run in runs]
        for curve in curves:
            ax.plot(range(1, len(curve) + 1), curve, color=colour, alpha=0.3, linewidth=0.8, marker="." if len(curve) == 1 else None)
        length = min(len(c) for c in curves)
        mean = [statistics.mean(c[i] for c in curves) for i in range(length)]
        ax.plot(range(1, length + 1), mean, color=colour, linewidth=2, marker="o" if length == 1 else None, label=MODELS[model])
    ax.set(xlabel="epoch", ylabel=f"validation {metric}")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


# ---------------------------------------------------------------------------- main
def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="ogbg-molhiv", help="an OGB molecule dataset (ogbg-molhiv, ogbg-molbace, ogbg-molesol, ...)")
    parser.add_argument("--models", nargs="+", choices=tuple(MODELS), default=list(MODELS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--max-steps", type=int, default=0, help="optimiser steps per run at most (0: no limit; for smoke runs)")
    parser.add_argument("--root", type=Path, default=CLI_ROOT, help="writable folder of OGB dataset folders (default: datasets/)")
    parser.add_argument("--out", type=Path, help="sweep folder (default: benchmarks/out/quality/DATASET)")
    parser.add_argument("--resume", action="store_true", help="skip finished runs in --out and continue unfinished ones")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, ...")
    parser.add_argument("--backend", default="auto", choices=KERNEL_BACKENDS,
                        help="attention kernel of our models (gsa train --backend); free between a run and its continuation")
    parser.add_argument("--checkpoint-every", type=float, default=5.0, help="minutes between mid-epoch checkpoints (0: every step)")
    parser.add_argument("--gps-depth", type=int, default=GPS_DEPTH, help="layers of both GPS models")
    parser.add_argument("--gps-lr", type=float, default=GPS_LR, help="learning rate of both GPS models")
    parser.add_argument("--gps-pe", help=f"encoding of both GPS models (default: {GPS_CONFIG}'s; '' for none)")
    parser.add_argument("--set", dest="overrides", metavar="KEY=VALUE", action="append", type=parse_override, default=[],
                        help="a task-table option of our models, over their recipes (repeatable; e.g. dropout=0.5): "
                             "ablations, see ablations.py")
    parser.add_argument("--write", action="store_true", help="put the table into benchmarks/RESULTS.md (and the plot beside it)")
    args = parser.parse_args(argv)
    args.overrides = dict(args.overrides)
    if not args.dataset.startswith("ogbg-mol"):
        parser.error(f"--dataset must be an OGB molecule dataset (ogbg-mol*), got {args.dataset!r}")
    if args.epochs <= 0 or args.max_steps < 0 or args.checkpoint_every < 0:
        parser.error("--epochs must be positive, --max-steps and --checkpoint-every non-negative")
    args.root = args.root.resolve()
    args.out = (args.out or HERE / "out" / "quality" / args.dataset).resolve()
    runs = [(model, seed) for model in args.models for seed in args.seeds]
    started = [f"{m}/seed{s}" for m, s in runs if result_path(args.out, m, s).exists() or (args.out / m / f"seed{s}" / "last.pt").exists()]
    if started and not args.resume:
        parser.error(f"{args.out} already holds runs ({', '.join(started)}); pass --resume to continue or choose another --out")
    prepare_dataset(args.dataset, args.root)
    notes = []
    if args.overrides and set(OURS) & set(args.models):
        notes.append("Our models with " + ", ".join(f"{k}={v}" for k, v in args.overrides.items()) + ".")
    if {"ours-gps", "gpsconv"} & set(args.models):
        gps, _ = gps_options(args)
        notes.append(f"GPS models: `{GPS_CONFIG}` settings (" + ", ".join(f"{k}={v}" for k, v in gps.items())
                     + f"), warm-up over the first {GPS_WARMUP_FRACTION:.0%} of steps; "
                     + ("`gpsconv` reads the encoding through GraphGPS's Atom+RWSE encoder." if gps.get("pe") else "no encoding."))
    args.out.mkdir(parents=True, exist_ok=True)

    records: Dict[str, List[dict]] = {model: [] for model in args.models}
    for model, seed in tqdm(runs, desc="sweep", position=2, leave=True):
        path = result_path(args.out, model, seed)
        if path.exists():
            record = json.loads(path.read_text())
            check_same_options(record["config"], run_config(model, args, seed), path)
            records[model].append(record)
            continue
        records[model].append(run_one(model, seed, args))

    argv = sys.argv[1:] if argv is None else argv
    command = shlex.join(["python", "benchmarks/quality.py", *(a for a in argv if a not in ("--write", "--resume"))])
    markdown = format_table(records, args, command, notes)
    print(markdown)
    plot = args.out / "val_curves.png"
    plot_validation(records, plot)
    (args.out / "results.md").write_text(markdown + "\n")
    if args.write:
        image = HERE / f"quality-{args.dataset}.png"
        shutil.copyfile(plot, image)
        update_results(f"quality-{args.dataset}", markdown + f"\n\n![validation curves, {args.dataset}]({image.name})")


if __name__ == "__main__":
    main()
