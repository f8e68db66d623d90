"""LRGB Peptides-func: the real release (counts, splits, features vs smiles2graph, cache), download and
offline failures, and the AP metric against a brute-force definition and sklearn."""
import csv
import gzip
import io
import json
import math
import pickle
import shutil
import socket
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import torch

from graph_sparse_attn.data import lrgb
from graph_sparse_attn.data.lrgb import PeptidesFunctional, average_precision

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "lrgb" / "peptides-functional"
RELEASE_FILES = (Path("raw") / lrgb.RAW_FILE_NAME, Path(lrgb.SPLIT_FILE_NAME), Path(lrgb.RELEASE_MD5))
NUM_GRAPHS = 15_535
SPLIT_SIZES = {"train": 10_873, "val": 2_331, "test": 2_331}

needs_release = pytest.mark.skipif(
    not all((SHARED / file).is_file() for file in RELEASE_FILES),
    reason=f"the LRGB Peptides-func release is not at {SHARED} (raw/{lrgb.RAW_FILE_NAME} and {lrgb.SPLIT_FILE_NAME})",
)


def copy_release(root: Path, files=RELEASE_FILES) -> Path:
    """Copy the read-only shared files under ``root/peptides-functional`` as writable files."""
    for file in files:
        (root / lrgb.FOLDER_NAME / file).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(SHARED / file, root / lrgb.FOLDER_NAME / file)
    return root


def read_rows():
    with gzip.open(SHARED / "raw" / lrgb.RAW_FILE_NAME, "rt", newline="") as handle:
        return list(csv.DictReader(handle))


class StopBeforeProcessing(Exception):
    pass


def mark(graph):
    graph.marked = True
    return graph


@pytest.fixture(scope="module")
def processed(tmp_path_factory):
    """The release processed once per session: (root, dataset, seconds spent processing)."""
    if not all((SHARED / file).is_file() for file in RELEASE_FILES):
        pytest.skip(f"the LRGB Peptides-func release is not at {SHARED}")
    pytest.importorskip("rdkit", reason="processing SMILES needs rdkit (the project's `lrgb` extra)")
    root = copy_release(tmp_path_factory.mktemp("lrgb"))
    start = time.perf_counter()
    dataset = PeptidesFunctional(root)
    return root, dataset, time.perf_counter() - start


# ---------------------------------------------------------------------------- the real release
def test_counts_dtypes_and_shapes(processed):
    _, dataset, _ = processed
    storage = dataset._data
    assert len(dataset) == NUM_GRAPHS
    assert storage.x.dtype == torch.long and storage.x.shape[1] == 9
    assert storage.edge_index.dtype == torch.long and storage.edge_index.shape[0] == 2
    assert storage.edge_attr.dtype == torch.long and storage.edge_attr.shape == (storage.edge_index.shape[1], 3)
    assert storage.y.dtype == torch.float32 and storage.y.shape == (NUM_GRAPHS, lrgb.NUM_TASKS)
    assert set(storage.y.unique().tolist()) == {0.0, 1.0}
    for index in (0, 1, NUM_GRAPHS // 2, NUM_GRAPHS - 1):
        graph = dataset[index]
        assert graph.y.shape == (1, lrgb.NUM_TASKS)
        assert graph.x.shape[1] == 9 and graph.edge_attr.shape[1] == 3
        assert int(graph.edge_index.max()) < graph.num_nodes


def test_splits_are_the_disjoint_lrgb_partition(processed):
    _, dataset, _ = processed
    splits = dataset.get_idx_split()
    assert set(splits) == set(SPLIT_SIZES)
    assert {name: int(index.numel()) for name, index in splits.items()} == SPLIT_SIZES
    assert all(index.dtype == torch.long for index in splits.values())
    together = torch.cat(list(splits.values()))
    assert together.unique().numel() == together.numel() == NUM_GRAPHS
    assert int(together.min()) == 0 and int(together.max()) == NUM_GRAPHS - 1
    assert len(dataset[splits["val"]]) == SPLIT_SIZES["val"]
    with open(SHARED / lrgb.SPLIT_FILE_NAME, "rb") as handle:  # the release's own partition, index for index
        release = pickle.load(handle)
    for name, index in splits.items():
        assert torch.equal(index, torch.as_tensor(release[name]).long().flatten()), name


def test_graphs_match_a_direct_smiles2graph_of_their_row(processed):
    from ogb.utils.mol import smiles2graph

    _, dataset, _ = processed
    rows = read_rows()
    assert len(rows) == NUM_GRAPHS
    for index in (0, 4_321, NUM_GRAPHS - 1):
        expected, graph = smiles2graph(rows[index]["smiles"]), dataset[index]
        assert torch.equal(graph.x, torch.from_numpy(expected["node_feat"]))
        assert torch.equal(graph.edge_index, torch.from_numpy(expected["edge_index"]))
        assert torch.equal(graph.edge_attr, torch.from_numpy(expected["edge_feat"]))
        assert graph.y.tolist() == [json.loads(rows[index]["labels"])]


def test_second_load_reads_the_processed_cache(processed, monkeypatch):
    root, dataset, process_seconds = processed
    cache = root / lrgb.FOLDER_NAME / "processed" / "peptides_functional.pt"
    modified = cache.stat().st_mtime_ns

    def fail(self):
        raise AssertionError("process() ran although the processed file exists")

    monkeypatch.setattr(PeptidesFunctional, "process", fail)
    start = time.perf_counter()
    reloaded = PeptidesFunctional(root, transform=mark)
    seconds = time.perf_counter() - start
    print(f"processing {process_seconds:.1f} s, cached reload {seconds:.2f} s")
    assert cache.stat().st_mtime_ns == modified
    assert seconds < min(15.0, process_seconds)
    assert len(reloaded) == NUM_GRAPHS and reloaded[7].marked
    for key in ("x", "edge_index", "edge_attr", "y"):
        assert torch.equal(reloaded._data[key], dataset._data[key])


@needs_release
def test_missing_rdkit_asks_to_install_it(tmp_path, monkeypatch):
    root = copy_release(tmp_path)
    monkeypatch.setitem(sys.modules, "rdkit", None)  # makes `import rdkit` raise ImportError
    with pytest.raises(ImportError, match=r"pip install rdkit.*\[lrgb\]"):
        PeptidesFunctional(root)


# ---------------------------------------------------------------------------- download and offline
def test_offline_missing_release_fails_fast_naming_the_folder(tmp_path, monkeypatch):
    def unreachable(*args, **kwargs):
        raise OSError(101, "Network is unreachable")

    monkeypatch.setattr(socket, "create_connection", unreachable)
    start = time.perf_counter()
    with pytest.raises(FileNotFoundError) as error:
        PeptidesFunctional(tmp_path)
    assert time.perf_counter() - start < 5.0
    message = str(error.value)
    assert str(tmp_path / lrgb.FOLDER_NAME) in message
    assert f"raw/{lrgb.RAW_FILE_NAME}" in message and lrgb.SPLIT_FILE_NAME in message
    assert not (tmp_path / lrgb.FOLDER_NAME / "raw" / lrgb.RAW_FILE_NAME).exists()


@needs_release
def test_only_the_missing_split_file_is_fetched_with_a_timeout(tmp_path, monkeypatch):
    copy_release(tmp_path, files=(Path("raw") / lrgb.RAW_FILE_NAME,))
    requests = []

    def timing_out(url, timeout=None):
        requests.append((url, timeout))
        raise urllib.error.URLError(socket.timeout("timed out"))

    monkeypatch.setattr(urllib.request, "urlopen", timing_out)
    with pytest.raises(FileNotFoundError, match=lrgb.SPLIT_FILE_NAME):
        PeptidesFunctional(tmp_path)
    assert requests == [(lrgb.SPLIT_URL, lrgb.DOWNLOAD_TIMEOUT_S)]
    assert 0 < lrgb.DOWNLOAD_TIMEOUT_S <= 10


@needs_release
def test_download_writes_the_release_layout(tmp_path, monkeypatch):
    served = {lrgb.RAW_URL: SHARED / "raw" / lrgb.RAW_FILE_NAME, lrgb.SPLIT_URL: SHARED / lrgb.SPLIT_FILE_NAME}
    monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout=None: io.BytesIO(served[url].read_bytes()))

    def stop(self):
        raise StopBeforeProcessing

    monkeypatch.setattr(PeptidesFunctional, "process", stop)
    with pytest.raises(StopBeforeProcessing):
        PeptidesFunctional(tmp_path)
    folder = tmp_path / lrgb.FOLDER_NAME
    for file in RELEASE_FILES:
        assert (folder / file).read_bytes() == (SHARED / file).read_bytes()
    assert sorted(path.name for path in folder.rglob("*")) == sorted(["raw", "processed", *(file.name for file in RELEASE_FILES)])


def test_download_with_a_wrong_checksum_keeps_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout=None: io.BytesIO(b"not the release"))
    with pytest.raises(ValueError, match=lrgb.RELEASE_MD5):
        PeptidesFunctional(tmp_path)
    assert list((tmp_path / lrgb.FOLDER_NAME / "raw").iterdir()) == []


# ---------------------------------------------------------------------------- average precision
def brute_force_average_precision(y_pred, y_true):
    """AP = sum_k (R_k - R_{k-1}) P_k over distinct thresholds, per task, by plain loops; mean over tasks."""
    per_task = []
    for task in range(len(y_true[0])):
        pairs = [(row_pred[task], row_true[task]) for row_pred, row_true in zip(y_pred, y_true)
                 if not math.isnan(row_true[task])]
        positives = sum(1 for _, label in pairs if label == 1)
        if positives == 0 or positives == len(pairs):
            continue
        total, previous_recall = 0.0, 0.0
        for threshold in sorted({score for score, _ in pairs}, reverse=True):
            true_positives = sum(1 for score, label in pairs if score >= threshold and label == 1)
            predicted = sum(1 for score, _ in pairs if score >= threshold)
            recall = true_positives / positives
            total += (recall - previous_recall) * true_positives / predicted
            previous_recall = recall
        per_task.append(total)
    return sum(per_task) / len(per_task)


def random_problem(seed, num_samples=30, num_tasks=5):
    generator = torch.Generator().manual_seed(seed)
    y_pred = torch.randint(0, 6, (num_samples, num_tasks), generator=generator).float()  # many ties
    y_pred[:, 1] = torch.randn(num_samples, generator=generator)
    y_true = torch.randint(0, 2, (num_samples, num_tasks), generator=generator).float()
    y_true[torch.rand(num_samples, num_tasks, generator=generator) < 0.25] = float("nan")
    y_true[:, 2] = torch.where(torch.isnan(y_true[:, 2]), y_true[:, 2], torch.ones(num_samples))  # one class only
    y_true[:, 3] = float("nan")  # unlabelled task
    return y_pred, y_true


@pytest.mark.parametrize("seed", range(8))
def test_average_precision_matches_brute_force(seed):
    y_pred, y_true = random_problem(seed)
    expected = brute_force_average_precision(y_pred.tolist(), y_true.tolist())
    assert average_precision(y_pred, y_true) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("seed", range(4))
def test_average_precision_matches_sklearn_per_task(seed):
    metrics = pytest.importorskip("sklearn.metrics")
    y_pred, y_true = random_problem(seed, num_samples=200, num_tasks=6)
    scores = []
    for task in range(y_true.shape[1]):
        labelled = ~torch.isnan(y_true[:, task])
        labels = y_true[labelled, task]
        if (labels == 1).any() and (labels == 0).any():
            scores.append(metrics.average_precision_score(labels.numpy(), y_pred[labelled, task].numpy()))
    assert len(scores) == 4
    assert average_precision(y_pred, y_true) == pytest.approx(sum(scores) / len(scores), abs=1e-12)


def test_average_precision_by_hand_and_invariances():
    # Ranked labels 1, 0, 1, 0: AP = 1/2 * 1 + 1/2 * 2/3.
    y_pred = torch.tensor([[4.0], [3.0], [2.0], [1.0]])
    y_true = torch.tensor([[1.0], [0.0], [1.0], [0.0]])
    assert average_precision(y_pred, y_true) == pytest.approx(0.5 + 1 / 3)
    assert average_precision(y_pred.sigmoid(), y_true.long()) == pytest.approx(0.5 + 1 / 3)
    y_pred, y_true = random_problem(11)
    permutation = torch.randperm(y_pred.shape[0], generator=torch.Generator().manual_seed(0))
    assert average_precision(y_pred[permutation], y_true[permutation]) == pytest.approx(average_precision(y_pred, y_true))


def test_average_precision_rejects_bad_input():
    y_pred, y_true = random_problem(0)
    with pytest.raises(ValueError, match="shape"):
        average_precision(y_pred, y_true[:, :2])
    with pytest.raises(ValueError, match="shape"):
        average_precision(y_pred[:, 0], y_true[:, 0])
    with pytest.raises(TypeError, match="y_pred"):
        average_precision(y_pred.long(), y_true)
    with pytest.raises(ValueError, match="y_true"):
        average_precision(y_pred, y_true * 2)
    with pytest.raises(ValueError, match="both"):
        average_precision(y_pred[:, 2:4], y_true[:, 2:4])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_average_precision_on_cuda():
    y_pred, y_true = random_problem(3)
    assert average_precision(y_pred.cuda(), y_true.cuda()) == pytest.approx(average_precision(y_pred, y_true))


# ---------------------------------------------------------------------------- malformed releases
def tiny_release(root: Path, rows, splits=None) -> Path:
    """A release of ``rows`` ``(smiles, labels)`` with a split pickle (``splits``: raw bytes or a dict)."""
    folder = root / lrgb.FOLDER_NAME
    (folder / "raw").mkdir(parents=True)
    with gzip.open(folder / "raw" / lrgb.RAW_FILE_NAME, "wt", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["smiles", "labels"])
        writer.writerows(rows)
    splits = {"train": [0], "val": [1], "test": [2]} if splits is None else splits
    (folder / lrgb.SPLIT_FILE_NAME).write_bytes(splits if isinstance(splits, bytes) else pickle.dumps(splits))
    return root


LABELS = json.dumps([0, 1] * 5)


def test_a_tiny_release_round_trips_through_the_processed_file(tmp_path):
    pytest.importorskip("rdkit", reason="processing SMILES needs rdkit (the project's `lrgb` extra)")
    root = tiny_release(tmp_path, [("CCO", LABELS), ("CC(=O)N", LABELS), ("c1ccccc1", LABELS)])
    first = PeptidesFunctional(root)
    again = PeptidesFunctional(root)  # read back from the processed file, not processed again
    assert len(again) == 3 and torch.equal(again[2].x, first[2].x) and again[0].y.shape == (1, lrgb.NUM_TASKS)
    assert {k: v.tolist() for k, v in again.get_idx_split().items()} == {"train": [0], "val": [1], "test": [2]}
    assert not list((root / lrgb.FOLDER_NAME / "processed").glob(".*.tmp"))  # the atomic write left no temporary


@pytest.mark.parametrize("rows,message", [
    ([("CCO", LABELS), ("not-a-smiles((", LABELS), ("CC", LABELS)], "line 3: cannot read"),
    ([("CCO", LABELS), ("CC", "[0, 1"), ("CC", LABELS)], "line 3: cannot read"),
    ([("CCO", LABELS), ("CC", "[0, 1]"), ("CC", LABELS)], "line 3: labels must hold 10 entries"),
])
def test_unreadable_rows_are_named_by_line(tmp_path, rows, message):
    pytest.importorskip("rdkit", reason="processing SMILES needs rdkit (the project's `lrgb` extra)")
    with pytest.raises(ValueError, match=message):
        PeptidesFunctional(tiny_release(tmp_path, rows))


@pytest.mark.parametrize("splits,message", [
    (pickle.dumps({"train": [0], "val": [1], "test": [2]})[:-5], "not a readable split pickle"),
    ({"train": [0], "val": [1], "test": [3]}, r"outside \[0, 3\)"),  # a csv shorter than the split: a partial download
    ({"train": [0, 1], "val": [1], "test": [2]}, "must be disjoint"),
])
def test_bad_split_files_are_refused_naming_the_file(tmp_path, splits, message):
    pytest.importorskip("rdkit", reason="processing SMILES needs rdkit (the project's `lrgb` extra)")
    dataset = PeptidesFunctional(tiny_release(tmp_path, [("CCO", LABELS), ("CC", LABELS), ("CCC", LABELS)], splits))
    with pytest.raises(ValueError, match=message) as error:
        dataset.get_idx_split()
    assert lrgb.SPLIT_FILE_NAME in str(error.value)
