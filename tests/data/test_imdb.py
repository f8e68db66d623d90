"""LRA Text (IMDB bytes): real archive counts and labels, synthetic folder vs tarball, truncation, cache, errors."""
import collections
import os
import re
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from graph_sparse_attn.data import imdb
from graph_sparse_attn.data.imdb import BYTE_OFFSET, CLS, PAD, VOCAB_SIZE, decode_bytes, encode_bytes, load_imdb

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data"
REAL_TARBALL = SHARED / "imdb" / "aclImdb_labeled.tar.gz"
URL = "https://ai.stanford.edu/~amaas/data/sentiment/aclImdb_v1.tar.gz"

# (split, folder, file name) -> content; ids chosen so that numeric and string order differ.
SYNTHETIC = {
    ("train", "pos", "10_9.txt"): "Loved it. Ten out of ten.".encode(),
    ("train", "pos", "2_8.txt"): "Très bien — 🎬 worth it".encode(),
    ("train", "neg", "0_1.txt"): b"Awful.<br /><br />" + b"x" * 50,
    ("train", "neg", "11_3.txt"): b"",
    ("test", "pos", "1_7.txt"): b"fine",
    ("test", "neg", "3_2.txt"): b"bad",
}
NOISE = {"aclImdb/README": b"readme", "aclImdb/train/urls_pos.txt": b"http://x", "aclImdb/train/unsup/5_0.txt": b"unlabelled"}


@pytest.fixture
def synthetic_folder(tmp_path):
    root = tmp_path / "extracted"
    for (split, label, name), content in SYNTHETIC.items():
        (root / "aclImdb" / split / label).mkdir(parents=True, exist_ok=True)
        (root / "aclImdb" / split / label / name).write_bytes(content)
    for name, content in NOISE.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(content)
    return root


@pytest.fixture
def synthetic_tarball(synthetic_folder, tmp_path):
    path = tmp_path / "aclImdb_v1.tar.gz"
    with tarfile.open(path, "w:gz") as archive:
        archive.add(synthetic_folder / "aclImdb", arcname="aclImdb")
    return path


def expected_reviews(split, max_length):
    """(label, id, name, bytes) of the synthetic split in the promised order: negatives, then by numeric id."""
    rows = [
        (int(label == "pos"), int(name.split("_")[0]), f"{split}/{label}/{name}", content[:max_length])
        for (row_split, label, name), content in SYNTHETIC.items()
        if row_split == split
    ]
    return sorted(rows)


def as_rows(dataset):
    return [(label, tokens.tolist()) for tokens, label in dataset]


@pytest.mark.parametrize("max_length", [4096, 10])
def test_synthetic_folder_and_tarball_agree_with_the_files(synthetic_folder, synthetic_tarball, max_length):
    for split in ("train", "test"):
        expected = expected_reviews(split, max_length)
        for source in (synthetic_folder, synthetic_folder / "aclImdb", synthetic_tarball):
            dataset = load_imdb(source, split, max_length=max_length)
            assert dataset.names == [name for _, _, name, _ in expected]
            assert len(dataset) == len(expected)
            for (tokens, label), (expected_label, _, _, content) in zip(dataset, expected):
                assert tokens.dtype == torch.long and tokens.dim() == 1
                assert label == expected_label
                assert tokens.tolist() == [byte + BYTE_OFFSET for byte in content]
                assert tokens.numel() <= max_length


def test_tarball_with_a_leading_dot_folder(synthetic_folder, tmp_path):
    path = tmp_path / "dotted.tar"
    with tarfile.open(path, "w") as archive:
        archive.add(synthetic_folder / "aclImdb", arcname="./aclImdb")
    assert as_rows(load_imdb(path, "test")) == as_rows(load_imdb(synthetic_folder, "test"))


def test_cache_is_written_once_and_reused(synthetic_tarball, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    first = load_imdb(synthetic_tarball, "train", max_length=16, cache_dir=cache)
    files = list(cache.iterdir())
    assert len(files) == 1 and re.fullmatch(r"imdb_train_max16_[0-9a-f]{12}\.pt", files[0].name)

    def fail(*args, **kwargs):
        raise AssertionError("read the source although a cache exists")

    monkeypatch.setattr(imdb, "_read_tarball", fail)
    again = load_imdb(synthetic_tarball, "train", max_length=16, cache_dir=cache)
    assert as_rows(again) == as_rows(first) and again.names == first.names
    with pytest.raises(AssertionError, match="cache"):
        load_imdb(synthetic_tarball, "train", max_length=17, cache_dir=cache)


def test_folder_cache_sees_reviews_added_or_edited(synthetic_folder, tmp_path):
    cache, reviews = tmp_path / "cache", synthetic_folder / "aclImdb" / "train"
    first = load_imdb(synthetic_folder, "train", max_length=64, cache_dir=cache)
    (reviews / "neg" / "12_1.txt").write_bytes(b"new")
    added = load_imdb(synthetic_folder, "train", max_length=64, cache_dir=cache)
    assert len(added) == len(first) + 1
    edited = reviews / "pos" / "2_8.txt"
    status = edited.stat()
    edited.write_bytes(b"rewritten")
    os.utime(edited, ns=(status.st_atime_ns, status.st_mtime_ns + 10**9))  # a later time, however coarse the clock
    assert b"rewritten" in [decode_bytes(tokens) for tokens, _ in load_imdb(synthetic_folder, "train", max_length=64, cache_dir=cache)]


def test_a_split_missing_one_label_is_refused(synthetic_folder):
    shutil.rmtree(synthetic_folder / "aclImdb" / "train" / "neg")
    with pytest.raises(FileNotFoundError, match="holds no train/neg/"):
        load_imdb(synthetic_folder, "train")


def test_missing_path_names_the_download(tmp_path):
    with pytest.raises(FileNotFoundError, match=re.escape(URL)):
        load_imdb(tmp_path / "nowhere" / "aclImdb_v1.tar.gz", "train")


def test_folder_without_reviews_names_the_download(tmp_path):
    (tmp_path / "aclImdb" / "train" / "pos").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=re.escape(URL)):
        load_imdb(tmp_path, "train")


def test_argument_errors(synthetic_folder, tmp_path):
    (tmp_path / "reviews.txt").write_text("not an archive")
    with pytest.raises(ValueError, match="neither a folder nor a readable tar archive"):
        load_imdb(tmp_path / "reviews.txt", "train")
    with pytest.raises(ValueError, match="split"):
        load_imdb(synthetic_folder, "val")
    with pytest.raises(ValueError, match="max_length"):
        load_imdb(synthetic_folder, "train", max_length=0)
    with pytest.raises(TypeError, match="max_length"):
        load_imdb(synthetic_folder, "train", max_length=4.5)
    from graph_sparse_attn.data.benchmarks import imdb as imdb_task

    for num_train, error in ((-5, ValueError), (True, TypeError), (2.5, TypeError), (10**6, ValueError)):
        with pytest.raises(error, match="num_train"):  # -5 used to drop 5 reviews silently, 10**6 to keep them all
            imdb_task("imdb", tmp_path, seed=0, max_length=16, imdb_path=synthetic_folder, num_train=num_train)
    assert len(load_imdb(synthetic_folder, "train", max_length=np.int64(8))) > 0  # any integer type, as sizes elsewhere
    with pytest.raises(TypeError, match="path must be a path"):
        load_imdb(None, "train")
    with pytest.raises(TypeError, match="root must be a path"):
        imdb_task("imdb", None, seed=0, max_length=16)


def test_byte_codec():
    data = "naïve ☃ <br />".encode() + bytes(range(256))
    tokens = encode_bytes(data)
    assert tokens.dtype == torch.long and int(tokens.min()) == BYTE_OFFSET and int(tokens.max()) == VOCAB_SIZE - 1
    assert decode_bytes(tokens) == data
    assert decode_bytes(torch.cat([torch.tensor([CLS]), tokens, torch.tensor([PAD])])) == data
    assert decode_bytes(torch.zeros(0, dtype=torch.long)) == b""
    with pytest.raises(ValueError, match="tokens must lie in"):
        decode_bytes(torch.tensor([VOCAB_SIZE]))
    with pytest.raises(TypeError, match="integer"):
        decode_bytes(torch.ones(2))
    with pytest.raises(TypeError, match="bytes"):
        encode_bytes("text")


@pytest.fixture(scope="module")
def real_train():
    if not REAL_TARBALL.is_file():
        pytest.skip(f"IMDB archive not found at {REAL_TARBALL}")
    return load_imdb(REAL_TARBALL, "train", max_length=4096)


def test_real_train_split_counts_and_labels(real_train):
    assert len(real_train) == 25_000
    assert collections.Counter(real_train.labels.tolist()) == {0: 12_500, 1: 12_500}
    for name, label in zip(real_train.names, real_train.labels.tolist()):
        split, folder, file = name.split("/")
        rating = int(file[:-4].split("_")[1])
        assert split == "train" and label == (folder == "pos")
        assert (rating >= 7) if label else (rating <= 4)  # Maas et al.: pos >= 7 stars, neg <= 4
    lengths = real_train.offsets.diff()
    assert int(lengths.max()) == 4096 and int(lengths.min()) > 0


def test_real_reviews_round_trip(real_train):
    lengths = real_train.offsets.diff()
    truncated, short = int(lengths.argmax()), int(lengths.argmin())
    with tarfile.open(REAL_TARBALL, "r:gz") as archive:
        full = {index: archive.extractfile(f"aclImdb/{real_train.names[index]}").read() for index in (truncated, short)}
    assert len(full[truncated]) >= 4096 and decode_bytes(real_train[truncated][0]) == full[truncated][:4096]
    assert len(full[short]) < 4096 and decode_bytes(real_train[short][0]) == full[short]
