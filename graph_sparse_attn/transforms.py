r"""Attention patterns as PyG transforms, built once in the data pipeline instead of in the model.

Each transform attaches (or extends) a pattern on a graph's :class:`~torch_geometric.data.Data`:

* ``attn_index [2, E']``: attention edges (row 0 source ``j``, row 1 target ``i``), sorted by
  (target, source); the graph's ``num_virtual`` virtual nodes, if any, are numbered after its
  real nodes (``num_nodes .. num_nodes + num_virtual - 1``);
* ``attn_type [E']``: the kind of each attention edge (:data:`GRAPH_EDGE`, :data:`SELF_LOOP`,
  :data:`HOP_EDGE`, :data:`EXPANDER_EDGE`, :data:`VIRTUAL_EDGE`);
* ``attn_edge [E']``: for an attention edge that is a graph edge, its position in the graph's
  ``edge_index`` (so the model can gather that edge's features), else ``-1``;
* ``num_virtual``: virtual nodes of the graph (0 without :class:`AddVirtualNodes`).

Transforms return an :class:`AttentionData`, whose batching offsets ``attn_index`` by
``num_nodes + num_virtual`` per graph: in a batch every graph's real nodes are followed by its
virtual nodes (:func:`virtual_layout` maps the batch's real nodes into that numbering).
``attn_edge`` is *not* offset by PyG (``-1`` must stay ``-1``): :func:`batch_edge_ids` turns it
into positions in the batch's ``edge_index``.

Deterministic transforms (:class:`AddGraphPattern`, :class:`AddKHopPattern`, :class:`AddFullPattern`,
:class:`AddVirtualNodes`, :class:`AddPositionalPattern` with a fixed pattern) belong in a
dataset's ``pre_transform`` (computed once, cached on disk); random ones
(:class:`AddExpanderPattern`) in its ``transform``, so a ``DataLoader`` draws them afresh in its
workers. :func:`attention_pattern` (graphs) and :func:`positional_pattern` (sequences) build the
same patterns for a whole batch at once, random draws included; the models call them when no
pattern is given, so both routes give identical patterns (one recipe, one home).

This module sits above ``patterns`` and below ``nn`` and ``data`` (both build their patterns
here): it imports ``patterns``, ``ops`` and PyG only.
"""
from __future__ import annotations

from typing import Any, List, NamedTuple, Optional, Sequence, Tuple

import torch
from torch import Tensor
from torch_geometric.data import Data
from torch_geometric.transforms import BaseTransform

from .ops.checks import check_on_device
from .ops.pattern import check_edge_index
from .patterns._utils import check_batch, check_flag, check_size, seed_for_worker, worker_seed
from .patterns.registry import RANDOM_PATTERNS, build_pattern, check_pattern
from .patterns.structural import _expander_edges, add_virtual_nodes, k_hop

__all__ = [
    "GRAPH_EDGE", "SELF_LOOP", "HOP_EDGE", "EXPANDER_EDGE", "VIRTUAL_EDGE", "NUM_EDGE_TYPES", "ATTENTION_PATTERNS",
    "AttentionPattern", "AttentionData", "virtual_layout", "pattern_batch", "batch_edge_ids", "attention_pattern",
    "positional_pattern", "AddGraphPattern", "AddKHopPattern", "AddFullPattern", "AddExpanderPattern", "AddVirtualNodes",
    "AddPositionalPattern",
]

# Kinds of attention edges, one learned embedding each in `nn.GraphTransformer`.
GRAPH_EDGE, SELF_LOOP, HOP_EDGE, EXPANDER_EDGE, VIRTUAL_EDGE = range(5)
NUM_EDGE_TYPES = 5
ATTENTION_PATTERNS = ("graph", "k_hop", "exphormer", "full")


class AttentionPattern(NamedTuple):
    """An attention pattern with per-edge provenance (see the module docstring).

    Attributes:
        index: ``[2, E']`` attention edges sorted by (target, source).
        type: ``[E']`` kind of each edge.
        edge: ``[E']`` graph-local position in ``edge_index`` of the graph edge it is (with
            ``local_edges=False``: its position in ``edge_index``), or ``-1``.
        num_nodes: nodes of the pattern, ``N + B V`` (virtual ones included).
    """

    index: Tensor
    type: Tensor
    edge: Tensor
    num_nodes: int


class AttentionData(Data):
    """A :class:`~torch_geometric.data.Data` whose ``attn_index`` counts the graph's virtual nodes
    when batched: it is offset by ``num_nodes + num_virtual`` per graph (plain ``Data`` would
    offset it by ``num_nodes`` only)."""

    def __inc__(self, key: str, value: Any, *args: Any, **kwargs: Any) -> Any:
        if key == "attn_index":
            return self.num_nodes + int(self["num_virtual"] if "num_virtual" in self else 0)
        return super().__inc__(key, value, *args, **kwargs)


# Cached datasets are reloaded with `torch.load(weights_only=True)`; PyG allow-lists its own classes the same way.
torch.serialization.add_safe_globals([AttentionData])


# --------------------------------------------------------------------------- batch helpers
def _graph_counts(index: Tensor, num_graphs: int) -> Tensor:
    """``[B]`` how many entries of ``index`` fall in each graph (static shape: no host sync)."""
    return torch.zeros(num_graphs, dtype=torch.long, device=index.device).index_add_(0, index, torch.ones_like(index, dtype=torch.long))


def virtual_layout(batch: Tensor, num_graphs: int, num_virtual: int) -> Tuple[Tensor, Tensor]:
    """Positions of real and virtual nodes when each graph's ``V`` virtual nodes follow its real ones.

    Args:
        batch: ``[N]`` sorted graph id of each real node.
        num_graphs: ``B``. num_virtual: ``V``.

    Returns:
        ``(real_pos [N], virtual_pos [B V])``: real node ``r`` sits at ``r + V batch[r]``, virtual
        node ``v`` of graph ``g`` at ``ptr[g + 1] + g V + v`` (``ptr`` the graphs' real-node offsets).
    """
    real_pos = torch.arange(batch.numel(), device=batch.device) + check_size(num_virtual, "num_virtual") * batch
    ends = torch.cumsum(_graph_counts(batch, num_graphs), 0) + num_virtual * torch.arange(num_graphs, device=batch.device)
    virtual_pos = ends.repeat_interleave(num_virtual) + torch.arange(num_virtual, device=batch.device).repeat(num_graphs)
    return real_pos, virtual_pos


def pattern_batch(batch: Tensor, num_graphs: int, num_virtual: int) -> Tensor:
    """``[N + B V]`` graph of every node of a pattern whose graphs' virtual nodes follow their real ones."""
    if not check_size(num_virtual, "num_virtual"):
        return batch
    sizes = _graph_counts(batch, num_graphs) + num_virtual
    return torch.arange(num_graphs, device=batch.device).repeat_interleave(sizes, output_size=batch.numel() + num_graphs * num_virtual)


def _edge_ranges(edge_index: Tensor, batch: Tensor, num_graphs: int) -> Tuple[Tensor, Tensor]:
    """``([B], [B])`` position of each graph's first edge and its number of edges in a batch's ``edge_index``, which must list
    the graphs' edges graph by graph (PyG's ``Batch`` order): graph-local edge positions mean
    nothing otherwise."""
    graphs = batch[edge_index[1]]
    check_on_device((graphs[1:] >= graphs[:-1]).all(),
                    "edge_index must list its edges graph by graph, as PyG's Batch does, for graph-local edge "
                    "positions (attn_edge); an edge of a later graph comes first (add_self_loops on a whole batch?)")
    counts = _graph_counts(graphs, num_graphs)
    return torch.cumsum(counts, 0) - counts, counts


def batch_edge_ids(attn_edge: Tensor, attn_graph: Tensor, edge_index: Tensor, batch: Tensor, num_graphs: int) -> Tensor:
    """Graph-local ``attn_edge`` (as a PyG batch holds it) → positions in the batch's ``edge_index``.

    Args:
        attn_edge: ``[E']`` graph-local edge position or ``-1``.
        attn_graph: ``[E']`` graph of each attention edge.
        edge_index: ``[2, E]`` the batch's graph edges, graph by graph (PyG's ``Batch`` order).
        batch: ``[N]`` graph of each real node. num_graphs: ``B``.

    Returns:
        ``[E']`` with ``-1`` kept.
    """
    starts, counts = _edge_ranges(edge_index, batch, num_graphs)
    check_on_device(((attn_edge >= -1) & (attn_edge < counts[attn_graph])).all(),
                    "attn_edge must hold -1 or the position of an edge among its own graph's edges")
    return torch.where(attn_edge >= 0, attn_edge + starts[attn_graph], attn_edge)


# --------------------------------------------------------------------------- pattern parts
# Each part is (index [2, E_p], type [E_p], edge [E_p]) over real nodes 0..N-1 (virtual: N + g V + v),
# with `edge` a position in the given edge_index. `_merge` numbers them per graph and sorts them.
Part = Tuple[Tensor, Tensor, Tensor]


def _part(index: Tensor, kind: int, edge: Optional[Tensor] = None) -> Part:
    types = torch.full((index.size(1),), kind, dtype=torch.long, device=index.device)
    return index, types, types.new_full(types.shape, -1) if edge is None else edge


def _graph_part(edge_index: Tensor, num_nodes: int, *, self_loops: bool = True) -> List[Part]:
    """The graph's edges, in order (:data:`GRAPH_EDGE`), plus every self loop (:data:`SELF_LOOP`)."""
    parts = [_part(edge_index, GRAPH_EDGE, torch.arange(edge_index.size(1), device=edge_index.device))]
    if self_loops:
        parts.append(_part(torch.arange(num_nodes, device=edge_index.device).repeat(2, 1), SELF_LOOP))
    return parts


def _k_hop_part(edge_index: Tensor, num_nodes: int, k: int) -> List[Part]:
    """The graph's edges (:data:`GRAPH_EDGE`) and every other pair within ``k`` hops, self loops
    included (:data:`HOP_EDGE`; see :func:`~graph_sparse_attn.patterns.k_hop`)."""
    return _graph_and_other_pairs(edge_index, num_nodes, k_hop(edge_index, k, num_nodes))


def _graph_and_other_pairs(edge_index: Tensor, num_nodes: int, pairs: Tensor) -> List[Part]:
    """The graph's edges (:data:`GRAPH_EDGE`) and those of ``pairs [2, P]`` that are not graph edges (:data:`HOP_EDGE`)."""
    width = max(num_nodes, 1)
    direct = torch.isin(pairs[1] * width + pairs[0], edge_index[1] * width + edge_index[0])
    return _graph_part(edge_index, num_nodes, self_loops=False) + [_part(pairs[:, ~direct], HOP_EDGE)]


def _full_part(edge_index: Tensor, batch: Tensor, num_graphs: int) -> List[Part]:
    """The graph's edges (:data:`GRAPH_EDGE`) and every other ordered pair of nodes of the same
    graph, self loops included (:data:`HOP_EDGE`): full attention within each graph, as GraphGPS
    attends. ``batch [N]`` is sorted; a graph of ``n`` nodes has ``n²`` pattern edges."""
    num_nodes = batch.numel()
    sizes = _graph_counts(batch, num_graphs)
    starts = torch.cumsum(sizes, 0) - sizes
    per_target = sizes[batch]  # each target attends to every node of its graph
    dst = torch.repeat_interleave(torch.arange(num_nodes, device=batch.device), per_target)
    rank = torch.arange(dst.numel(), device=batch.device) - torch.repeat_interleave(torch.cumsum(per_target, 0) - per_target, per_target)
    src = starts[batch][dst] + rank
    return _graph_and_other_pairs(edge_index, num_nodes, torch.stack([src, dst]))


def _expander_part(sizes: Sequence[int], degree: int, *, generator: Optional[torch.Generator] = None,
                  seed_per_graph: Optional[int] = None, device: Optional[torch.device] = None) -> List[Part]:
    """Exphormer's random ``degree``-regular expander (:data:`EXPANDER_EDGE`) inside each graph.

    Graphs are drawn one after another (``degree / 2`` permutations each), so a batch's expander
    equals its graphs' expanders drawn in turn from the same ``generator`` (``None``: the global
    RNG of ``device``). With ``seed_per_graph``, each graph is drawn from a generator freshly
    seeded with it instead: the expander then depends on the graph's size only.
    """
    if degree % 2 or degree < 0:
        raise ValueError(f"degree must be even and non-negative, got {degree}")
    if degree == 0:
        return []
    device = torch.device("cpu") if device is None else torch.device(device)
    draws: List[List[Tensor]] = [[] for _ in range(degree // 2)]
    for size in sizes:
        gen = torch.Generator().manual_seed(seed_per_graph) if seed_per_graph is not None else generator
        draw_device = gen.device if gen is not None else device
        for draw in draws:
            draw.append(torch.randperm(size, generator=gen, device=draw_device))
    sizes_t = torch.tensor(list(sizes), dtype=torch.long, device=device)
    starts = (torch.cumsum(sizes_t, 0) - sizes_t).repeat_interleave(sizes_t)  # each node's graph offset
    orders = [torch.cat(draw).to(device) + starts if draw else starts for draw in draws]
    return [_part(_expander_edges(orders, torch.arange(starts.numel(), device=device)), EXPANDER_EDGE)]


def _virtual_part(num_nodes: int, num_virtual: int, batch: Optional[Tensor] = None, device: Optional[torch.device] = None) -> List[Part]:
    """``num_virtual`` virtual nodes per graph linked both ways to its real nodes (:data:`VIRTUAL_EDGE`)."""
    if num_virtual == 0:
        return []
    virtual = add_virtual_nodes(num_nodes, num_virtual, batch=batch, device=device)
    return [_part(virtual.edge_index, VIRTUAL_EDGE)]


def _merge(parts: List[Part], num_nodes: int, num_virtual: int, batch: Tensor, num_graphs: int,
           edge_index: Tensor, local_edges: bool = True) -> AttentionPattern:
    """Concatenate parts (in order), number virtual nodes after their graph's real ones, sort
    stably by (target, source) and make ``edge`` graph-local (``local_edges``)."""
    if not parts:  # e.g. AddVirtualNodes(0) on a graph without a pattern yet: an empty one
        parts = [_part(edge_index.new_empty(2, 0), GRAPH_EDGE)]
    index = torch.cat([p[0] for p in parts], dim=1)
    types = torch.cat([p[1] for p in parts])
    edge = torch.cat([p[2] for p in parts])
    total = num_nodes + num_graphs * num_virtual
    if num_virtual:
        index = torch.cat(virtual_layout(batch, num_graphs, num_virtual))[index]
    # Stable: ties (repeated pairs) keep the parts' order, so merging parts one at a time sorts alike.
    order = torch.sort(index[1] * max(total, 1) + index[0], stable=True).indices
    index, types, edge = index[:, order], types[order], edge[order]
    if local_edges and num_graphs > 1:
        graph = pattern_batch(batch, num_graphs, num_virtual)[index[1]]
        edge = torch.where(edge >= 0, edge - _edge_ranges(edge_index, batch, num_graphs)[0][graph], edge)
    return AttentionPattern(index, types, edge, total)


def attention_pattern(
    edge_index: Tensor,
    num_nodes: int,
    attention: str = "exphormer",
    *,
    batch: Optional[Tensor] = None,
    num_graphs: Optional[int] = None,
    k_hops: int = 2,
    expander_degree: int = 4,
    num_virtual: int = 1,
    generator: Optional[torch.Generator] = None,
    seed_per_graph: Optional[int] = None,
    local_edges: bool = True,
) -> AttentionPattern:
    """The attention pattern of a graph or a batch of graphs: the one home of each recipe.

    * ``"graph"``: the graph's edges + self loops;
    * ``"k_hop"``: the graph's edges + every other pair within ``k_hops`` hops (self loops too);
    * ``"exphormer"`` (Shirzad et al. 2023): graph edges + self loops + a random
      ``expander_degree``-regular expander + ``num_virtual`` virtual nodes per graph, linked both ways;
    * ``"full"``: every pair of nodes of each graph (GraphGPS's full attention), graph edges typed as such.

    Parts are concatenated, not merged: a pair that two parts both hold (a graph self loop and the
    added self loop, a graph edge the expander also draws) is attended twice, once per edge type,
    as repeated pairs are (:func:`~graph_sparse_attn.sparse_attention`); the type embeddings tell the
    copies apart.

    For a batch the result equals ``Batch.from_data_list`` of the graphs' transforms
    (:class:`AddGraphPattern` + :class:`AddExpanderPattern` + :class:`AddVirtualNodes`,
    :class:`AddKHopPattern` or :class:`AddFullPattern`), expander draws included (see :func:`_expander_part`).

    Args:
        edge_index: ``[2, E]`` graph edges (a batch's graph by graph).
        num_nodes: ``N`` real nodes.
        batch: ``[N]`` sorted graph id of each node, or ``None`` for one graph.
        num_graphs: ``B`` (default ``max(batch) + 1``).
        generator, seed_per_graph: expander randomness (:func:`_expander_part`).
        local_edges: number ``edge`` within each graph, as a PyG batch holds it (``edge_index``
            must then list its edges graph by graph); ``False``: positions in ``edge_index``
            itself, in any edge order.
    """
    if attention not in ATTENTION_PATTERNS:
        raise ValueError(f"attention must be one of {ATTENTION_PATTERNS}, got {attention!r}")
    check_size(num_nodes, "num_nodes")
    check_size(k_hops, "k_hops", minimum=1)
    check_size(expander_degree, "expander_degree")
    check_size(num_virtual, "num_virtual")
    if seed_per_graph is not None:
        check_size(seed_per_graph, "seed_per_graph")
        if generator is not None:
            raise ValueError("give generator or seed_per_graph, not both")
    edge_index = check_edge_index(edge_index, num_nodes, num_nodes)
    device = edge_index.device
    if batch is None:
        if num_graphs not in (None, 1):
            raise ValueError(f"num_graphs={num_graphs} needs a batch vector; without one the nodes are one graph")
        batch, num_graphs = torch.zeros(num_nodes, dtype=torch.long, device=device), 1
    else:
        batch = check_batch(batch, num_nodes, device=device, num_graphs=num_graphs)
        if num_graphs is None:
            num_graphs = int(batch[-1]) + 1 if num_nodes else 0
        # A pattern attends within each graph: an edge between two graphs would carry attention across.
        check_on_device((batch[edge_index[0]] == batch[edge_index[1]]).all(), "edge_index joins nodes of different graphs of batch")
    if attention == "k_hop":
        parts, num_virtual = _k_hop_part(edge_index, num_nodes, k_hops), 0
    elif attention == "full":
        parts = _full_part(edge_index, batch, num_graphs)
    else:
        parts = _graph_part(edge_index, num_nodes)
    if attention == "exphormer":
        sizes = _graph_counts(batch, num_graphs).tolist()
        parts += _expander_part(sizes, expander_degree, generator=generator, seed_per_graph=seed_per_graph, device=device)
        parts += _virtual_part(num_nodes, num_virtual, batch, device)
    else:
        num_virtual = 0
    return _merge(parts, num_nodes, num_virtual, batch, num_graphs, edge_index, check_flag(local_edges, "local_edges"))


def positional_pattern(name: str, num_nodes: int, *, batch: Optional[Tensor] = None, num_graphs: Optional[int] = None,
                       generator: Optional[torch.Generator] = None, seed_per_graph: Optional[int] = None,
                       **params: Any) -> Tensor:
    """The positional pattern ``name`` (:func:`~graph_sparse_attn.patterns.build_pattern`) of each
    sequence of ``batch`` (``None``: one sequence): ``[2, E]`` sorted by (target, source).

    A random pattern (``random``, ``bigbird``) is drawn sequence after sequence from ``generator``
    (``None``: the global RNG), so a batch's pattern equals its sequences' patterns drawn in turn,
    as :class:`AddPositionalPattern` draws them. With ``seed_per_graph``, each sequence is drawn
    from a generator freshly seeded with it instead (repeatable, independent of the batch).
    """
    if seed_per_graph is not None:
        check_size(seed_per_graph, "seed_per_graph")
        if generator is not None:
            raise ValueError("give generator or seed_per_graph, not both")
    if num_graphs is not None:
        check_size(num_graphs, "num_graphs")
        if batch is None and num_graphs != 1:
            raise ValueError(f"num_graphs={num_graphs} needs a batch vector; without one the positions are one sequence")
        if batch is not None:
            batch = check_batch(batch, num_nodes, num_graphs=num_graphs)
    if name not in RANDOM_PATTERNS or (batch is None and seed_per_graph is None):
        extra = {} if name not in RANDOM_PATTERNS else {"generator": generator}
        return build_pattern(name, num_nodes, batch=batch, **params, **extra)
    if batch is None:
        batch = torch.zeros(num_nodes, dtype=torch.long)
    batch = check_batch(batch, num_nodes, num_graphs=num_graphs)
    num_graphs = int(batch[-1]) + 1 if num_graphs is None and num_nodes else (num_graphs or 0)
    sizes = _graph_counts(batch, num_graphs).tolist()
    starts = torch.cumsum(torch.tensor([0] + sizes[:-1], dtype=torch.long), 0).tolist()

    def draws() -> Optional[torch.Generator]:
        return generator if seed_per_graph is None else torch.Generator().manual_seed(seed_per_graph)

    parts = [build_pattern(name, size, generator=draws(), **params).to(batch.device) + start for size, start in zip(sizes, starts)]
    return torch.cat(parts, dim=1) if parts else torch.empty(2, 0, dtype=torch.long, device=batch.device)


# --------------------------------------------------------------------------- transforms
def _pattern_of(data: Data) -> Tuple[AttentionData, List[Part], int]:
    """``data`` as an :class:`AttentionData` with its existing pattern as one part (in the
    appended numbering: virtual nodes after the real ones) and its virtual node count."""
    out = data if isinstance(data, AttentionData) else AttentionData.from_dict(data.to_dict())
    num_virtual = int(out["num_virtual"]) if "num_virtual" in out else 0
    if "attn_index" not in out:
        return out, [], num_virtual
    if "attn_type" not in out:
        raise ValueError("data.attn_index has no attn_type: graph patterns extend only patterns built by these transforms")
    attn_edge = out["attn_edge"] if "attn_edge" in out else torch.full_like(out.attn_type, -1)
    return out, [(out.attn_index, out.attn_type, attn_edge)], num_virtual


def _attach(data: AttentionData, parts: List[Part], num_virtual: int) -> AttentionData:
    num_nodes = data.num_nodes
    edge_index = data.edge_index if "edge_index" in data else torch.empty(2, 0, dtype=torch.long)
    batch = torch.zeros(num_nodes, dtype=torch.long, device=edge_index.device)
    # A single graph's numbering already has its virtual nodes last: merge without renumbering.
    pattern = _merge(parts, num_nodes + num_virtual, 0, batch.new_zeros(num_nodes + num_virtual), 1, edge_index)
    data.attn_index, data.attn_type, data.attn_edge, data.num_virtual = pattern.index, pattern.type, pattern.edge, num_virtual
    return data


class _GraphTransform(BaseTransform):
    def _edge_index(self, data: Data) -> Tensor:
        if "edge_index" not in data or data.edge_index is None:
            raise ValueError(f"{type(self).__name__} needs data.edge_index")
        return check_edge_index(data.edge_index, data.num_nodes, data.num_nodes, "data.edge_index")


class AddGraphPattern(_GraphTransform):
    """Attend over the graph's own edges (``GRAPH_EDGE``, carrying their ``attn_edge``) plus
    self loops (``SELF_LOOP``). Deterministic: use it as ``pre_transform``."""

    def __init__(self, self_loops: bool = True) -> None:
        self.self_loops = check_flag(self_loops, "self_loops")

    def forward(self, data: Data) -> AttentionData:
        edge_index = self._edge_index(data)
        data, parts, num_virtual = _pattern_of(data)
        return _attach(data, parts + _graph_part(edge_index, data.num_nodes, self_loops=self.self_loops), num_virtual)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(self_loops={self.self_loops})"


class AddKHopPattern(_GraphTransform):
    """Attend over the graph's edges (``GRAPH_EDGE``) and every other pair within ``k`` hops
    (``HOP_EDGE``, self loops included). Deterministic: use it as ``pre_transform``."""

    def __init__(self, k: int = 2) -> None:
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"k must be a positive int, got {k!r}")
        self.k = k

    def forward(self, data: Data) -> AttentionData:
        edge_index = self._edge_index(data)
        data, parts, num_virtual = _pattern_of(data)
        return _attach(data, parts + _k_hop_part(edge_index, data.num_nodes, self.k), num_virtual)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(k={self.k})"


class AddFullPattern(_GraphTransform):
    """Attend over every pair of nodes of the graph: its edges (``GRAPH_EDGE``) and all other
    pairs, self loops included (``HOP_EDGE``), as GraphGPS's full attention. Deterministic: use it
    as ``pre_transform``."""

    def forward(self, data: Data) -> AttentionData:
        edge_index = self._edge_index(data)
        data, parts, num_virtual = _pattern_of(data)
        batch = torch.zeros(data.num_nodes, dtype=torch.long, device=edge_index.device)
        return _attach(data, parts + _full_part(edge_index, batch, 1), num_virtual)


class _SeededDraws:
    """A random transform's generator seeded with ``seed`` (``None``: the global RNG, returned as
    ``None``). Each DataLoader worker reseeds it from ``(seed, its worker seed)``: workers would
    otherwise start from the same copied state and repeat one another's draws."""

    def __init__(self, seed: Optional[int]) -> None:
        self.seed = None if seed is None else check_size(seed, "seed")
        self._generator: Optional[torch.Generator] = None
        self._worker_seed: Optional[int] = None

    def __call__(self) -> Optional[torch.Generator]:
        if self.seed is None:
            return None
        worker = worker_seed()
        if self._generator is None or worker != self._worker_seed:
            seed = self.seed if worker is None else seed_for_worker(self.seed, worker)
            self._generator, self._worker_seed = torch.Generator().manual_seed(seed), worker
        return self._generator


class AddExpanderPattern(BaseTransform):
    """Add Exphormer's random ``degree``-regular expander over the graph's real nodes (``EXPANDER_EDGE``).

    Random: use it as ``transform`` so every epoch sees fresh expanders.

    Args:
        degree: even expander degree.
        seed: ``None`` draws from the global RNG (a ``DataLoader`` seeds it in each worker);
            an int seeds a generator of this transform, drawn graph after graph, so the
            expanders match :class:`~graph_sparse_attn.nn.GraphTransformer`'s own with
            ``expander_seed=seed`` on the same graphs in the same order (inside a ``DataLoader``
            worker it is re-seeded from ``seed`` and the worker's seed, so workers differ).
        seed_per_graph: draw every graph from a generator freshly seeded with this (deterministic:
            fit for ``pre_transform``; ``0`` reproduces ``GraphTransformer``'s evaluation-mode expander).
    """

    def __init__(self, degree: int = 4, *, seed: Optional[int] = None, seed_per_graph: Optional[int] = None) -> None:
        if isinstance(degree, bool) or not isinstance(degree, int) or degree < 0 or degree % 2:
            raise ValueError(f"degree must be an even non-negative int, got {degree!r}")
        if seed is not None and seed_per_graph is not None:
            raise ValueError("give seed or seed_per_graph, not both")
        for name, value in (("seed", seed), ("seed_per_graph", seed_per_graph)):
            if value is not None:
                check_size(value, name)
        self.degree, self.seed, self.seed_per_graph = degree, seed, seed_per_graph
        self._draws = _SeededDraws(seed)

    def forward(self, data: Data) -> AttentionData:
        data, parts, num_virtual = _pattern_of(data)
        if data.num_nodes is None:
            raise ValueError("data has no num_nodes (nor x or edge_index to infer it from): the expander needs the graph's size")
        device = parts[0][0].device if parts else None
        parts += _expander_part([data.num_nodes], self.degree, generator=self._draws(),
                               seed_per_graph=self.seed_per_graph, device=device)
        return _attach(data, parts, num_virtual)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(degree={self.degree}, seed={self.seed}, seed_per_graph={self.seed_per_graph})"


class AddVirtualNodes(BaseTransform):
    """Add ``num_virtual`` virtual nodes linked both ways to every real node (``VIRTUAL_EDGE``).

    The virtual nodes are not added to ``x``: they exist in the pattern only, numbered after the
    real nodes, and ``data.num_virtual`` records them (the model supplies their embeddings).
    Deterministic: use it as ``pre_transform``.
    """

    def __init__(self, num_virtual: int = 1) -> None:
        if isinstance(num_virtual, bool) or not isinstance(num_virtual, int) or num_virtual < 0:
            raise ValueError(f"num_virtual must be a non-negative int, got {num_virtual!r}")
        self.num_virtual = num_virtual

    def forward(self, data: Data) -> AttentionData:
        data, parts, num_virtual = _pattern_of(data)
        if num_virtual:
            raise ValueError(f"data already has {num_virtual} virtual node(s)")
        device = parts[0][0].device if parts else None
        return _attach(data, parts + _virtual_part(data.num_nodes, self.num_virtual, device=device), self.num_virtual)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(num_virtual={self.num_virtual})"


class AddPositionalPattern(BaseTransform):
    """Attend over a positional pattern of a token sequence (``data.num_nodes`` tokens in order),
    by name as in :func:`~graph_sparse_attn.patterns.build_pattern`: ``attn_index [2, E']``.

    ``AddPositionalPattern("longformer", window=64, global_indices=[0])``. Fixed patterns belong in
    ``pre_transform``; random ones (``random``, ``bigbird``) in ``transform``, where ``seed``
    (optional) seeds a generator of this transform: the draws then match
    :class:`~graph_sparse_attn.nn.SequenceTransformer`'s own with ``pattern_seed=seed`` on the
    same sequences in the same order (:func:`positional_pattern`).
    """

    def __init__(self, name: str, *, seed: Optional[int] = None, **params: Any) -> None:
        check_pattern(name, params)
        if seed is not None and name not in RANDOM_PATTERNS:
            raise ValueError(f"seed applies to the random patterns {sorted(RANDOM_PATTERNS)}, not to {name!r}")
        self.name, self.params, self.seed = name, params, seed
        self._draws = _SeededDraws(seed)

    def forward(self, data: Data) -> Data:
        if "attn_type" in data:  # its attn_type/attn_edge would no longer match the new attn_index
            raise ValueError(f"{self!r} would replace a pattern built by the graph transforms; use one or the other")
        data.attn_index = positional_pattern(self.name, data.num_nodes, generator=self._draws(), **self.params)
        return data

    def __repr__(self) -> str:
        seed = {} if self.seed is None else {"seed": self.seed}
        return f"{type(self).__name__}({', '.join([repr(self.name)] + [f'{k}={v!r}' for k, v in {**seed, **self.params}.items()])})"
