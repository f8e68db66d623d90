"""Token sequences as graphs: batches of disjoint chains with their attention pattern built once."""
from __future__ import annotations

import copy
import numbers
from collections import OrderedDict
from typing import Any, Dict, Iterator, Optional, Sequence, Tuple

import torch
from torch import Tensor
from torch.utils.data import Dataset
from torch_geometric.data import Batch, Data

from ..patterns._utils import check_generator, check_size, seed_for_worker, worker_seed
from ..patterns.registry import RANDOM_PATTERNS, build_pattern, check_pattern

Sample = Tuple[Tensor, int]


class PackedSequences(Dataset):
    """Labelled token sequences ``(tokens [L] int64, label)`` stored packed, one byte per token.

    Args:
        tokens: ``[T]`` uint8 tokens of all sequences, concatenated.
        offsets: ``[N + 1]`` int64; sequence ``i`` is ``tokens[offsets[i]:offsets[i + 1]]``.
        labels: ``[N]`` int64.
        token_offset: added to every stored value when read (e.g. to make room for special tokens).
    """

    def __init__(self, tokens: Tensor, offsets: Tensor, labels: Tensor, *, token_offset: int = 0) -> None:
        for name, tensor in (("tokens", tokens), ("offsets", offsets), ("labels", labels)):
            if not isinstance(tensor, Tensor):
                raise TypeError(f"{name} must be a Tensor, got {type(tensor).__name__}")
        if tokens.dtype != torch.uint8 or tokens.dim() != 1:
            raise TypeError(f"tokens must be a uint8 Tensor [T], got {tokens.dtype} {list(tokens.shape)}")
        if offsets.dim() != 1 or offsets.numel() != labels.numel() + 1 or offsets.is_floating_point():
            raise ValueError(f"offsets must be an int64 Tensor [N + 1] = [{labels.numel() + 1}], got {offsets.dtype} {list(offsets.shape)}")
        if int(offsets[0]) != 0 or int(offsets[-1]) != tokens.numel() or bool((offsets[1:] < offsets[:-1]).any()):
            raise ValueError(f"offsets must rise from 0 to T = {tokens.numel()} (sequence i is tokens[offsets[i]:offsets[i + 1]])")
        if labels.dim() != 1 or labels.is_floating_point() or labels.dtype == torch.bool:
            raise TypeError(f"labels must be an integer Tensor [N], got {labels.dtype} {list(labels.shape)}")
        token_offset = check_size(token_offset, "token_offset")
        self.tokens, self.offsets, self.labels, self.token_offset = tokens, offsets, labels, token_offset

    def __len__(self) -> int:
        return self.labels.numel()

    def __getitem__(self, index: int) -> Sample:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} is out of range for {len(self)} sequences")
        index %= len(self)
        start, end = int(self.offsets[index]), int(self.offsets[index + 1])
        return self.tokens[start:end].long() + self.token_offset, int(self.labels[index])

    def __iter__(self) -> Iterator[Sample]:
        return (self[index] for index in range(len(self)))


class SequenceGraphCollator:
    """Collate ``(tokens [L], label)`` samples of any lengths into one PyG :class:`~torch_geometric.data.Batch`.

    ``tokens`` is an int64 tensor ``[L]`` or a list of token ids.

    Each sequence becomes a chain of ``L`` nodes (plus a leading ``cls_token`` when given) whose
    attention edges are the named positional pattern (`patterns.registry`), built once per
    length and cached, least recently used first out, within ``cache_bytes`` (random patterns are
    drawn afresh each batch, from ``generator``, else the global RNG). The batch holds
    ``x [T]`` token ids, ``pos [T]`` positions restarting at 0 in every sequence, ``batch [T]``,
    ``ptr [B + 1]``, ``edge_index [2, E]`` sorted by (target, source) and ``y [B]``. Memory is
    O(total tokens × pattern degree): nothing is padded to the longest sequence.

    Use it as a ``DataLoader`` ``collate_fn``.
    """

    def __init__(
        self,
        pattern: str = "longformer",
        pattern_params: Optional[Dict[str, Any]] = None,
        *,
        cls_token: Optional[int] = None,
        cache_bytes: int = 512 * 2**20,
        generator: Optional[torch.Generator] = None,
    ) -> None:
        # A private copy behind read-only properties: the cache holds patterns of this spec only.
        self._pattern = pattern
        self._pattern_params = copy.deepcopy(pattern_params if pattern_params is not None else {"window": 64, "global_indices": [0]})
        check_pattern(pattern, self._pattern_params)
        self.cls_token = None if cls_token is None else check_size(cls_token, "cls_token")
        check_generator(generator)
        self.generator = generator
        # Bounded in bytes, not entries: every length up to LRA Text's 4,096 bytes would hold about
        # 4.5 GB, while building one such pattern anew takes about 1.5 ms.
        self.cache_bytes = check_size(cache_bytes, "cache_bytes")
        self._cache: "OrderedDict[int, Tensor]" = OrderedDict()
        self._worker_seed: Optional[int] = None
        self._cached_bytes = 0

    @property
    def pattern(self) -> str:
        return self._pattern

    @property
    def pattern_params(self) -> Dict[str, Any]:
        """A copy of the pattern's parameters (changing it changes nothing: build another collator)."""
        return copy.deepcopy(self._pattern_params)

    def _draws(self) -> Optional[torch.Generator]:
        """``generator``; in a DataLoader worker, its copy reseeded once from its seed and the worker's."""
        worker = worker_seed()
        if self.generator is not None and worker is not None and worker != self._worker_seed:
            self.generator.manual_seed(seed_for_worker(self.generator.initial_seed(), worker))
            self._worker_seed = worker
        return self.generator

    def _build(self, length: int) -> Tensor:
        extra = {"generator": self._draws()} if self._pattern in RANDOM_PATTERNS else {}
        return build_pattern(self._pattern, length, **self._pattern_params, **extra)

    def pattern_for_length(self, length: int) -> Tensor:
        """``edge_index`` ``[2, E]`` int64 of one sequence of ``length`` nodes (cached unless the pattern is random)."""
        if self._pattern in RANDOM_PATTERNS:
            return self._build(length)
        compact = self._cache.get(length)
        if compact is not None:
            self._cache.move_to_end(length)
            return compact.long()
        pattern = self._build(length)
        # Held as int32 (indices < length fit), half the bytes of int64.
        compact = pattern.to(torch.int32)
        if compact.nbytes <= self.cache_bytes:
            while self._cached_bytes + compact.nbytes > self.cache_bytes:
                self._cached_bytes -= self._cache.popitem(last=False)[1].nbytes
            self._cache[length] = compact
            self._cached_bytes += compact.nbytes
        return pattern

    def __call__(self, samples: Sequence[Sample]) -> Batch:
        if not len(samples):
            raise ValueError("samples is empty: a batch needs at least one (tokens, label) sample")
        data_list = []
        for tokens, label in samples:
            if not _is_class_id(label):
                raise TypeError(f"each sample's label must be an int class id, got {label!r:.40}")
            if not isinstance(tokens, Tensor):  # a plain list of token ids (floats stay floats, and are refused)
                tokens = torch.as_tensor(tokens) if len(tokens) else torch.empty(0, dtype=torch.long)
            if tokens.dim() != 1 or tokens.dtype != torch.long:
                raise TypeError(f"tokens must be LongTensors [L], got {tokens.dtype} {list(tokens.shape)}")
            if self.cls_token is not None:
                tokens = torch.cat([tokens.new_tensor([self.cls_token]), tokens])
            length = tokens.numel()
            data_list.append(
                Data(x=tokens, pos=torch.arange(length), edge_index=self.pattern_for_length(length), y=torch.tensor([label]), num_nodes=length)
            )
        return Batch.from_data_list(data_list)


def _is_class_id(label: Any) -> bool:
    """An integer (Python, NumPy, or a one-element integer tensor), not a bool."""
    if isinstance(label, Tensor):
        return label.numel() == 1 and not label.is_floating_point() and label.dtype != torch.bool
    return isinstance(label, numbers.Integral) and not isinstance(label, bool)
