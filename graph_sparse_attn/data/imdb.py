"""LRA Text: IMDB review sentiment (Maas et al. 2011) read byte by byte, as in the Long Range Arena.

Every review is its raw UTF-8 bytes, truncated to ``max_length``; byte ``b`` becomes token
``b + BYTE_OFFSET`` so that ``PAD = 0`` and ``CLS = 1`` stay free (``VOCAB_SIZE = 258``). No
``<cls>`` is stored: the collator prepends it, so a batched sequence has at most
``max_length + 1`` tokens. Labels: ``neg`` → 0, ``pos`` → 1.

The source is the official archive ``aclImdb_v1.tar.gz`` (read in place, one pass over its
members, nothing extracted) or the folder it extracts to; either holds
``aclImdb/{train,test}/{neg,pos}/<id>_<rating>.txt``.
"""
from __future__ import annotations

import hashlib
import re
import tarfile
from pathlib import Path
from typing import List, Optional, Tuple, Union

import torch
from torch import Tensor

from ..io import atomic_save, check_path
from ..patterns._utils import check_size
from .sequence import PackedSequences

PAD = 0
CLS = 1
BYTE_OFFSET = 2
VOCAB_SIZE = 256 + BYTE_OFFSET
SPLITS: Tuple[str, ...] = ("train", "test")
LABELS = {"neg": 0, "pos": 1}
DOWNLOAD_URL = "https://ai.stanford.edu/~amaas/data/sentiment/aclImdb_v1.tar.gz"

_REVIEW_FILE = re.compile(r"(\d+)_(\d+)\.txt")
_REVIEW_MEMBER = re.compile(r"(?:^|/)(train|test)/(neg|pos)/((\d+)_\d+\.txt)$")

# (label, review id, "<split>/<neg|pos>/<id>_<rating>.txt", leading bytes)
_Review = Tuple[int, int, str, bytes]


def encode_bytes(data: bytes) -> Tensor:
    """Tokens ``[len(data)]`` (int64) of raw bytes: ``byte + BYTE_OFFSET``."""
    if not isinstance(data, (bytes, bytearray)):
        raise TypeError(f"data must be bytes, got {type(data).__name__}")
    return torch.tensor(list(data), dtype=torch.long) + BYTE_OFFSET


def decode_bytes(tokens: Tensor) -> bytes:
    """The bytes of tokens ``[L]``; ``PAD`` and ``CLS`` are skipped."""
    if not isinstance(tokens, Tensor) or tokens.dtype.is_floating_point or tokens.dtype.is_complex or tokens.dtype == torch.bool:
        raise TypeError(f"tokens must be an integer Tensor, got {tokens.dtype if isinstance(tokens, Tensor) else type(tokens).__name__}")
    if tokens.dim() != 1:
        raise ValueError(f"tokens must have shape [L], got {list(tokens.shape)}")
    if tokens.numel() and not (0 <= int(tokens.min()) and int(tokens.max()) < VOCAB_SIZE):
        raise ValueError(f"tokens must lie in [0, {VOCAB_SIZE}), got values in [{int(tokens.min())}, {int(tokens.max())}]")
    kept = tokens[tokens >= BYTE_OFFSET] - BYTE_OFFSET
    return bytes(kept.tolist())


class IMDBBytesDataset(PackedSequences):
    """Reviews as ``(tokens [L] int64, label)`` with ``L <= max_length``: token = byte + ``BYTE_OFFSET``.

    Args:
        data: ``[T]`` uint8 raw bytes of all reviews, concatenated.
        offsets: ``[N + 1]`` int64; review ``i`` is ``data[offsets[i]:offsets[i + 1]]``.
        labels: ``[N]`` int64, 0 = negative, 1 = positive.
        names: ``N`` source files, ``"<split>/<neg|pos>/<id>_<rating>.txt"``.
    """

    def __init__(self, data: Tensor, offsets: Tensor, labels: Tensor, names: List[str]) -> None:
        super().__init__(data, offsets, labels, token_offset=BYTE_OFFSET)
        if len(names) != labels.numel():
            raise ValueError(f"names must hold one entry per label ({labels.numel()}), got {len(names)}")
        self.names = names

    @property
    def data(self) -> Tensor:
        """``[T]`` uint8 raw bytes of all reviews."""
        return self.tokens


def _missing_data_error(path: Path, reason: str) -> FileNotFoundError:
    return FileNotFoundError(
        f"IMDB reviews {reason} at {path}. Download the official archive {DOWNLOAD_URL} and pass the path of the "
        f".tar.gz (read directly) or of the folder it extracts to (aclImdb/, holding {{train,test}}/{{neg,pos}}/<id>_<rating>.txt)."
    )


def _read_folder(path: Path, split: str, max_length: int) -> List[_Review]:
    base = _folder_base(path)
    reviews = []
    for label_name, label in LABELS.items():
        folder = base / split / label_name
        if not folder.is_dir():
            continue
        for file in folder.iterdir():
            match = _REVIEW_FILE.fullmatch(file.name)
            if match:
                with open(file, "rb") as handle:
                    reviews.append((label, int(match[1]), f"{split}/{label_name}/{file.name}", handle.read(max_length)))
    return reviews


def _read_tarball(path: Path, split: str, max_length: int) -> List[_Review]:
    reviews = []
    with tarfile.open(path, "r|*") as archive:  # a stream: one sequential pass over the members
        for member in archive:
            match = _REVIEW_MEMBER.search(member.name)
            if member.isfile() and match and match[1] == split:
                handle = archive.extractfile(member)
                reviews.append((LABELS[match[2]], int(match[4]), f"{split}/{match[2]}/{match[3]}", handle.read(max_length)))
    return reviews


def _pack(reviews: List[_Review]) -> IMDBBytesDataset:
    reviews.sort(key=lambda review: review[:2])
    lengths = torch.tensor([len(review[3]) for review in reviews], dtype=torch.long)
    offsets = torch.cat([lengths.new_zeros(1), lengths.cumsum(0)])
    joined = bytearray(b"".join(review[3] for review in reviews))
    data = torch.frombuffer(joined, dtype=torch.uint8) if joined else torch.zeros(0, dtype=torch.uint8)
    labels = torch.tensor([review[0] for review in reviews], dtype=torch.long)
    return IMDBBytesDataset(data, offsets, labels, [review[2] for review in reviews])


def _cache_file(cache_dir: Path, path: Path, split: str, max_length: int) -> Path:
    """The cache of ``split`` read from ``path``, keyed by the source's path, size and modification time;
    for a folder, by every review file's (a folder's own time misses a file edited in place)."""
    files = [path] if path.is_file() else sorted(file for label in LABELS for file in (_folder_base(path) / split / label).glob("*.txt"))
    source = hashlib.sha1(str(path.resolve()).encode())
    for file in files:
        status = file.stat()
        source.update(f"{file.name}:{status.st_size}:{status.st_mtime_ns};".encode())
    return cache_dir / f"imdb_{split}_max{max_length}_{source.hexdigest()[:12]}.pt"


def _folder_base(path: Path) -> Path:
    """The ``aclImdb/`` folder: ``path`` itself or its ``aclImdb/`` subfolder."""
    return path / "aclImdb" if (path / "aclImdb").is_dir() else path


def load_imdb(
    path: Union[str, Path],
    split: str,
    *,
    max_length: int = 4096,
    cache_dir: Optional[Union[str, Path]] = None,
) -> IMDBBytesDataset:
    """The ``"train"`` or ``"test"`` split of IMDB (12,500 negative then 12,500 positive reviews).

    Args:
        path: ``aclImdb_v1.tar.gz`` (any tar compression), the ``aclImdb/`` folder, or a folder holding ``aclImdb/``.
        split: ``"train"`` or ``"test"``.
        max_length: bytes kept from the start of each review (LRA: 4096; 4k in the paper).
        cache_dir: where to keep the packed split (``imdb_<split>_max<max_length>_<source>.pt``, keyed by
            the source's path, size and modification time) so later calls skip reading the source.

    Returns:
        Reviews ordered by (label, review id).
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    max_length = check_size(max_length, "max_length", minimum=1)
    path = check_path(path, "path")
    if not path.exists():
        raise _missing_data_error(path, "not found")
    cache_file = None if cache_dir is None else _cache_file(Path(cache_dir), path, split, max_length)
    if cache_file is not None and cache_file.is_file():
        return IMDBBytesDataset(**torch.load(cache_file, weights_only=True))
    try:
        reviews = _read_folder(path, split, max_length) if path.is_dir() else _read_tarball(path, split, max_length)
    except tarfile.ReadError as error:
        raise ValueError(f"path {path} is neither a folder nor a readable tar archive ({error})") from None
    if not reviews:
        raise _missing_data_error(path, f"of the {split!r} split not found (no {split}/{{neg,pos}}/<id>_<rating>.txt)")
    missing = [name for name, label in LABELS.items() if all(review[0] != label for review in reviews)]
    if missing:  # a partial copy or extraction: a one-class split would train and score silently wrong
        raise _missing_data_error(path, f"holds no {split}/{missing[0]}/<id>_<rating>.txt reviews (both labels are needed)")
    dataset = _pack(reviews)
    if cache_file is not None:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        atomic_save({"data": dataset.data, "offsets": dataset.offsets, "labels": dataset.labels, "names": dataset.names}, cache_file)
    return dataset
