"""LRGB Peptides-func (Dwivedi et al. 2022): 15,535 peptides as molecular graphs, 10 binary function labels.

The on-disk layout is the original LRGB release (as read by LRGB's and GraphGPS's
``PeptidesFunctionalDataset``), not PyG's ``LRGBDataset`` layout::

    <root>/peptides-functional/
        raw/peptide_multi_class_dataset.csv.gz       columns: (row index), smiles, peptide_seq, labels, identifier
        splits_random_stratified_peptide.pickle      {"train", "val", "test"} -> numpy index arrays
        701eb743e899f4d793f0e13c8fa5a1b4             empty marker named after the csv's MD5 (the release)
        processed/                                   written by this loader

Each SMILES becomes a graph with OGB's featurisation (``ogb.utils.mol.smiles2graph``, needs rdkit):
``x`` ``[N, 9]`` int64 atom features, ``edge_index`` ``[2, E]`` int64 (both directions of every bond),
``edge_attr`` ``[E, 3]`` int64 bond features and ``y`` ``[1, 10]`` float32 labels, in the order
antifungal, cell_cell_communication, anticancer, drug_delivery_vehicle, antimicrobial, antiviral,
antihypertensive, antibacterial, antiparasitic, toxic. The metric is `average_precision`.
"""
from __future__ import annotations

import csv
import gzip
import hashlib
import json
import os
import pickle
import urllib.request
from pathlib import Path
from typing import Callable, Dict, List, Optional, Union

import torch
from torch import Tensor
from torch_geometric.data import Data, InMemoryDataset
from tqdm import tqdm

from ..io import atomic_save, atomic_write

NUM_TASKS = 10
FOLDER_NAME = "peptides-functional"
RAW_FILE_NAME = "peptide_multi_class_dataset.csv.gz"
SPLIT_FILE_NAME = "splits_random_stratified_peptide.pickle"
RELEASE_MD5 = "701eb743e899f4d793f0e13c8fa5a1b4"
SPLIT_MD5 = "5a0114bdadc80b94fc7ae974f13ef061"
RAW_URL = "https://www.dropbox.com/s/ol2v01usvaxbsr8/peptide_multi_class_dataset.csv.gz?dl=1"
SPLIT_URL = "https://www.dropbox.com/s/j4zcnx2eipuo0xz/splits_random_stratified_peptide.pickle?dl=1"
DOWNLOAD_TIMEOUT_S = 10.0
SPLITS = ("train", "val", "test")

_LAYOUT = (f"{FOLDER_NAME}/raw/{RAW_FILE_NAME}, {FOLDER_NAME}/{SPLIT_FILE_NAME} "
           f"(and the empty release marker {FOLDER_NAME}/{RELEASE_MD5})")


class PeptidesFunctional(InMemoryDataset):
    r"""Peptides-func of the Long Range Graph Benchmark as a PyG `InMemoryDataset` (15,535 graphs).

    Graph ``i`` is row ``i`` of the csv: ``x`` ``[N_i, 9]`` int64, ``edge_index`` ``[2, E_i]`` int64,
    ``edge_attr`` ``[E_i, 3]`` int64, ``y`` ``[1, 10]`` float32 (0/1). Splits are OGB-style:
    ``dataset[dataset.get_idx_split()["train"]]``.

    Missing files are downloaded from LRGB's official URLs (MD5-checked, each connection attempt
    times out after ``DOWNLOAD_TIMEOUT_S`` seconds); when that fails the constructor raises
    `FileNotFoundError` naming the folder and the layout to copy there. SMILES are converted once
    and the result is kept in ``<root>/peptides-functional/processed/``.

    Args:
        root: folder holding ``peptides-functional/``.
        transform: applied to every graph on access.
        pre_transform: applied to every graph once, before saving the processed file.
    """

    def __init__(self, root: Union[str, Path], *, transform: Optional[Callable[[Data], Data]] = None,
                 pre_transform: Optional[Callable[[Data], Data]] = None) -> None:
        if not isinstance(root, (str, os.PathLike)):
            raise TypeError(f"root must be a str or path, got {type(root).__name__}")
        self.folder = Path(root) / FOLDER_NAME
        super().__init__(str(self.folder), transform, pre_transform)
        self.load(self.processed_paths[0])

    @property
    def raw_file_names(self) -> List[str]:
        return [RAW_FILE_NAME]

    @property
    def raw_paths(self) -> List[str]:
        """The csv in ``raw/`` and, as in the LRGB release, the split pickle beside ``raw/``."""
        return [str(self.folder / "raw" / RAW_FILE_NAME), str(self.split_path)]

    @property
    def processed_file_names(self) -> List[str]:
        # Not LRGB's "geometric_data_processed.pt": that file holds the pre-2.4 (data, slices) format.
        return ["peptides_functional.pt"]

    @property
    def split_path(self) -> Path:
        return self.folder / SPLIT_FILE_NAME

    def download(self) -> None:
        """Fetch whichever of the csv and the split pickle is missing, check its MD5, mark the release."""
        for url, path, md5 in ((RAW_URL, self.folder / "raw" / RAW_FILE_NAME, RELEASE_MD5),
                               (SPLIT_URL, self.split_path, SPLIT_MD5)):
            if not path.is_file():
                _download(url, path, md5, self.folder)
        (self.folder / RELEASE_MD5).touch()

    def process(self) -> None:
        smiles2graph = _smiles2graph()
        with gzip.open(self.raw_paths[0], "rt", newline="") as handle:
            reader = csv.DictReader(handle)
            if not {"smiles", "labels"} <= set(reader.fieldnames or ()):
                raise ValueError(f"{self.raw_paths[0]} must have the columns smiles and labels, got {reader.fieldnames}")
            rows = list(reader)
        data_list = []
        for line, row in enumerate(tqdm(rows, desc="Peptides-func: SMILES -> graphs", unit="mol"), start=2):
            try:
                graph = smiles2graph(row["smiles"])  # RDKit gives None for a SMILES it cannot parse, OGB then fails
                labels = json.loads(row["labels"])
            except (AttributeError, ValueError, TypeError) as error:
                raise ValueError(f"{RAW_FILE_NAME} line {line}: cannot read {row!r}: {error}") from None
            if not isinstance(labels, list) or len(labels) != NUM_TASKS:
                raise ValueError(f"{RAW_FILE_NAME} line {line}: labels must hold {NUM_TASKS} entries, got {row['labels']!r}")
            data = Data(x=torch.from_numpy(graph["node_feat"]).long(),
                        edge_index=torch.from_numpy(graph["edge_index"]).long(),
                        edge_attr=torch.from_numpy(graph["edge_feat"]).long(),
                        y=torch.tensor([labels], dtype=torch.float32))
            data_list.append(data if self.pre_transform is None else self.pre_transform(data))
        # InMemoryDataset.save's own format, written atomically: a run killed while writing must not
        # leave a truncated file that every later run would load (and fail on).
        data, slices = self.collate(data_list)
        atomic_save((data.to_dict(), slices, data.__class__), self.processed_paths[0])

    def get_idx_split(self) -> Dict[str, Tensor]:
        """LRGB's stratified random split: ``{"train", "val", "test"}`` -> int64 graph indices
        (10,873 / 2,331 / 2,331, disjoint)."""
        try:
            with open(self.split_path, "rb") as handle:
                splits = pickle.load(handle)
        except (pickle.UnpicklingError, EOFError, ValueError) as error:
            raise ValueError(f"{self.split_path} is not a readable split pickle ({error}); delete it to download it again") from None
        if not isinstance(splits, dict) or set(splits) != set(SPLITS):
            raise ValueError(f"{self.split_path} must hold a dict with keys {SPLITS}, got {type(splits).__name__}")
        splits = {name: torch.as_tensor(splits[name], dtype=torch.long).flatten() for name in SPLITS}
        every = torch.cat(list(splits.values()))
        if every.numel() and (int(every.min()) < 0 or int(every.max()) >= len(self)):
            raise ValueError(f"{self.split_path} indexes graphs outside [0, {len(self)}): it does not match {RAW_FILE_NAME}")
        if every.unique().numel() != every.numel():
            raise ValueError(f"{self.split_path}: the splits {SPLITS} must be disjoint")
        return splits


def average_precision(y_pred: Tensor, y_true: Tensor) -> float:
    r"""LRGB's (and OGB's) multi-task average precision, the Peptides-func metric.

    For every task ``t`` whose labelled entries (``y_true[:, t]`` not NaN) hold both classes,

    .. math::
        \mathrm{AP}_t = \sum_k (R_k - R_{k-1}) P_k,

    where :math:`P_k, R_k` are precision and recall when predicting positive every score
    ``>= s_k``, over the distinct scores :math:`s_1 > s_2 > \dots` (``R_0 = 0``; tied scores form one
    threshold). This is ``sklearn.metrics.average_precision_score`` per task; the result is the mean of
    ``AP_t`` over the qualifying tasks.

    Args:
        y_pred: ``[N, T]`` scores or logits (any monotone transform gives the same value).
        y_true: ``[N, T]`` labels in {0, 1}; NaN marks an unlabelled entry.

    Returns:
        The mean AP over tasks with both classes labelled.
    """
    if not isinstance(y_pred, Tensor) or not isinstance(y_true, Tensor):
        raise TypeError(f"y_pred and y_true must be Tensors, got {type(y_pred).__name__} and {type(y_true).__name__}")
    if y_pred.dim() != 2 or y_pred.shape != y_true.shape:
        raise ValueError(f"y_pred and y_true must both have shape [N, T], got {list(y_pred.shape)} and {list(y_true.shape)}")
    if not y_pred.dtype.is_floating_point:
        raise TypeError(f"y_pred must be a floating-point Tensor, got {y_pred.dtype}")
    y_true = y_true.to(device=y_pred.device, dtype=torch.float64)
    labelled = ~torch.isnan(y_true)
    if bool(((y_true[labelled] != 0) & (y_true[labelled] != 1)).any()):
        raise ValueError("y_true must hold only 0, 1 or NaN")
    if bool(torch.isnan(y_pred[labelled]).any()):
        raise ValueError("y_pred must not be NaN where y_true is labelled")

    # Sorting every column at once; unlabelled entries stay in but count as neither positive nor negative,
    # so they only add thresholds where recall does not move, which contribute nothing.
    scores, order = y_pred.double().sort(dim=0, descending=True)
    true_sorted = y_true.gather(0, order)
    true_positives = (true_sorted == 1).double().cumsum(0)
    false_positives = (true_sorted == 0).double().cumsum(0)
    threshold_end = torch.ones_like(scores, dtype=torch.bool)
    threshold_end[:-1] = scores[1:] != scores[:-1]
    positives_at_previous_end = (true_positives * threshold_end).cummax(0).values
    positives_at_previous_end = torch.cat([positives_at_previous_end.new_zeros(1, scores.shape[1]),
                                           positives_at_previous_end[:-1]])
    gained_positives = (true_positives - positives_at_previous_end) * threshold_end
    precision = true_positives / (true_positives + false_positives).clamp(min=1)
    num_positives = true_positives[-1]
    per_task = (gained_positives * precision).sum(0) / num_positives.clamp(min=1)

    scored = (num_positives > 0) & (false_positives[-1] > 0)
    if not bool(scored.any()):
        raise ValueError("y_true must contain a task with both a labelled positive and a labelled negative")
    return float(per_task[scored].mean())


def _smiles2graph() -> Callable[[str], dict]:
    try:
        import rdkit  # noqa: F401  (first, so rdkit's absence is reported even where ogb.utils.mol is already loaded)
        from ogb.utils.mol import smiles2graph
    except ImportError as error:
        raise ImportError(
            "Processing Peptides-func needs rdkit to turn SMILES into graphs: `pip install rdkit` "
            "(or install this project's extra: `pip install 'graph-sparse-attn[lrgb]'`)."
        ) from error
    return smiles2graph


def _download(url: str, path: Path, md5: str, folder: Path) -> None:
    """Stream ``url`` into ``path`` atomically; a timeout or network error becomes a FileNotFoundError."""

    def write(handle) -> None:
        digest = hashlib.md5()
        with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response:
            while chunk := response.read(1 << 20):
                handle.write(chunk)
                digest.update(chunk)
        if digest.hexdigest() != md5:
            raise ValueError(f"{url} returned a file whose MD5 is {digest.hexdigest()}, expected {md5} (a changed release?)")

    try:
        atomic_write(path, write)
    except OSError as error:  # URLError, socket timeouts and refused connections are all OSErrors
        raise FileNotFoundError(
            f"Peptides-func is incomplete in {folder}: {path.name} is missing and downloading it from {url} failed "
            f"({error}). Copy LRGB's files there in this layout: {_LAYOUT}."
        ) from None
