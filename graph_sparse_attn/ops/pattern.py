"""`CSRPattern`: an attention pattern sorted once into CSR (by target) and CSC (by source)."""
from __future__ import annotations

import dataclasses
import operator
import weakref
from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional, Tuple, TypeVar, Union

import torch
from torch import Tensor
from torch_geometric import EdgeIndex

NumNodes = Union[int, Tuple[int, int], None]
_TENSOR_FIELDS = ("rowptr", "col", "row", "perm", "colptr", "row_t", "perm_t")
T = TypeVar("T")
# id(rowptr) -> (weak reference to rowptr, id(col), {name: layout}); an entry leaves with its rowptr.
_DERIVED: Dict[int, Tuple[weakref.ref, int, Dict[str, object]]] = {}


def _index_dtype(num_edges: int, num_src: int, num_dst: int) -> torch.dtype:
    # int32 halves the index memory and is accepted by every kernel we call.
    return torch.int32 if max(num_edges, num_src, num_dst) < 2**31 - 1 else torch.int64


def _sorted_to_ptr(sorted_index: Tensor, num_nodes: int, dtype: torch.dtype) -> Tensor:
    """``[num_nodes + 1]`` run offsets of a sorted index (``ptr[v]`` = number of entries ``< v``).

    A binary search per node: ``O(N log E)``, where counting the entries would read all ``E``.
    """
    boundaries = torch.arange(num_nodes + 1, dtype=sorted_index.dtype, device=sorted_index.device)
    return torch.searchsorted(sorted_index, boundaries, out_int32=dtype == torch.int32)


def pair_keys(major: Tensor, minor: Tensor, num_major: int, num_minor: int) -> Tensor:
    """``major * num_minor + minor``: one int64 key per pair, in (major, minor) order.

    Refuses sizes with more pairs than int64 keys can number (``num_major * num_minor > 2**63``),
    whose keys would wrap around and silently reorder or merge pairs."""
    width = max(num_minor, 1)
    if max(num_major, 1) * width > 2**63:
        raise ValueError(f"a pattern of {num_major} x {num_minor} nodes has more node pairs than int64 can number (2**63)")
    return major.long() * width + minor.long()


def check_edge_index(edge_index: Tensor, num_src: int, num_dst: int, name: str = "edge_index") -> Tensor:
    """Validate an ``edge_index`` ``[2, E]`` against node counts and return it as int64.

    Raises ``TypeError`` for a non-integer tensor and ``ValueError`` for a wrong shape or an
    index outside ``[0, num_src)`` (row 0) / ``[0, num_dst)`` (row 1). One O(E) pass.
    """
    if not isinstance(edge_index, Tensor):
        raise TypeError(f"{name} must be a LongTensor [2, E], got {type(edge_index).__name__}")
    if isinstance(edge_index, EdgeIndex):  # its own arithmetic breaks the kernels' index maths: a plain tensor
        edge_index = edge_index.as_tensor()
    if edge_index.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"{name} must have an integer dtype (int64 or int32), got {edge_index.dtype}")
    if edge_index.dim() != 2 or edge_index.size(0) != 2:
        raise ValueError(f"{name} must have shape [2, E], got {list(edge_index.shape)}")
    if edge_index.numel() > 0:
        lo, hi = (t.tolist() for t in torch.aminmax(edge_index, dim=1))
        if min(lo) < 0:
            raise ValueError(f"{name} contains negative indices (min {min(lo)})")
        if hi[0] >= num_src:
            raise ValueError(f"{name}[0] (sources) has index {hi[0]} but there are only {num_src} source nodes")
        if hi[1] >= num_dst:
            raise ValueError(f"{name}[1] (targets) has index {hi[1]} but there are only {num_dst} target nodes")
    return edge_index.long()


def _node_counts(num_nodes: Any) -> Tuple[int, int]:
    """``(N_src, N_dst)`` of ``num_nodes``: an integer ``N`` (a 0-d tensor or NumPy integer too) or a pair."""
    if isinstance(num_nodes, (tuple, list)) and len(num_nodes) == 2:
        try:
            return operator.index(num_nodes[0]), operator.index(num_nodes[1])
        except TypeError:
            pass
    elif not isinstance(num_nodes, bool):
        try:
            count = operator.index(num_nodes)
            return count, count
        except TypeError:
            pass
    raise TypeError(f"num_nodes must be an int N or a pair (N_src, N_dst) of ints, got {num_nodes!r:.60}")


@dataclass(frozen=True, eq=False)  # compared by identity: tensors have no single truth value
class CSRPattern:
    """An attention pattern sorted into compressed rows, built once and reused across layers.

    Edges keep the caller's order through ``perm``: sorted edge ``e`` is the caller's edge
    ``perm[e]``. Sorting is stable, so repeated ``(j, i)`` pairs stay separate edges.

    Attributes:
        rowptr: ``[N_dst + 1]`` offsets of each target's incoming edges in sorted order.
        col: ``[E]`` source ``j`` of each sorted edge.
        row: ``[E]`` target ``i`` of each sorted edge.
        perm: ``[E]`` caller's edge id of each sorted edge, or ``None`` when the caller's order
            is the sorted order (see :meth:`sorted`): per-edge tensors then pass through unpermuted.
        colptr: ``[N_src + 1]`` offsets of each source's outgoing edges in the transposed order.
        row_t: ``[E]`` target of each edge in the transposed (by-source) order.
        perm_t: ``[E]`` sorted-edge position of each edge in the transposed order.
        num_src, num_dst: node counts ``N_src`` (keys/values) and ``N_dst`` (queries).
        has_duplicates: whether some ``(j, i)`` pair occurs more than once.
    """

    rowptr: Tensor
    col: Tensor
    row: Tensor
    perm: Optional[Tensor]
    colptr: Tensor
    row_t: Tensor
    perm_t: Tensor
    num_src: int
    num_dst: int
    has_duplicates: bool

    @classmethod
    def from_edge_index(cls, edge_index: Tensor, num_nodes: NumNodes = None) -> "CSRPattern":
        """Sort ``edge_index [2, E]`` (row 0 source, row 1 target) into a pattern.

        ``num_nodes`` is ``N`` (square), ``(N_src, N_dst)`` (bipartite), or ``None`` to infer
        ``max index + 1`` for each side.
        """
        if num_nodes is None:
            if not isinstance(edge_index, Tensor) or edge_index.dim() != 2 or edge_index.size(0) != 2:
                raise ValueError("edge_index must have shape [2, E]")
            num_src, num_dst = ((int(edge_index[r].max()) + 1) if edge_index.numel() else 0 for r in (0, 1))
        else:
            num_src, num_dst = _node_counts(num_nodes)
        if num_src < 0 or num_dst < 0:
            raise ValueError(f"num_nodes must be non-negative, got ({num_src}, {num_dst})")
        return cls._from_valid_edge_index(check_edge_index(edge_index, num_src, num_dst), num_src, num_dst)

    @classmethod
    def _from_valid_edge_index(cls, edge_index: Tensor, num_src: int, num_dst: int) -> "CSRPattern":
        """:meth:`from_edge_index` for an int64 ``edge_index`` already checked by `check_edge_index`."""
        src, dst = edge_index
        num_edges = src.numel()
        index_dtype = _index_dtype(num_edges, num_src, num_dst)

        # Stable sorts make the layout (and hence every reduction order) a function of the input only.
        keys = pair_keys(dst, src, num_dst, num_src)
        if bool((keys[1:] >= keys[:-1]).all()):  # patterns from `patterns` arrive sorted
            sorted_keys, perm = keys, None
            # Copies, as the gathers below make (one conversion, no extra pass when the index dtype
            # narrows): the pattern must not alias the caller's edge_index.
            col, row = src.to(index_dtype, copy=True), dst.to(index_dtype, copy=True)
        else:
            sorted_keys, perm = torch.sort(keys, stable=True)
            col, row = src[perm], dst[perm]
        has_duplicates = bool((sorted_keys[1:] == sorted_keys[:-1]).any())
        del keys, sorted_keys
        col, row = col.to(index_dtype), row.to(index_dtype)
        # Edges are ordered by (target, source), so a stable sort by source yields (source, target).
        sorted_col, perm_t = torch.sort(col, stable=True)
        row_t = row[perm_t]
        rowptr = _sorted_to_ptr(row, num_dst, index_dtype)
        colptr = _sorted_to_ptr(sorted_col, num_src, index_dtype)
        del sorted_col
        return cls(
            rowptr=rowptr,
            col=col,
            row=row,
            perm=perm,
            colptr=colptr,
            row_t=row_t,
            perm_t=perm_t.to(index_dtype),
            num_src=num_src,
            num_dst=num_dst,
            has_duplicates=has_duplicates,
        )

    @property
    def num_edges(self) -> int:
        return self.col.numel()

    @property
    def device(self) -> torch.device:
        return self.col.device

    @property
    def edge_index(self) -> Tensor:
        """The pattern as ``edge_index [2, E]`` in the caller's original edge order."""
        return self.sorted_to_caller(torch.stack([self.col.long(), self.row.long()]).t()).t()

    def sorted(self) -> "CSRPattern":
        """The same pattern whose caller order *is* the sorted order (``perm`` is ``None``).

        A model that sorts its pattern once per forward permutes its per-edge tensors (edge
        features, bias, gates) once with :meth:`caller_to_sorted` and hands this view to every
        layer, so no layer permutes edges again.
        """
        return dataclasses.replace(self, perm=None)

    def in_degree(self) -> Tensor:
        """``[N_dst]`` number of incoming edges of each target."""
        return (self.rowptr[1:] - self.rowptr[:-1]).long()

    def to(self, device: Union[str, torch.device]) -> "CSRPattern":
        """Copy of the pattern on ``device`` (its indices keep their integer dtype)."""
        if not isinstance(device, (str, torch.device)):
            raise TypeError(f"device must be a torch.device or a device string, got {type(device).__name__}")
        try:
            device = torch.device(device)
        except RuntimeError as error:  # a string that names no device, e.g. a dtype's "float64"
            raise ValueError(f"device: {error}") from None
        moved = {k: getattr(self, k).to(device) for k in _TENSOR_FIELDS if getattr(self, k) is not None}
        return dataclasses.replace(self, **moved)

    def sorted_to_caller(self, values: Tensor) -> Tensor:
        """Reorder per-edge ``values [E, ...]`` from sorted order back to the caller's order."""
        if values.size(0) != self.num_edges:
            raise ValueError(f"per-edge values must have E={self.num_edges} rows, got {list(values.shape)}")
        if self.perm is None:
            return values
        # index_copy / index_select rather than advanced indexing: their adjoints are a gather and an
        # index_add, where `values[perm]`'s is an accumulating index_put that sorts on CPU
        # (1.4 ms of a 12 ms `SparseAttnConv` step on a molecule batch).
        return torch.index_copy(torch.empty_like(values), 0, self.perm, values)

    def caller_to_sorted(self, values: Optional[Tensor]) -> Optional[Tensor]:
        """Reorder per-edge ``values [E, ...]`` from the caller's order to sorted order."""
        if values is not None and values.size(0) != self.num_edges:
            raise ValueError(f"per-edge values must have E={self.num_edges} rows, got {list(values.shape)}")
        return values if values is None or self.perm is None else values.index_select(0, self.perm)


def derived_layout(pattern: CSRPattern, name: str, build: Callable[[CSRPattern], T]) -> T:
    """``build(pattern)``, computed once per pattern and ``name`` (a kernel's own layout of it) and
    cached for as long as the pattern's ``rowptr`` lives, so layers that share a pattern share it.

    Keyed on the ``rowptr`` tensor (shared by :meth:`CSRPattern.sorted` views) and checked against
    ``col``, so a different pattern reusing the tensor is never served a stale layout.
    """
    key = id(pattern.rowptr)
    entry = _DERIVED.get(key)
    if entry is None or entry[0]() is not pattern.rowptr or entry[1] != id(pattern.col):
        entry = (weakref.ref(pattern.rowptr, lambda _: _DERIVED.pop(key, None)), id(pattern.col), {})
        _DERIVED[key] = entry
    layouts = entry[2]
    if name not in layouts:
        layouts[name] = build(pattern)
    return layouts[name]
