"""Benchmark tasks: data loaders, model, loss and official metric behind one small interface."""
from __future__ import annotations

import builtins
import contextlib
import socket
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DistributedSampler

from . import distributed as dist_utils

Loaders = Dict[str, Any]


class Task:
    """What the trainer needs from a benchmark.

    ``forward(model, batch, split)`` returns ``(prediction, target)`` restricted to the samples
    the split scores (node tasks mask one graph); ``score`` computes the official metric.
    """

    name: str
    metric: str
    higher_is_better: bool = True

    def loaders(self, batch_size: int, seed: int) -> Loaders:
        raise NotImplementedError

    def build_model(self) -> nn.Module:
        raise NotImplementedError

    def forward(self, model: nn.Module, batch: Any, split: str) -> Tuple[Tensor, Tensor]:
        raise NotImplementedError

    def loss(self, prediction: Tensor, target: Tensor) -> Tensor:
        raise NotImplementedError

    def score(self, prediction: Tensor, target: Tensor) -> float:
        raise NotImplementedError

    def num_samples(self, batch: Any) -> int:
        return int(batch.num_graphs)


def train_sampler(dataset: Sequence, seed: int) -> DistributedSampler:
    """Shuffling sampler that shards by rank; with one process it is a seeded shuffle.

    Using it in single-process runs too makes a K-process run see exactly the same global
    batches as a one-process run with K times the per-process batch size.
    """
    return DistributedSampler(dataset, num_replicas=dist_utils.world_size(), rank=dist_utils.rank(), shuffle=True, seed=seed)


def accuracy(prediction: Tensor, target: Tensor) -> float:
    return float((prediction.argmax(-1) == target).float().mean())


# ---------------------------------------------------------------------------- sequences
class SequenceClassificationTask(Task):
    """Token sequences as graphs (LRA ListOps, LRA Text): `SequenceTransformer`, accuracy."""

    metric = "accuracy"

    def __init__(self, name: str, splits: Dict[str, list], vocab_size: int, num_classes: int, *, cls_token: int,
                 pattern: Tuple[str, Dict[str, Any]], model_options: Dict[str, Any]) -> None:
        from ..data.sequence import SequenceGraphCollator

        self.name, self.splits, self.vocab_size, self.num_classes = name, splits, vocab_size, num_classes
        self.pattern, self.model_options = pattern, model_options
        self.collate = SequenceGraphCollator(pattern[0], pattern[1], cls_token=cls_token)

    def loaders(self, batch_size: int, seed: int) -> Loaders:
        from torch.utils.data import DataLoader

        train = self.splits["train"]
        loaders = {"train": DataLoader(train, batch_size=batch_size, sampler=train_sampler(train, seed), collate_fn=self.collate)}
        for split in ("val", "test"):
            loaders[split] = DataLoader(self.splits[split], batch_size=batch_size, collate_fn=self.collate)
        return loaders

    def build_model(self) -> nn.Module:
        from ..nn import SequenceTransformer

        longest = max(len(tokens) for split in self.splits.values() for tokens, _ in split) + 1
        options = {"max_length": longest, "pattern": self.pattern, **self.model_options}
        return SequenceTransformer(self.vocab_size, self.num_classes, **options)

    def forward(self, model, batch, split):
        return model(batch.x, batch.batch, batch.edge_index, batch.pos), batch.y

    def loss(self, prediction, target):
        return F.cross_entropy(prediction, target)

    def score(self, prediction, target):
        return accuracy(prediction, target)


# ---------------------------------------------------------------------------- graphs
class GraphPropertyTask(Task):
    """Molecular graph property prediction (OGB ``ogbg-*``, LRGB Peptides-func).

    ``dataset`` holds PyG graphs with OGB atom/bond features, ``split_idx`` the ``train``/``val``/
    ``test`` indices, ``scorer(prediction, target)`` the official metric; targets may hold NaN
    (unlabelled), which the loss skips.
    """

    def __init__(self, name: str, dataset, split_idx: Dict[str, Tensor], metric: str, scorer: Callable[[Tensor, Tensor], float], *,
                 regression: bool, model_options: Dict[str, Any]) -> None:
        self.name, self.dataset, self.split_idx, self.metric, self.scorer = name, dataset, split_idx, metric, scorer
        self.regression, self.model_options = regression, model_options
        self.higher_is_better = metric not in ("rmse", "mae")

    @classmethod
    def from_ogb(cls, name: str, root: Path, model_options: Dict[str, Any]) -> "GraphPropertyTask":
        """An OGB dataset through OGB's own loader, split and `Evaluator`."""
        from ogb.graphproppred import Evaluator, PygGraphPropPredDataset

        folder = root / name.replace("-", "_")
        _require_offline_copy(folder, f"ogb's layout for {name}: {folder}/{{raw,split,mapping}}/... and RELEASE_v1.txt",
                              "http://snap.stanford.edu/ogb/data/graphproppred/csv_mol_download/")
        with _no_stdin_prompt(folder), _pyg_safe_globals():
            dataset = PygGraphPropPredDataset(name=name, root=str(root))
        split = dataset.get_idx_split()
        evaluator = Evaluator(name)
        metric = evaluator.eval_metric

        def scorer(prediction: Tensor, target: Tensor) -> float:
            return float(evaluator.eval({"y_true": target.numpy(), "y_pred": prediction.numpy()})[metric])

        return cls(name, dataset, {"train": split["train"], "val": split["valid"], "test": split["test"]}, metric, scorer,
                   regression=dataset.task_type == "regression", model_options=model_options)

    @classmethod
    def peptides_func(cls, root: Path, model_options: Dict[str, Any]) -> "GraphPropertyTask":
        """LRGB Peptides-func: 10 binary tasks, average precision."""
        from ..data.lrgb import PeptidesFunctional, average_precision

        dataset = PeptidesFunctional(str(root))
        return cls("peptides-func", dataset, dataset.get_idx_split(), "ap", average_precision, regression=False,
                   model_options=model_options)

    def loaders(self, batch_size: int, seed: int) -> Loaders:
        from torch_geometric.loader import DataLoader

        train = self.dataset[self.split_idx["train"]]
        loaders = {"train": DataLoader(train, batch_size=batch_size, sampler=train_sampler(train, seed))}
        for split in ("val", "test"):
            loaders[split] = DataLoader(self.dataset[self.split_idx[split]], batch_size=batch_size)
        return loaders

    def build_model(self) -> nn.Module:
        from ..nn import GraphTransformer

        options = {"hidden_channels": 64, "depth": 3, "heads": 4, "attention": "exphormer", "gps": True, "dropout": 0.1,
                   **self.model_options}
        return GraphTransformer("atom", out_channels=self.dataset[0].y.size(-1), edge_dim="bond", **options)

    def forward(self, model, batch, split):
        out = model(batch.x, batch.edge_index, batch.edge_attr, batch.batch)
        return out, batch.y.float().view(out.shape)

    def loss(self, prediction, target):
        labelled = ~torch.isnan(target)
        if self.regression:
            return F.mse_loss(prediction[labelled], target[labelled])
        return F.binary_cross_entropy_with_logits(prediction[labelled], target[labelled])

    def score(self, prediction, target):
        return self.scorer(prediction, target)


class NodeClassificationTask(Task):
    """Node classification on one graph (Planetoid Cora/CiteSeer, OGB ``ogbn-*``).

    Full-graph training (one batch per epoch) when ``num_neighbors`` is None; otherwise
    mini-batches of ``batch_size`` seed nodes with their sampled ``num_neighbors`` in-neighbourhood
    (our `NeighborSampler`; training seeds are sharded across data-parallel ranks).
    ``split_idx`` maps ``train``/``val``/``test`` to node ids.
    """

    metric = "accuracy"

    def __init__(self, name: str, data, split_idx: Dict[str, Tensor], num_classes: int, model_options: Dict[str, Any], *,
                 num_neighbors: Optional[Sequence[int]] = None, scorer: Callable[[Tensor, Tensor], float] = None) -> None:
        self.name, self.data, self.split_idx, self.num_classes = name, data, split_idx, num_classes
        self.model_options, self.num_neighbors, self.scorer = model_options, num_neighbors, scorer or accuracy

    @classmethod
    def from_ogb(cls, name: str, root: Path, model_options: Dict[str, Any], num_neighbors: Optional[Sequence[int]]) -> "NodeClassificationTask":
        """An ``ogbn-*`` dataset through OGB's loader, split and `Evaluator` (graph made undirected)."""
        from ogb.nodeproppred import Evaluator, PygNodePropPredDataset
        from torch_geometric.utils import to_undirected

        folder = root / name.replace("-", "_")
        _require_offline_copy(folder, f"ogb's layout for {name}: {folder}/{{raw,split,mapping}}/... and RELEASE_v1.txt",
                              "http://snap.stanford.edu/ogb/data/nodeproppred/")
        with _no_stdin_prompt(folder), _pyg_safe_globals():
            dataset = PygNodePropPredDataset(name=name, root=str(root))
        data = dataset[0]
        data.edge_index = to_undirected(data.edge_index, num_nodes=data.num_nodes)
        split = dataset.get_idx_split()
        evaluator = Evaluator(name)

        def scorer(prediction: Tensor, target: Tensor) -> float:
            result = evaluator.eval({"y_true": target.view(-1, 1).numpy(), "y_pred": prediction.argmax(-1, keepdim=True).numpy()})
            return float(result["acc"])

        return cls(name, data, {"train": split["train"], "val": split["valid"], "test": split["test"]}, dataset.num_classes,
                   model_options, num_neighbors=num_neighbors, scorer=scorer)

    def loaders(self, batch_size: int, seed: int) -> Loaders:
        if self.num_neighbors is None:
            return {split: [self.data] for split in ("train", "val", "test")}
        from ..data.sampling import NeighborSampler

        def sampler(split: str, seeds: Tensor, shuffle: bool) -> NeighborSampler:
            return NeighborSampler(self.data.edge_index, self.data.num_nodes, list(self.num_neighbors), input_nodes=seeds,
                                   batch_size=batch_size, shuffle=shuffle, generator=torch.Generator().manual_seed(seed),
                                   x=self.data.x, y=self.data.y.view(-1))

        train_seeds = self.split_idx["train"][dist_utils.rank()::dist_utils.world_size()]
        return {"train": sampler("train", train_seeds, True), "val": sampler("val", self.split_idx["val"], False),
                "test": sampler("test", self.split_idx["test"], False)}

    def build_model(self) -> nn.Module:
        from ..nn import GraphTransformer

        options = {"hidden_channels": 64, "depth": 2, "heads": 4, "attention": "graph", "dropout": 0.5, **self.model_options}
        return GraphTransformer(self.data.num_features, out_channels=self.num_classes, task="node", **options)

    def forward(self, model, batch, split):
        if self.num_neighbors is None:
            index = self.split_idx[split].to(batch.x.device)
            return model(batch.x, batch.edge_index)[index], batch.y.view(-1)[index]
        return model(batch.x, batch.edge_index)[: batch.batch_size], batch.y[: batch.batch_size]

    def loss(self, prediction, target):
        return F.cross_entropy(prediction, target)

    def score(self, prediction, target):
        return self.scorer(prediction, target)

    def num_samples(self, batch):
        return int(batch.batch_size) if self.num_neighbors is not None else self.split_idx["train"].numel()


# ---------------------------------------------------------------------------- helpers
def _require_offline_copy(folder: Path, layout: str, url: str) -> None:
    """Fail fast, with instructions, when a dataset is absent and its server cannot be reached."""
    if folder.exists():
        return
    host = url.split("/")[2]
    try:
        socket.create_connection((host, 80 if url.startswith("http:") else 443), timeout=5).close()
    except OSError:
        raise FileNotFoundError(
            f"dataset folder {folder} does not exist and {host} cannot be reached (offline?). "
            f"Download it on a connected machine (the loader fetches it from {url}) and copy it as {layout}."
        ) from None


def _pyg_safe_globals():
    """ogb 1.3.6 reloads its processed PyG file with torch.load's default ``weights_only=True``
    (torch >= 2.6), which refuses PyG's storage classes; allow exactly those."""
    from torch_geometric.data.data import DataEdgeAttr, DataTensorAttr
    from torch_geometric.data.storage import GlobalStorage

    return torch.serialization.safe_globals([DataEdgeAttr, DataTensorAttr, GlobalStorage])


@contextlib.contextmanager
def _no_stdin_prompt(folder: Path) -> Iterator[None]:
    """OGB asks on stdin before re-downloading an outdated copy; answer with an error instead of hanging."""

    def refuse(prompt: str = "") -> str:
        raise RuntimeError(f"the dataset loader asked {prompt.strip()!r} about {folder}; replace that folder with a current copy")

    original, builtins.input = builtins.input, refuse
    try:
        yield
    finally:
        builtins.input = original
