"""Task adapters: what the trainer needs from a kind of task (loaders, forward, loss, metric).

One adapter per kind — sequence classification, graph property prediction, node
classification — wrapping the plain data of `graph_sparse_attn.data.benchmarks`, a model
builder and a metric, all chosen by the task table (`table.py`).
"""
from __future__ import annotations

import math

from typing import Any, Callable, Dict, Iterable, Iterator, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, DistributedSampler, Subset

from ..data.benchmarks import GraphPropertyData, Metric, NodeData, SequenceData
from ..data.sampling import NeighborSampler
from ..data.sequence import SequenceGraphCollator
from ..patterns.registry import RANDOM_PATTERNS
from . import distributed as dist_utils

Loaders = Dict[str, Any]
ModelBuilder = Callable[[Any, Dict[str, Any]], nn.Module]


class Task:
    """What the trainer needs from a benchmark.

    ``forward(model, batch, split)`` returns ``(prediction, target)`` restricted to the samples
    the split scores (node tasks mask one graph); ``score`` computes the official metric.
    The training loader may expose ``state_dict()``/``load_state_dict()`` (its position in the
    epoch and its random state), which checkpoints carry to resume mid-epoch exactly.
    """

    def __init__(self, name: str, data: Any, metric: Metric, build_model: ModelBuilder, model_options: Dict[str, Any]) -> None:
        self.name, self.data, self.metric_spec = name, data, metric
        self._build_model, self.model_options = build_model, dict(model_options)

    @property
    def metric(self) -> str:
        return self.metric_spec.name

    @property
    def higher_is_better(self) -> bool:
        return self.metric_spec.higher_is_better

    def score(self, prediction: Tensor, target: Tensor) -> float:
        """The official metric; NaN where a prediction is not finite (a diverged model), which
        metrics would otherwise score as a real answer (an all-NaN argmax is class 0) or refuse."""
        if not bool(torch.isfinite(prediction).all()):
            return math.nan
        return self.metric_spec.score(prediction, target)

    @property
    def uses_batch_size(self) -> bool:
        """Whether training batches hold ``batch_size`` samples (full-graph node tasks: one graph a step)."""
        return True

    def build_model(self, backend: str = "auto") -> nn.Module:
        """The task's model with ``model_options``; ``backend`` is its attention kernel, a run option."""
        return self._build_model(self.data, {**self.model_options, "backend": backend})

    def loaders(self, batch_size: int, seed: int) -> Loaders:
        """``{"train", "val", "test"}`` iterables of batches; ``batch_size`` is per process."""
        raise NotImplementedError

    def forward(self, model: nn.Module, batch: Any, split: str) -> Tuple[Tensor, Tensor]:
        raise NotImplementedError

    def loss(self, prediction: Tensor, target: Tensor) -> Tensor:
        raise NotImplementedError

    def num_samples(self, batch: Any) -> int:
        return int(batch.num_graphs)


class ResumableLoader:
    """Mini-batches of a seeded shuffle, sharded by data-parallel rank, that can resume inside an epoch.

    The order of epoch ``e`` is drawn from ``seed + e`` (`DistributedSampler`, so a K-process
    run sees the same global batches as one process with K times the batch size).
    ``state_dict()`` records how many batches of the current epoch were handed out;
    after ``load_state_dict`` the next epoch of the same number starts after them. Loading draws
    nothing from the global random generator, so resuming does not shift it.
    """

    def __init__(self, dataset: Sequence, batch_size: int, seed: int, loader_class: type = DataLoader, **loader_args: Any) -> None:
        self.sampler = DistributedSampler(dataset, num_replicas=dist_utils.world_size(), rank=dist_utils.rank(), shuffle=True, seed=seed)
        self._skip = _SkipFirst(self.sampler)
        self.batch_size, self.position = batch_size, 0
        # The loader's own generator: a DataLoader otherwise draws a base seed from the global RNG per epoch.
        self.loader = loader_class(dataset, batch_size=batch_size, sampler=self._skip, generator=torch.Generator(), **loader_args)

    def __len__(self) -> int:
        return len(self.loader)

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def state_dict(self) -> Dict[str, int]:
        return {"position": self.position}

    def load_state_dict(self, state: Dict[str, int]) -> None:
        self.position = int(state["position"])

    def __iter__(self) -> Iterator[Any]:
        self._skip.start = self.position * self.batch_size
        try:
            for batch in self.loader:
                self.position += 1
                yield batch
        finally:  # the epoch ended (or was abandoned): the next one starts at its beginning
            self.position = 0


class _SkipFirst(torch.utils.data.Sampler):
    """``sampler``'s indices without the first ``start`` (reset after each pass)."""

    def __init__(self, sampler: DistributedSampler) -> None:
        self.sampler, self.start = sampler, 0

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self) -> Iterator[int]:
        start, self.start = self.start, 0
        return iter(list(self.sampler)[start:])


def _eval_loader(dataset: Sequence, batch_size: int, loader_class: type = DataLoader, **loader_args: Any) -> DataLoader:
    return loader_class(dataset, batch_size=batch_size, generator=torch.Generator(), **loader_args)


# ---------------------------------------------------------------------------- sequences
class SequenceClassificationTask(Task):
    """Token sequences as graphs (LRA ListOps, LRA Text): batches of chains carrying ``model_options["pattern"]``."""

    data: SequenceData

    def __init__(self, name: str, data: SequenceData, metric: Metric, build_model: ModelBuilder, model_options: Dict[str, Any]) -> None:
        super().__init__(name, data, metric, build_model, model_options)
        pattern_name, pattern_params = model_options["pattern"]
        self.collate = SequenceGraphCollator(pattern_name, pattern_params, cls_token=data.cls_token)
        # Evaluation draws random patterns (bigbird, random) from its own generator, reseeded every pass;
        # fixed patterns share the training collator and its cache of patterns by length.
        self.eval_collate = self.collate
        if pattern_name in RANDOM_PATTERNS:
            self.eval_collate = SequenceGraphCollator(pattern_name, pattern_params, cls_token=data.cls_token,
                                                      generator=torch.Generator())

    def loaders(self, batch_size: int, seed: int) -> Loaders:
        splits = self.data.splits

        def evaluation(split: str) -> Iterable:
            batches = _eval_loader(splits[split], batch_size, collate_fn=self.eval_collate)
            generator = self.eval_collate.generator
            return batches if generator is None else _SameDrawsEachPass(batches, generator, seed)

        return {"train": ResumableLoader(splits["train"], batch_size, seed, collate_fn=self.collate),
                "val": evaluation("val"), "test": evaluation("test")}

    def forward(self, model, batch, split):
        edge_index = None if self.model_options.get("knn") is not None else batch.edge_index
        # num_graphs from the batch: a trailing empty sequence (no CLS token) would be lost if inferred.
        return model(batch.x, batch.batch, edge_index, batch.pos, num_graphs=batch.num_graphs), batch.y

    def loss(self, prediction, target):
        return F.cross_entropy(prediction, target)


# ---------------------------------------------------------------------------- graphs
class GraphPropertyTask(Task):
    """Graph property prediction (OGB ``ogbg-*``, LRGB Peptides-func); NaN targets are unlabelled and skipped by the loss."""

    data: GraphPropertyData

    def loaders(self, batch_size: int, seed: int) -> Loaders:
        from torch_geometric.loader import DataLoader as GraphLoader

        def split(name: str) -> Subset:  # works for PyG datasets and plain lists of graphs alike
            return Subset(self.data.dataset, self.data.split_idx[name].tolist())

        return {"train": ResumableLoader(split("train"), batch_size, seed, loader_class=GraphLoader),
                "val": _eval_loader(split("val"), batch_size, GraphLoader),
                "test": _eval_loader(split("test"), batch_size, GraphLoader)}

    def forward(self, model, batch, split):
        out = model(batch.x, batch.edge_index, batch.edge_attr, batch.batch, pe=batch.pe if self.data.pe else None)
        return out, batch.y.float().view(out.shape)

    def loss(self, prediction, target):
        labelled = ~torch.isnan(target)
        if self.data.regression:
            return F.mse_loss(prediction[labelled], target[labelled])
        return F.binary_cross_entropy_with_logits(prediction[labelled], target[labelled])


def _rank_shard(seeds: Tensor) -> Tensor:
    """This rank's training seeds: every rank gets ``ceil(M / K)`` (the first seeds repeat to fill the
    last ranks, as in `DistributedSampler`), so all ranks run the same number of steps; unequal counts
    would leave one rank waiting in a gradient all-reduce the others never join."""
    ranks, count = dist_utils.world_size(), seeds.numel()
    if count == 0:
        return seeds
    needed = -(-count // ranks) * ranks
    return seeds.repeat(-(-needed // count))[:needed][dist_utils.rank()::ranks]


class _SameDrawsEachPass:
    """An evaluation split whose random draws (sampled neighbourhoods, random attention edges) come
    from ``generator`` reseeded with ``seed`` on every pass: scores of different epochs compare like
    with like, and ``gsa evaluate`` reproduces those a run recorded."""

    def __init__(self, batches: Iterable, generator: torch.Generator, seed: int) -> None:
        self.batches, self.generator, self.seed = batches, generator, seed

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator:
        self.generator.manual_seed(self.seed)
        return iter(self.batches)


class NodeClassificationTask(Task):
    """Node classification on one graph (Planetoid, OGB ``ogbn-*``).

    Full-graph training (one batch per epoch) when ``num_neighbors`` is None; otherwise
    mini-batches of ``batch_size`` seed nodes with their sampled ``num_neighbors`` in-neighbourhood
    (`NeighborSampler`; training seeds are sharded across data-parallel ranks).
    """

    data: NodeData

    def __init__(self, name: str, data: NodeData, metric: Metric, build_model: ModelBuilder, model_options: Dict[str, Any], *,
                 num_neighbors: Optional[Sequence[int]] = None) -> None:
        super().__init__(name, data, metric, build_model, model_options)
        self.num_neighbors = None if num_neighbors is None else list(num_neighbors)

    @property
    def uses_batch_size(self) -> bool:
        return self.num_neighbors is not None

    def loaders(self, batch_size: int, seed: int) -> Loaders:
        graph = self.data.data
        if self.num_neighbors is None:
            return {split: [graph] for split in ("train", "val", "test")}

        def sampler(seeds: Tensor, shuffle: bool) -> NeighborSampler:
            return NeighborSampler(graph.edge_index, graph.num_nodes, self.num_neighbors, input_nodes=seeds, batch_size=batch_size,
                                   shuffle=shuffle, generator=torch.Generator().manual_seed(seed), x=graph.x, y=graph.y)

        def evaluation(seeds: Tensor) -> _SameDrawsEachPass:
            batches = sampler(seeds, False)
            return _SameDrawsEachPass(batches, batches.generator, seed)

        index = self.data.split_idx
        return {"train": sampler(_rank_shard(index["train"]), True), "val": evaluation(index["val"]), "test": evaluation(index["test"])}

    def forward(self, model, batch, split):
        if self.num_neighbors is None:
            index = self.data.split_idx[split].to(batch.x.device)
            return model(batch.x, batch.edge_index)[index], batch.y[index]
        return model(batch.x, batch.edge_index)[: batch.batch_size], batch.y[: batch.batch_size]

    def loss(self, prediction, target):
        return F.cross_entropy(prediction, target)

    def num_samples(self, batch):
        return int(batch.batch_size) if self.num_neighbors is not None else self.data.split_idx["train"].numel()
