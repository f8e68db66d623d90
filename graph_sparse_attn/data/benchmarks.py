"""The benchmarks behind ``gsa train``, as plain data: one builder per dataset, and the official metrics.

Every builder has the form ``build(name, root, *, seed, **options)`` and returns one of the
dataclasses below (splits and sizes, no training logic); `graph_sparse_attn.train.table`
pairs each with a model builder and a metric. Builders that read downloaded datasets fail fast,
with instructions, when the data is absent and its server cannot be reached.
"""
from __future__ import annotations

import builtins
import contextlib
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import torch
from torch import Tensor
from torch_geometric.data import Data, InMemoryDataset
from torch_geometric.utils import to_undirected

from ..io import check_path
from ..patterns._utils import check_size

Scorer = Callable[[Tensor, Tensor], float]


# ---------------------------------------------------------------------------- plain data
@dataclass
class SequenceData:
    """Labelled token sequences: ``splits[split][i] = (tokens [L] int64, label)``."""

    splits: Dict[str, Sequence[Tuple[Tensor, int]]]
    vocab_size: int
    num_classes: int
    cls_token: int


@dataclass
class GraphPropertyData:
    """A dataset of graphs with OGB atom/bond features; ``y [1, num_targets]`` may hold NaN (unlabelled).

    With ``pe = (kind, dim)`` every graph also carries ``pe [N, dim]`` (see `positional_encoding`).
    """

    dataset: Any
    split_idx: Dict[str, Tensor]
    num_targets: int
    regression: bool
    pe: Optional[Tuple[str, int]] = None


@dataclass
class NodeData:
    """One graph ``data`` (``x [N, F]``, ``y [N]``, undirected ``edge_index``); ``split_idx`` holds node ids."""

    data: Any
    split_idx: Dict[str, Tensor]
    num_classes: int


@dataclass
class Metric:
    """An official metric: ``score(prediction, target)``, with predictions as the model outputs them."""

    name: str
    score: Scorer
    higher_is_better: bool = True


# ---------------------------------------------------------------------------- metrics
def accuracy(prediction: Tensor, target: Tensor) -> float:
    """Fraction of rows of ``prediction [B, C]`` (logits) whose argmax equals ``target [B]``."""
    if prediction.dim() != 2 or target.shape != prediction.shape[:1]:
        # A [B, 1] target would broadcast against the [B] argmax into a [B, B] comparison.
        raise ValueError(f"accuracy needs prediction [B, C] and target [B], got {list(prediction.shape)} and {list(target.shape)}")
    return float((prediction.argmax(-1) == target).float().mean())


def accuracy_metric(name: str) -> Metric:
    return Metric("accuracy", accuracy)


def ogb_graph_metric(name: str) -> Metric:
    """OGB's own `Evaluator` for the ``ogbg-*`` dataset ``name`` (ROC-AUC, AP, RMSE, ...)."""
    from ogb.graphproppred import Evaluator

    evaluator = Evaluator(name)
    metric = evaluator.eval_metric

    def score(prediction: Tensor, target: Tensor) -> float:
        return float(evaluator.eval({"y_true": target.numpy(), "y_pred": prediction.numpy()})[metric])

    return Metric(metric, score, higher_is_better=metric not in ("rmse", "mae"))


def ogb_node_metric(name: str) -> Metric:
    """OGB's own `Evaluator` for the ``ogbn-*`` dataset ``name``, fed the argmax of the logits."""
    from ogb.nodeproppred import Evaluator

    evaluator = Evaluator(name)

    def score(prediction: Tensor, target: Tensor) -> float:
        result = evaluator.eval({"y_true": target.view(-1, 1).numpy(), "y_pred": prediction.argmax(-1, keepdim=True).numpy()})
        return float(result["acc"])

    return Metric("accuracy", score)


def peptides_metric(name: str) -> Metric:
    from .lrgb import average_precision

    return Metric("ap", average_precision)


# ---------------------------------------------------------------------------- sequences
def listops(name: str, root: Path, *, seed: int, num_train: int, num_val: int, num_test: int, min_length: int,
            max_length: int) -> SequenceData:
    """Generated LRA ListOps (cached under ``root/listops``); the generator is seeded by ``seed``."""
    from . import listops as lo

    splits = {split: lo.load_listops(root, split, num_train=num_train, num_val=num_val, num_test=num_test, seed=seed,
                                     min_length=min_length, max_length=max_length)
              for split in ("train", "val", "test")}
    return SequenceData(splits, len(lo.VOCAB), lo.NUM_CLASSES, lo.CLS)


def imdb(name: str, root: Path, *, seed: int, max_length: int, imdb_path: Optional[str] = None,
         num_train: Optional[int] = None) -> SequenceData:
    """LRA Text (IMDB bytes) from ``imdb_path`` (default ``root/aclImdb``).

    LRA Text has no validation split: every tenth training review (a fixed tenth) is held out as
    ``val``; ``num_train`` keeps a subset of the rest drawn with ``seed``, for small budgets.
    """
    from . import imdb as im

    if num_train is not None:
        check_size(num_train, "num_train")
    path = check_path(imdb_path, "imdb_path") if imdb_path else check_path(root, "root") / "aclImdb"
    train = im.load_imdb(path, "train", max_length=max_length)
    holdout = set(range(0, len(train), 10))
    kept = [i for i in range(len(train)) if i not in holdout]
    if num_train is not None and num_train > len(kept):
        raise ValueError(f"num_train={num_train} exceeds the {len(kept)} training reviews left beside the validation tenth")
    if num_train is not None:
        order = torch.randperm(len(kept), generator=torch.Generator().manual_seed(seed))
        kept = sorted(kept[i] for i in order[:num_train].tolist())
    splits = {
        "train": [train[i] for i in kept],
        "val": [train[i] for i in sorted(holdout)],
        "test": im.load_imdb(path, "test", max_length=max_length),
    }
    return SequenceData(splits, im.VOCAB_SIZE, len(im.LABELS), im.CLS)


# ---------------------------------------------------------------------------- graphs
def ogb_molecule_datasets() -> Tuple[str, ...]:
    """The ``ogbg-mol*`` datasets in OGB's own table (``master.csv``): binary or regression targets on
    atom/bond features, what `ogb_graph_property` and its model take (not ``ogbg-ppa``/``ogbg-code2``)."""
    import ogb.graphproppred

    with open(Path(ogb.graphproppred.__file__).with_name("master.csv")) as handle:
        names = handle.readline().strip().split(",")[1:]
    return tuple(name for name in names if name.startswith("ogbg-mol"))


def ogb_graph_property(name: str, root: Path, *, seed: int, pe: Optional[Sequence] = None) -> GraphPropertyData:
    """An ``ogbg-*`` dataset through OGB's own loader and split (``root/ogbg_<name>``); ``pe``: see `positional_encoding`."""
    from ogb.graphproppred import PygGraphPropPredDataset

    dataset, split = _load_ogb(PygGraphPropPredDataset, name, Path(root), "graphproppred/csv_mol_download/")
    num_targets, regression, pe = int(dataset[0].y.size(-1)), dataset.task_type == "regression", _pe_spec(pe)
    return GraphPropertyData(_with_pe(dataset, pe, seed, dataset.processed_dir), split, num_targets, regression, pe)


def peptides_func(name: str, root: Path, *, seed: int, pe: Optional[Sequence] = None) -> GraphPropertyData:
    """LRGB Peptides-func (``root/peptides-functional``): 10 binary tasks; ``pe``: see `positional_encoding`."""
    from .lrgb import NUM_TASKS, PeptidesFunctional

    dataset, pe = PeptidesFunctional(str(root)), _pe_spec(pe)
    return GraphPropertyData(_with_pe(dataset, pe, seed, dataset.processed_dir), dataset.get_idx_split(), NUM_TASKS, False, pe)


# ---------------------------------------------------------------------------- positional encodings
PE_KINDS = ("rwse", "lap")


def positional_encoding(kind: str, dim: int) -> Callable[[Any], Any]:
    r"""A transform adding ``data.pe [N, dim]`` float32 to a graph.

    * ``"rwse"``: random-walk structural encoding (PyG's ``AddRandomWalkPE(dim)``),
      :math:`\mathrm{pe}_{i,k} = (D^{-1} A)^k_{ii}` for :math:`k = 1 .. dim`;
    * ``"lap"``: the eigenvectors of the ``dim`` smallest non-trivial eigenvalues of the
      symmetric normalised Laplacian (PyG's ``AddLaplacianEigenvectorPE(dim)``) of the graph
      with every edge taken both ways,
      zero-padded for graphs with fewer than ``dim + 1`` nodes; their signs are arbitrary
      (`GraphTransformer(lap_pe=True)` flips them at random in training).
    """
    from torch_geometric.transforms import AddLaplacianEigenvectorPE, AddRandomWalkPE

    _check_pe(kind, dim)

    def encode(data):
        data = data.clone()
        if kind == "rwse":
            data = AddRandomWalkPE(dim, attr_name="pe")(data)
        else:
            k = min(dim, data.num_nodes - 1)  # a graph of N nodes has N - 1 non-trivial eigenvectors
            options = {}
            if data.num_nodes >= AddLaplacianEigenvectorPE.SPARSE_THRESHOLD:
                # From this size PyG runs ARPACK, which starts from a random vector of its own RNG:
                # start it from torch's (seeded) instead, so the encoding repeats. ARPACK finds at
                # most N - 2 eigenvectors besides the trivial one.
                k = min(k, data.num_nodes - 2)
                options["v0"] = torch.rand(data.num_nodes, dtype=torch.float64).numpy()
            # Both ways: the symmetric Laplacian of a directed edge list would not be symmetric.
            both_ways = Data(edge_index=to_undirected(data.edge_index, num_nodes=data.num_nodes), num_nodes=data.num_nodes)
            data.pe = AddLaplacianEigenvectorPE(k, attr_name="pe", is_undirected=True, **options)(both_ways).pe
        data.pe = torch.nn.functional.pad(data.pe.float(), (0, dim - data.pe.size(1)))
        return data

    return encode


def _with_pe(dataset, pe: Optional[Tuple[str, int]], seed: int, cache_dir: Optional[Path] = None):
    """``dataset``, or the list of its graphs with ``data.pe`` (Laplacian signs drawn from ``seed``).

    With ``cache_dir`` (a dataset's ``processed/`` folder) the encodings are computed once and kept
    there as ``pe_{kind}{dim}_seed{seed}.pt`` (``{"pe": [sum N, dim], "num_nodes": [G]}``), like a
    ``pre_transform``; a cache that does not match the graphs (their sizes and a checksum of their
    edges) is recomputed.
    """
    if pe is None:
        return dataset
    sizes = torch.tensor([data.num_nodes for data in dataset], dtype=torch.long)
    edges = _edge_checksum(dataset)
    path = None if cache_dir is None else Path(cache_dir) / f"pe_{pe[0]}{pe[1]}_seed{seed}.pt"
    cached = torch.load(path) if path is not None and path.exists() else None
    if cached is None or not torch.equal(cached["num_nodes"], sizes) or cached["pe"].shape != (int(sizes.sum()), pe[1]) \
            or not torch.equal(cached.get("edges", torch.empty(0)), edges):
        encode = positional_encoding(*pe)
        with torch.random.fork_rng(devices=[]):  # leaves the caller's random state untouched
            torch.manual_seed(seed)
            values = torch.cat([encode(data).pe for data in dataset]) if len(dataset) else torch.empty(0, pe[1])
        cached = {"pe": values, "num_nodes": sizes, "edges": edges}
        if path is not None:
            from ..io import atomic_save

            atomic_save(cached, path)
    graphs = []
    for data, encoding in zip(dataset, cached["pe"].split(sizes.tolist())):
        data = data.clone()
        data.pe = encoding
        graphs.append(data)
    return EncodedGraphs(graphs)


def _edge_checksum(dataset) -> Tensor:
    """``[2]``: the graphs' edge count and a position-weighted sum of their edges (changes with any edge)."""
    count = total = 0
    for data in dataset:
        source, target = data.edge_index
        weights = torch.arange(1, source.numel() + 1)
        count, total = count + source.numel(), total + int((weights * (source * 1_000_003 + target)).sum())
    return torch.tensor([count, total % 2**62])


class EncodedGraphs(InMemoryDataset):
    """Graphs with their encodings, indexed like the PyG dataset they came from (an int, a slice,
    an index tensor such as ``split_idx["train"]``)."""

    def __init__(self, graphs: List[Any]) -> None:
        super().__init__(None)
        self.data, self.slices = self.collate(graphs)


def _check_pe(kind: str, dim: int) -> None:
    if kind not in PE_KINDS:
        raise ValueError(f"pe kind must be one of {PE_KINDS}, got {kind!r}")
    if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
        raise ValueError(f"pe dim must be a positive int, got {dim!r}")


def _pe_spec(pe: Optional[Sequence]) -> Optional[Tuple[str, int]]:
    if pe is None:
        return None
    if isinstance(pe, str) or len(pe) != 2:
        raise ValueError(f"pe must be (kind, dim), e.g. ('rwse', 20), got {pe!r}")
    _check_pe(*pe)
    return tuple(pe)


def planetoid(name: str, root: Path, *, seed: int) -> NodeData:
    """Planetoid Cora / CiteSeer with the public split (``root/Cora``, ``root/CiteSeer``)."""
    from torch_geometric.datasets import Planetoid

    folder_name = {"cora": "Cora", "citeseer": "CiteSeer"}[name]
    folder = Path(root) / folder_name
    _require_offline_copy(folder, f"{folder}/raw/ind.{name}.{{x,y,tx,ty,allx,ally,graph,test.index}}",
                          "https://github.com/kimiyoung/planetoid/raw/master/data")
    data = Planetoid(str(root), folder_name)[0]
    split_idx = {split: mask.nonzero().view(-1) for split, mask in (("train", data.train_mask), ("val", data.val_mask),
                                                                    ("test", data.test_mask))}
    return NodeData(data, split_idx, int(data.y.max()) + 1)


def ogb_node(name: str, root: Path, *, seed: int) -> NodeData:
    """An ``ogbn-*`` single-label dataset through OGB's loader and split, its graph made undirected."""
    from ogb.nodeproppred import PygNodePropPredDataset
    from torch_geometric.utils import to_undirected

    dataset, split = _load_ogb(PygNodePropPredDataset, name, Path(root), "nodeproppred/")
    data = dataset[0]
    data.edge_index = to_undirected(data.edge_index, num_nodes=data.num_nodes)
    data.y = data.y.view(-1)
    return NodeData(data, split, int(dataset.num_classes))


# ---------------------------------------------------------------------------- OGB plumbing
def _load_ogb(dataset_class, name: str, root: Path, url_path: str):
    """``dataset_class(name, root)`` and its split as ``{"train", "val", "test"}``."""
    folder = root / name.replace("-", "_")
    _require_offline_copy(folder, f"ogb's layout for {name}: {folder}/{{raw,split,mapping}}/... and RELEASE_v1.txt",
                          f"http://snap.stanford.edu/ogb/data/{url_path}")
    with _no_stdin_prompt(folder), _pyg_safe_globals():
        dataset = dataset_class(name=name, root=str(root))
    split = dataset.get_idx_split()
    return dataset, {"train": split["train"], "val": split["valid"], "test": split["test"]}


def _require_offline_copy(folder: Path, layout: str, url: str) -> None:
    """Fail fast, with instructions, when a dataset is absent (or its folder empty) and its server cannot be reached."""
    if folder.is_dir() and any(folder.iterdir()):
        return
    host = url.split("/")[2]
    try:
        socket.create_connection((host, 80 if url.startswith("http:") else 443), timeout=5).close()
    except OSError:
        raise FileNotFoundError(
            f"dataset folder {folder} is missing or empty and {host} cannot be reached (offline?). "
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


__all__ = [
    "SequenceData", "GraphPropertyData", "NodeData", "Metric", "positional_encoding", "accuracy", "accuracy_metric", "ogb_graph_metric",
    "ogb_node_metric", "peptides_metric", "listops", "imdb", "ogb_graph_property", "peptides_func", "planetoid", "ogb_node",
]
