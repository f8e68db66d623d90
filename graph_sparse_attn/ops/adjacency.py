"""Every adjacency form a PyG layer accepts, turned into the edges attention takes (and back).

PyG layers take the graph as

* ``edge_index [2, E]`` (row 0 source ``j``, row 1 target ``i``), possibly a
  :class:`torch_geometric.EdgeIndex` that caches its CSR/CSC sorts;
* a transposed adjacency ``adj_t [N_dst, N_src]`` (``adj_t[i, j] != 0`` for an edge ``j → i``):
  a ``torch.sparse`` COO/CSR/CSC tensor or a ``torch_sparse.SparseTensor``. Its per-edge order is
  the order its non-zeros are stored in (row-major for CSR and ``SparseTensor``, column-major for
  CSC, as stored for COO), and values with a feature dimension (``[E, F]``) are edge features;
* or, here, a prebuilt :class:`CSRPattern`.

:func:`edges_from_adjacency` gives an ``edge_index`` (or a pattern) whose caller order is that
per-edge order, so edge features, gates and attention weights line up with the input exactly as
in PyG.
"""
from __future__ import annotations

from typing import Optional, Tuple, Union

import torch
from torch import Tensor
from torch_geometric import EdgeIndex
from torch_geometric.typing import SparseTensor

from .pattern import CSRPattern, _index_dtype, _sorted_to_ptr, check_edge_index, pair_keys

Adjacency = Union[Tensor, SparseTensor, CSRPattern]
_SPARSE_LAYOUTS = (torch.sparse_coo, torch.sparse_csr, torch.sparse_csc)


def is_sparse_adjacency(adj: object) -> bool:
    """Whether ``adj`` is a ``torch.sparse`` tensor or a ``torch_sparse.SparseTensor``."""
    return isinstance(adj, SparseTensor) or (isinstance(adj, Tensor) and adj.layout in _SPARSE_LAYOUTS)


def edges_from_adjacency(adj: Adjacency, num_nodes: Tuple[int, int]) -> Tuple[Union[Tensor, CSRPattern], Optional[Tensor]]:
    """The edges of any PyG adjacency, as `sparse_attention` takes them.

    A plain ``edge_index`` passes through, and a sparse ``adj_t`` becomes one: `sparse_attention`
    sorts it only if its kernel needs a sorted layout (small patterns on CPU need none). An
    ``EdgeIndex`` becomes a :class:`CSRPattern` built from its cached sort.

    Args:
        adj: ``edge_index [2, E]``, :class:`~torch_geometric.EdgeIndex`, ``torch.sparse``
            ``adj_t [N_dst, N_src(, F)]``, ``SparseTensor`` ``adj_t``, or a :class:`CSRPattern`.
        num_nodes: ``(N_src, N_dst)``, the sizes of the node features the pattern is used with.

    Returns:
        ``(edges, values)``: ``edge_index [2, E]`` or a :class:`CSRPattern` (caller order =
        ``adj``'s per-edge order) and the adjacency's stored values ``[E]`` or ``[E, F]`` in that order (``None`` when it has none).

    Raises:
        ValueError: when ``adj``'s node counts disagree with ``num_nodes``.
        TypeError: for anything that is not an adjacency.
    """
    num_src, num_dst = num_nodes
    if isinstance(adj, CSRPattern):
        _check_sizes((adj.num_src, adj.num_dst), num_nodes, "the CSRPattern")
        return adj, None
    if isinstance(adj, SparseTensor):
        _check_sizes((adj.size(1), adj.size(0)), num_nodes, "the SparseTensor adj_t [N_dst, N_src]")
        row, col, value = adj.coo()  # row-major: (target, source) order
        return torch.stack([col, row]), value
    if isinstance(adj, Tensor) and adj.layout in _SPARSE_LAYOUTS:
        if adj.sparse_dim() != 2:
            raise ValueError(f"edge_index as a torch.sparse adjacency must have 2 sparse dims [N_dst, N_src], got {adj.sparse_dim()}")
        _check_sizes((adj.size(1), adj.size(0)), num_nodes, "the sparse adj_t [N_dst, N_src]")
        dst, src, values = _sparse_entries(adj)
        return torch.stack([src.long(), dst.long()]), values
    if isinstance(adj, EdgeIndex):
        sizes = adj.sparse_size()
        _check_sizes(tuple(s if s is not None else n for s, n in zip(sizes, num_nodes)), num_nodes, "the EdgeIndex")
        return _from_edge_index_cache(adj, num_src, num_dst), None
    if isinstance(adj, Tensor):
        return adj, None
    raise TypeError(
        "edge_index must be a LongTensor [2, E], a torch_geometric.EdgeIndex, a torch.sparse or "
        f"torch_sparse.SparseTensor adjacency adj_t [N_dst, N_src], or a CSRPattern; got {type(adj).__name__}"
    )


def _check_sizes(got: Tuple[int, int], expected: Tuple[int, int], what: str) -> None:
    if tuple(int(n) for n in got) != tuple(expected):
        raise ValueError(
            f"edge_index ({what}) has (N_src, N_dst)={tuple(got)} but the node features give {tuple(expected)}"
        )


def _ptr_to_index(ptr: Tensor) -> Tensor:
    return torch.repeat_interleave(torch.arange(ptr.numel() - 1, device=ptr.device), ptr.diff())


def _sparse_entries(adj: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
    """``(row, col, values)`` of a 2-d ``torch.sparse`` tensor in its stored order (no coalescing,
    so repeated entries stay separate edges as in PyG's message passing)."""
    if adj.layout == torch.sparse_coo:
        row, col = adj._indices()
        if adj.is_coalesced():  # values(), unlike _values(), carries autograd to edge features held in adj_t
            return row, col, adj.values()
        if adj.requires_grad:
            raise ValueError("an uncoalesced COO adj_t cannot pass gradients to its values: call adj_t.coalesce() first")
        return row, col, adj._values()
    if adj.layout == torch.sparse_csr:
        return _ptr_to_index(adj.crow_indices()), adj.col_indices(), adj.values()
    return adj.row_indices(), _ptr_to_index(adj.ccol_indices()), adj.values()


def _nondecreasing(major: Tensor, minor: Tensor, num_major: int, num_minor: int) -> bool:
    keys = pair_keys(major, minor, num_major, num_minor)
    return bool((keys[1:] >= keys[:-1]).all())


def _from_edge_index_cache(edge_index: EdgeIndex, num_src: int, num_dst: int) -> CSRPattern:
    """The pattern of an :class:`EdgeIndex`, reusing its sort where its order is one of ours.

    Ours are (target, source) for the pattern and (source, target) for its transpose. An
    ``EdgeIndex`` sorted by target (``sort_order="col"``) with sorted sources per target is the
    former: :meth:`CSRPattern.from_edge_index` detects that and sorts only the transpose. One
    sorted by source (``"row"``) with sorted targets per source (e.g. from ``sort_edge_index``) is
    the latter: its cached CSR pointer is the transpose's, and one stable sort by target gives the
    pattern, where :meth:`CSRPattern.from_edge_index` would sort twice. PyG caches the other
    direction from an unstable sort (not ordered within a row), so that cache is not reused.
    """
    data = edge_index.as_tensor()
    src, dst = data[0], data[1]
    if not (edge_index.is_sorted_by_row and _nondecreasing(src, dst, num_src, num_dst)):
        return CSRPattern.from_edge_index(data, (num_src, num_dst))
    check_edge_index(data, num_src, num_dst)
    num_edges = data.size(1)
    index_dtype = _index_dtype(num_edges, num_src, num_dst)
    # Stably sorting (source, target)-ordered edges by target gives (target, source) order.
    perm = torch.sort(dst, stable=True).indices
    # The caller's order is the transposed order, so perm_t is the inverse of perm.
    perm_t = torch.empty_like(perm).scatter_(0, perm, torch.arange(num_edges, device=data.device))
    (colptr, _), _ = edge_index.get_csr()
    colptr = torch.cat([colptr, colptr[-1:].expand(num_src + 1 - colptr.numel())])  # sizes inferred from max index
    row = dst[perm].to(index_dtype)
    return CSRPattern(
        rowptr=_sorted_to_ptr(row, num_dst, index_dtype),
        col=src[perm].to(index_dtype),
        row=row,
        perm=perm,
        colptr=colptr.to(index_dtype, copy=True),  # copies: the pattern must not alias the caller's EdgeIndex
        row_t=dst.to(index_dtype, copy=True),
        perm_t=perm_t.to(index_dtype),
        num_src=num_src,
        num_dst=num_dst,
        has_duplicates=bool(((src[1:] == src[:-1]) & (dst[1:] == dst[:-1])).any()),
    )
