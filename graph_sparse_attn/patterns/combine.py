"""Set operations on patterns and conversions to/from dense masks and networkx graphs.

A pattern is an ``edge_index [2, E]`` (row 0: source ``j``, row 1: target ``i``); the set
operations return it sorted by (target, source) without duplicates.
"""
from __future__ import annotations

import numbers
from typing import Optional, Tuple, Union

import networkx as nx
import torch
from torch import Tensor

from ..ops.pattern import NumNodes, check_edge_index, pair_keys
from ._utils import check_size


def sort_and_dedup(edge_index: Tensor, num_nodes: NumNodes = None) -> Tensor:
    r"""Coalesce a pattern: sort by (target, source) and drop repeated pairs.

    Edges are ordered by the key :math:`i \cdot N_{src} + j`; input that is already strictly
    increasing in it is returned without sorting (one ``O(E)`` check).

    Args:
        edge_index: ``[2, E]`` integer tensor.
        num_nodes: ``N``, ``(N_src, N_dst)``, or ``None`` to infer ``max index + 1``.

    Returns:
        ``[2, E']`` int64, ``E' <= E``.
    """
    num_src, num_dst = _node_counts(edge_index, num_nodes)
    edge_index = check_edge_index(edge_index, num_src, num_dst)
    key = pair_keys(edge_index[1], edge_index[0], num_dst, num_src)
    if bool((key[1:] > key[:-1]).all()):
        return edge_index.contiguous()
    # Sort + adjacent-difference mask + decoding the keys beats torch.unique and a gather by
    # the sort permutation (random access) several times on CPU.
    key = torch.sort(key).values
    first_of_key = torch.ones_like(key, dtype=torch.bool)
    first_of_key[1:] = key[1:] != key[:-1]
    key = key[first_of_key]
    target = torch.div(key, max(num_src, 1), rounding_mode="floor")
    return torch.stack([key - target * max(num_src, 1), target])


def union(*edge_indices: Tensor, num_nodes: NumNodes = None) -> Tensor:
    """Edges present in any of the patterns ``[2, E_k]`` (all on one device); ``num_nodes`` as in `sort_and_dedup`."""
    if not edge_indices:
        raise ValueError("union needs at least one edge_index")
    for k, edge_index in enumerate(edge_indices):
        check_edge_index(edge_index, _UNBOUNDED, _UNBOUNDED, f"edge_indices[{k}]")
        if edge_index.device != edge_indices[0].device:
            raise ValueError(f"edge_indices[{k}] is on {edge_index.device}, edge_indices[0] on {edge_indices[0].device}")
    return sort_and_dedup(torch.cat([e.long() for e in edge_indices], dim=1), num_nodes)


def intersection(a: Tensor, b: Tensor, num_nodes: NumNodes = None) -> Tensor:
    """Edges present in both patterns ``a [2, E_a]`` and ``b [2, E_b]`` (same device)."""
    check_edge_index(a, _UNBOUNDED, _UNBOUNDED, "a")
    check_edge_index(b, _UNBOUNDED, _UNBOUNDED, "b")
    if a.device != b.device:
        raise ValueError(f"a is on {a.device} but b on {b.device}")
    if num_nodes is None:
        num_nodes = tuple(max(x, y) for x, y in zip(_node_counts(a, None), _node_counts(b, None)))
    a, b = sort_and_dedup(a, num_nodes), sort_and_dedup(b, num_nodes)
    num_src, num_dst = _node_counts(a, num_nodes)
    keep = torch.isin(pair_keys(a[1], a[0], num_dst, num_src), pair_keys(b[1], b[0], num_dst, num_src))
    return a[:, keep]


def causal(edge_index: Tensor) -> Tensor:
    r"""Keep the edges with :math:`j \le i` (source not after target), in their input order."""
    edge_index = check_edge_index(edge_index, _UNBOUNDED, _UNBOUNDED)
    return edge_index[:, edge_index[0] <= edge_index[1]]


def to_dense_mask(edge_index: Tensor, num_nodes: Union[int, Tuple[int, int]]) -> Tensor:
    """Boolean mask ``[N_dst, N_src]`` with ``mask[i, j]`` True iff the edge ``j -> i`` is in the pattern.

    ``num_nodes`` is ``N`` (square mask) or ``(N_src, N_dst)``.
    """
    if num_nodes is None:
        raise ValueError("num_nodes must be given (an int N or a tuple (N_src, N_dst))")
    num_src, num_dst = _node_counts(edge_index, num_nodes)
    edge_index = check_edge_index(edge_index, num_src, num_dst)
    mask = torch.zeros(num_dst, num_src, dtype=torch.bool, device=edge_index.device)
    mask[edge_index[1], edge_index[0]] = True
    return mask


def from_dense_mask(mask: Tensor) -> Tensor:
    """The pattern of a boolean mask ``[N_dst, N_src]`` (``mask[i, j]``: edge ``j -> i``), sorted."""
    if not isinstance(mask, Tensor):
        raise TypeError(f"mask must be a bool tensor [N_dst, N_src], got {type(mask).__name__}")
    if mask.dtype != torch.bool:
        raise TypeError(f"mask must have dtype torch.bool, got {mask.dtype}")
    if mask.dim() != 2:
        raise ValueError(f"mask must have shape [N_dst, N_src], got {list(mask.shape)}")
    target, source = mask.nonzero().t()
    return torch.stack([source, target])


def to_networkx(edge_index: Tensor, num_nodes: int) -> nx.DiGraph:
    """``nx.DiGraph`` on nodes ``0 .. N-1`` with an edge ``(j, i)`` (source to target) per pattern edge."""
    num_nodes = check_size(num_nodes, "num_nodes")
    edge_index = check_edge_index(edge_index, num_nodes, num_nodes)
    graph = nx.DiGraph()
    graph.add_nodes_from(range(num_nodes))
    graph.add_edges_from(zip(*edge_index.tolist()))
    return graph


def from_networkx(graph: nx.Graph, *, device: Optional[torch.device] = None) -> Tensor:
    """The pattern ``[2, E]`` of a networkx graph (an edge ``(u, v)`` is ``u -> v``; undirected edges both ways).

    Nodes ``0 .. n-1`` keep their labels; any other labels are numbered in ``graph.nodes`` order.
    """
    if not isinstance(graph, nx.Graph):
        raise TypeError(f"graph must be a networkx graph, got {type(graph).__name__}")
    nodes = list(graph.nodes)
    # numbers.Integral takes numpy integers too (graphs built from arrays); bool is no label
    labels_are_indices = (all(isinstance(n, numbers.Integral) and not isinstance(n, bool) for n in nodes)
                          and set(nodes) == set(range(len(nodes))))
    index = {n: int(n) for n in nodes} if labels_are_indices else {n: k for k, n in enumerate(nodes)}
    pairs = [(index[u], index[v]) for u, v in graph.edges()]
    if not graph.is_directed():
        pairs += [(v, u) for u, v in pairs]
    edge_index = torch.tensor(pairs, dtype=torch.long, device=device).reshape(-1, 2).t()
    return sort_and_dedup(edge_index, len(nodes))


# Bound for validating patterns whose node count is not given: only negatives are rejected.
_UNBOUNDED = 2**62


def _node_counts(edge_index: Tensor, num_nodes: NumNodes) -> Tuple[int, int]:
    if num_nodes is None:
        check_edge_index(edge_index, _UNBOUNDED, _UNBOUNDED)
        if edge_index.numel() == 0:
            return 0, 0
        src_max, dst_max = edge_index.amax(dim=1).tolist()
        return src_max + 1, dst_max + 1
    if isinstance(num_nodes, tuple):
        if len(num_nodes) != 2:
            raise ValueError(f"num_nodes must be an int or a tuple (N_src, N_dst), got {num_nodes}")
        return check_size(num_nodes[0], "num_nodes[0]"), check_size(num_nodes[1], "num_nodes[1]")
    size = check_size(num_nodes, "num_nodes")
    return size, size
