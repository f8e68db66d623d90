r"""Structural attention patterns from a graph: its own edges, ``k``-hop neighbourhoods, random
expanders (Exphormer) and virtual nodes.

Every builder returns an int64 ``edge_index [2, E]`` (row 0: source ``j``, row 1: target ``i``)
sorted by (target, source) without duplicate pairs.
"""
from __future__ import annotations

from typing import NamedTuple, Optional, Sequence

import torch
from torch import Tensor

from ..ops.pattern import check_edge_index, pair_keys
from ._utils import Device, check_batch, check_flag, check_generator, check_size, resolve_device, rows_to_edge_index, runs_to_edge_index
from .combine import sort_and_dedup


class VirtualNodes(NamedTuple):
    """Result of `add_virtual_nodes`.

    Attributes:
        num_nodes: ``N + B V`` nodes after adding ``V`` virtual nodes to each of ``B`` graphs.
        edge_index: ``[2, E']`` the given edges plus the virtual ones, sorted by (target, source).
        batch: ``[N + B V]`` graph id of every node, the virtual ones included.
    """

    num_nodes: int
    edge_index: Tensor
    batch: Tensor


def graph_edges(edge_index: Tensor, num_nodes: int, *, self_loops: bool = False) -> Tensor:
    r"""The graph's own edges as a pattern: a sorted, deduplicated copy of ``edge_index [2, E]``,
    plus every self loop :math:`i \to i` when ``self_loops``."""
    num_nodes = check_size(num_nodes, "num_nodes")
    check_flag(self_loops, "self_loops")
    edge_index = check_edge_index(edge_index, num_nodes, num_nodes)
    if self_loops:
        loops = torch.arange(num_nodes, device=edge_index.device).repeat(2, 1)
        edge_index = torch.cat([edge_index, loops], dim=1)
    return sort_and_dedup(edge_index, num_nodes)


def k_hop(edge_index: Tensor, k: int, num_nodes: int, *, self_loops: bool = True) -> Tensor:
    r""":math:`j \to i` iff a directed walk of length :math:`1 \le t \le k` leads from ``j`` to ``i``
    along ``edge_index``, i.e. :math:`\left(\sum_{t=1}^{k} A^t\right)_{ij} > 0` with
    :math:`A_{ij} = 1` for each edge :math:`j \to i`.

    With ``self_loops=True`` every :math:`i \to i` is added; with ``False`` a self loop appears
    only where a closed walk of length ``<= k`` exists (for an undirected graph and ``k >= 2``,
    at every non-isolated node).

    Built sparsely by frontier expansion: the pairs first reached at length ``t`` are extended
    by one edge to get the new pairs of length ``t + 1``; no ``N x N`` matrix is formed.

    Args:
        edge_index: ``[2, E]`` graph edges (for an undirected graph, both directions).
        k: ``k >= 0`` walk length bound.
        num_nodes: ``N``.
        self_loops: add every self loop.

    Returns:
        ``[2, E']``.
    """
    k = check_size(k, "k")
    num_nodes = check_size(num_nodes, "num_nodes")
    check_flag(self_loops, "self_loops")
    adjacency = sort_and_dedup(check_edge_index(edge_index, num_nodes, num_nodes), num_nodes)
    device = adjacency.device
    parts = [adjacency] if k else []
    if k > 1:
        # Out-edges grouped by source: node m's successors are next_node[out_start[m] : out_start[m] + out_degree[m]].
        next_node = adjacency[1, torch.sort(adjacency[0], stable=True).indices]
        out_degree = torch.bincount(adjacency[0], minlength=num_nodes)
        out_start = torch.cumsum(out_degree, 0) - out_degree
        reached_keys = _keys(adjacency, num_nodes)
        frontier = adjacency
        for length in range(2, k + 1):
            slot, walk_source = runs_to_edge_index(
                frontier[0], out_start[frontier[1]], out_degree[frontier[1]], 1
            )
            extended = torch.stack([walk_source, next_node[slot]])
            if length == k:  # the final coalesce below deduplicates it
                parts.append(extended)
                break
            extended = sort_and_dedup(extended, num_nodes)
            extended_keys = _keys(extended, num_nodes)
            found = torch.searchsorted(reached_keys, extended_keys).clamp(max=max(reached_keys.numel() - 1, 0))
            is_new = reached_keys[found] != extended_keys
            frontier = extended[:, is_new]
            if frontier.size(1) == 0:
                break
            parts.append(frontier)
            reached_keys = torch.sort(torch.cat([reached_keys, extended_keys[is_new]])).values
    if self_loops:
        parts.append(torch.arange(num_nodes, device=device).repeat(2, 1))
    if not parts:
        return adjacency[:, :0]
    return sort_and_dedup(torch.cat(parts, dim=1), num_nodes)


def expander(
    num_nodes: int,
    degree: int,
    *,
    generator: Optional[torch.Generator] = None,
    batch: Optional[Tensor] = None,
    device: Device = None,
) -> Tensor:
    r"""Random expander as in Exphormer (Shirzad et al., 2023): the union of ``degree / 2``
    uniformly random permutations :math:`\sigma_k` of each graph's nodes and their inverses,

    .. math::
        j \to i \iff j \ne i \text{ and } \exists k:\; j = \sigma_k(i) \text{ or } i = \sigma_k(j).

    The pattern is symmetric, has no self loops (fixed points are dropped) and every node has
    at most ``degree`` sources (exactly ``degree`` unless draws coincide, which is rare in graphs
    much larger than ``degree``). Edges stay inside the graphs of ``batch``.

    Args:
        num_nodes: ``N``.
        degree: even ``degree >= 0``.
        generator: ``torch.Generator`` for reproducible draws (they are made on its device).
        batch: ``[N]`` sorted graph id of each node, or ``None`` for one graph.
        device: where to build the pattern when ``batch`` is ``None``.

    Returns:
        ``[2, E]`` with ``E <= N degree``.
    """
    num_nodes = check_size(num_nodes, "num_nodes")
    degree = check_size(degree, "degree")
    if degree % 2:
        raise ValueError(f"degree must be even (degree / 2 permutations and their inverses), got {degree}")
    device = resolve_device(batch, device)
    if batch is not None:
        batch = check_batch(batch, num_nodes)
    check_generator(generator)
    draw_device = generator.device if generator is not None else device
    orders = []
    for _ in range(degree // 2):
        order = torch.randperm(num_nodes, generator=generator, device=draw_device).to(device)
        if batch is not None:
            # A stable sort by graph keeps the random order inside each graph's slot range.
            order = order[torch.sort(batch[order], stable=True).indices]
        orders.append(order)
    return _expander_edges(orders, torch.arange(num_nodes, device=device))


def expander_from_permutations(permutations: Sequence[Tensor], num_nodes: int, *, device: Device = None) -> Tensor:
    r"""The expander of given node permutations :math:`\sigma_k` (each ``[N]``): :math:`j \to i` iff
    :math:`j \ne i` and :math:`j = \sigma_k(i)` or :math:`i = \sigma_k(j)` for some :math:`k`.

    :func:`expander` draws the permutations; callers that draw them otherwise (e.g. graph by
    graph, so a batch's expander equals its graphs' expanders drawn one after another) build
    the same pattern here. Returns ``[2, E]`` sorted by (target, source), no duplicates.
    """
    num_nodes = check_size(num_nodes, "num_nodes")
    device = resolve_device(permutations[0] if permutations else None, device, "permutations")
    node = torch.arange(num_nodes, device=device)
    for order in permutations:
        if order.shape != (num_nodes,) or order.dtype != torch.long:
            raise ValueError(f"permutations must be LongTensors [num_nodes]=[{num_nodes}]")
        if not torch.equal(order.sort().values, node):  # one host sync per permutation
            raise ValueError(f"permutations must each hold 0 .. num_nodes - 1 = {num_nodes - 1} once")
    return _expander_edges(permutations, node)


def _expander_edges(permutations: Sequence[Tensor], node: Tensor) -> Tensor:
    """`expander_from_permutations` of permutations known to be valid (drawn here or by `transforms`),
    without its checks' sort and host sync: ``node`` is ``arange(N)`` on their device."""
    sources = []
    for order in permutations:
        inverse = torch.empty_like(order)
        inverse[order] = node
        sources += [order, inverse]
    if not sources:
        return torch.empty(2, 0, dtype=torch.long, device=node.device)
    sources = torch.stack(sources, dim=1).sort(dim=1).values
    keep = sources != node.unsqueeze(1)
    keep[:, 1:] &= sources[:, 1:] != sources[:, :-1]
    return rows_to_edge_index(sources, keep)


def add_virtual_nodes(
    num_nodes: int,
    num_virtual: int,
    *,
    edge_index: Optional[Tensor] = None,
    batch: Optional[Tensor] = None,
    device: Device = None,
) -> VirtualNodes:
    r"""Append ``V`` virtual nodes per graph, each linked both ways to every real node of its graph.

    Virtual nodes come after all ``N`` real nodes, graph by graph: virtual node ``v`` of graph
    ``g`` gets index ``N + g V + v`` (graphs ``g = 0 .. B-1`` with ``B = max(batch) + 1``, one
    graph when ``batch`` is ``None``). They have no edges among themselves (no self loops).

    This numbering (all virtual nodes last) suits a stand-alone pattern. `transforms.AddVirtualNodes`
    and `nn.GraphTransformer` number a batch differently, each graph's virtual nodes right after
    its real nodes (as PyG batches per-graph data): build their ``attn_index`` with
    `transforms.attention_pattern`, not with this function.

    Args:
        num_nodes: ``N`` real nodes.
        num_virtual: ``V >= 0`` virtual nodes per graph.
        edge_index: ``[2, E]`` existing edges among the real nodes, kept (coalesced); or ``None``.
        batch: ``[N]`` sorted graph id of each node, or ``None`` for one graph.
        device: where to build the pattern when neither ``batch`` nor ``edge_index`` is given.

    Returns:
        `VirtualNodes` ``(num_nodes=N + B V, edge_index [2, E + 2 N V], batch [N + B V])``.
    """
    num_nodes = check_size(num_nodes, "num_nodes")
    num_virtual = check_size(num_virtual, "num_virtual")
    device = resolve_device(batch, device) if batch is not None else resolve_device(edge_index, device, "edge_index")
    if batch is None:
        batch = torch.zeros(num_nodes, dtype=torch.long, device=device)
        num_graphs = 1
    else:
        batch = check_batch(batch, num_nodes)
        num_graphs = int(batch[-1]) + 1 if num_nodes else 0
    if edge_index is None:
        edge_index = torch.empty(2, 0, dtype=torch.long, device=device)
    elif edge_index.device != device:
        raise ValueError(f"edge_index is on {edge_index.device} but batch on {device}")
    real_edges = sort_and_dedup(check_edge_index(edge_index, num_nodes, num_nodes), num_nodes)
    total = num_nodes + num_graphs * num_virtual
    graph = torch.arange(num_graphs, device=device)
    virtual_batch = graph.repeat_interleave(num_virtual)
    new_batch = torch.cat([batch, virtual_batch])
    if num_virtual == 0:
        return VirtualNodes(total, real_edges, new_batch)

    node = torch.arange(num_nodes, device=device)
    # Real targets: their own sources, then their graph's virtual nodes (indices above all real ones).
    slot_of_real = torch.arange(real_edges.size(1), device=device) + num_virtual * real_edges[1]
    to_real = torch.empty(2, real_edges.size(1) + num_nodes * num_virtual, dtype=torch.long, device=device)
    is_virtual_slot = torch.ones(to_real.size(1), dtype=torch.bool, device=device)
    is_virtual_slot[slot_of_real] = False
    to_real[:, slot_of_real] = real_edges
    virtual_of_node = num_nodes + batch.unsqueeze(1) * num_virtual + torch.arange(num_virtual, device=device)
    to_real[0, is_virtual_slot] = virtual_of_node.flatten()
    to_real[1, is_virtual_slot] = node.repeat_interleave(num_virtual)
    # Virtual targets: every real node of their graph, one contiguous run.
    counts = torch.bincount(batch, minlength=num_graphs)
    graph_start = torch.cumsum(counts, 0) - counts
    to_virtual = runs_to_edge_index(
        torch.arange(num_nodes, total, device=device),
        graph_start.repeat_interleave(num_virtual),
        counts.repeat_interleave(num_virtual),
        1,
    )
    return VirtualNodes(total, torch.cat([to_real, to_virtual], dim=1), new_batch)


def _keys(edge_index: Tensor, num_nodes: int) -> Tensor:
    return pair_keys(edge_index[1], edge_index[0], num_nodes, num_nodes)
