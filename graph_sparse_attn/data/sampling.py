"""Neighbour sampling for mini-batch node-level training on graphs too large for one forward pass.

A pure-torch replacement for PyG's ``NeighborLoader`` (which needs ``pyg-lib`` or
``torch-sparse``): directed sampling of in-neighbours, hop by hop, vectorised over the frontier.
"""
from __future__ import annotations

import math
from typing import Any, Dict, Iterator, List, Optional, Sequence

import torch
from torch import Tensor
from torch_geometric.data import Data

from ..ops.pattern import check_edge_index
from ..patterns._utils import check_flag, check_generator, check_size

# In-degree, in multiples of the fanout, above which a node is sampled by Floyd's algorithm
# (O(fanout²) per node) rather than by sorting random keys of all its in-edges.
HUB_FACTOR = 4
# Bits of the random tie-break below the segment id in the composite sort key of `_draw_by_sorting`.
_RANDOM_BITS = 32


class NeighborSampler:
    r"""Iterate over seed batches and their sampled in-neighbourhoods, like PyG's ``NeighborLoader``.

    Edges follow PyG's convention: ``edge_index[0]`` is the source :math:`j`, ``edge_index[1]``
    the target :math:`i`, messages flow :math:`j \to i`. For a batch of seeds :math:`S_0` the
    sampler builds frontiers hop by hop:

    .. math::
        E_h = \bigcup_{i \in S_h} \mathrm{sample}\big(\{(j \to i) \in E\},\ k_h\big), \qquad
        S_{h+1} = \{ j : (j \to i) \in E_h \} \setminus (S_0 \cup \dots \cup S_h),

    where :math:`\mathrm{sample}(A, k)` draws :math:`\min(k, |A|)` edges of :math:`A` uniformly
    without replacement (all of them for :math:`k = -1`). Only newly reached nodes are expanded,
    so every node gets in-edges from at most one hop, and a ``len(num_neighbors)``-layer GNN on
    the subgraph sees the seeds' full receptive field when every fanout is ``-1``.

    Each batch is a :class:`~torch_geometric.data.Data` with

    * ``n_id [N_s]``: global ids of the sampled nodes, the seeds first and in batch order, then
      the nodes of :math:`S_1`, :math:`S_2`, ..., each in order of first appearance as a source
      of the hop's sampled edges (as PyG orders them); all distinct;
    * ``batch_size``: the number of seeds ``B`` (their outputs are the first ``B`` rows);
    * ``edge_index [2, E_s]``: the sampled edges, each once, relabelled to positions in ``n_id``;
    * ``e_id [E_s]``: global id (column of the input ``edge_index``) of each sampled edge;
    * ``num_sampled_nodes`` (``len(num_neighbors) + 1`` ints) and ``num_sampled_edges``
      (``len(num_neighbors)`` ints): sizes per hop, as in PyG (nodes and edges are in hop order);
    * ``x = x[n_id]``, ``y = y[n_id]``, ``edge_attr = edge_attr[e_id]`` when those are given.

    ``state_dict()`` / ``load_state_dict()`` save and restore where an epoch stands (batches
    handed out, the generator's state now and at the epoch's start), so a run stopped inside an
    epoch resumes it with bitwise the same batches.

    A hop costs O(sum over frontier nodes of min(d, HUB_FACTOR · k) · log + k²), with ``d`` the
    in-degree and ``k`` the fanout: hubs never enumerate their in-edges. New nodes are
    de-duplicated without sorting through a global-to-local id table of size ``num_nodes``, kept
    across batches and reset entry by entry, so no batch pays O(num_nodes).

    Args:
        edge_index: ``[2, E]`` integer edges ``j -> i`` (repeated pairs are separate edges).
        num_nodes: number of nodes ``N``.
        num_neighbors: fanout per hop, ``k_h >= 0`` or ``-1`` for all in-neighbours.
        input_nodes: seed nodes: ``[M]`` distinct int64 ids or a ``[N]`` bool mask (default: all).
        batch_size: seeds per batch (the last batch may be smaller).
        shuffle: draw a new seed order every epoch.
        generator: source of every random draw (seed order and neighbour choices); on the
            device of ``edge_index``. ``None`` uses torch's default generator.
        x: ``[N, ...]`` node features; y: ``[N, ...]`` node targets; edge_attr: ``[E, ...]``.
    """

    def __init__(
        self,
        edge_index: Tensor,
        num_nodes: int,
        num_neighbors: Sequence[int],
        *,
        input_nodes: Optional[Tensor] = None,
        batch_size: int = 1024,
        shuffle: bool = False,
        generator: Optional[torch.Generator] = None,
        x: Optional[Tensor] = None,
        y: Optional[Tensor] = None,
        edge_attr: Optional[Tensor] = None,
    ) -> None:
        self.num_nodes = check_size(num_nodes, "num_nodes")
        edge_index = check_edge_index(edge_index, self.num_nodes, self.num_nodes)
        self.num_neighbors = check_num_neighbors(num_neighbors)
        self.batch_size = check_size(batch_size, "batch_size", minimum=1)
        self.shuffle = check_flag(shuffle, "shuffle")
        check_generator(generator)
        self.generator = generator
        self.device = edge_index.device
        self.input_nodes = _check_input_nodes(input_nodes, self.num_nodes, self.device)
        num_edges = edge_index.size(1)
        self.x = _check_rows(x, self.num_nodes, "x", "num_nodes")
        self.y = _check_rows(y, self.num_nodes, "y", "num_nodes")
        self.edge_attr = _check_rows(edge_attr, num_edges, "edge_attr", "E")

        # Incoming edges of every target, contiguous: the CSR by target, built once.
        self.csr_edge_id = torch.argsort(edge_index[1], stable=True)
        self.csr_source = edge_index[0, self.csr_edge_id]
        self.csr_target = edge_index[1, self.csr_edge_id]
        in_degree = torch.bincount(edge_index[1], minlength=self.num_nodes)
        self.rowptr = torch.zeros(self.num_nodes + 1, dtype=torch.long, device=self.device)
        torch.cumsum(in_degree, 0, out=self.rowptr[1:])
        # Global -> local id of the batch being built, -1 elsewhere; entries are reset per batch.
        self._local_id = torch.full((self.num_nodes,), -1, dtype=torch.long, device=self.device)
        # Resumable epochs: batches handed out in the current one and the generator state it began with.
        self._position, self._epoch_start = 0, None

    def __len__(self) -> int:
        """Number of seed batches per epoch: ``ceil(M / batch_size)``."""
        return math.ceil(self.input_nodes.numel() / self.batch_size)

    def __iter__(self) -> Iterator[Data]:
        """One epoch: every input node is a seed exactly once (in a fresh order when shuffling).

        After `load_state_dict` of a state taken inside an epoch, the epoch continues from there.
        """
        rng = self._rng()
        # A state saved after an epoch's last batch resumes into the next epoch, afresh.
        resume_at, resumed_state = (self._position if self._position < len(self) else 0), None
        if resume_at:  # redraw the interrupted epoch's seed order, then continue its draws
            resumed_state = rng.get_state()
            rng.set_state(self._epoch_start)
        else:
            self._epoch_start = rng.get_state()
        seeds = self.input_nodes
        if self.shuffle:
            order = torch.randperm(seeds.numel(), generator=rng, device=self.device)
            seeds = seeds[order]
        if resumed_state is not None:
            rng.set_state(resumed_state)
        try:
            # (split of an empty tensor gives one empty chunk: no input nodes, no batches)
            for index, batch_seeds in enumerate(seeds.split(self.batch_size) if seeds.numel() else ()):
                if index >= resume_at:
                    self._position = index + 1
                    yield self._sample(batch_seeds)
        finally:  # the epoch ended (or was abandoned): the next one starts afresh
            self._position = 0

    def state_dict(self) -> Dict[str, Any]:
        """Where the current epoch stands: batches handed out, the generator's state now and at the epoch's start.

        With `load_state_dict` it resumes an epoch exactly (same seed order, same later draws).
        """
        return {"position": self._position, "epoch_start": self._epoch_start, "generator": self._rng().get_state()}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        if set(state) != {"position", "epoch_start", "generator"}:
            raise ValueError(f"state must be a NeighborSampler.state_dict(), got keys {sorted(state)}")
        self._position, self._epoch_start = int(state["position"]), state["epoch_start"]
        self._rng().set_state(state["generator"])

    def _rng(self) -> torch.Generator:
        """The generator every draw uses: ``generator``, else torch's default one on this device."""
        if self.generator is not None:
            return self.generator
        if self.device.type == "cuda":
            return torch.cuda.default_generators[self.device.index if self.device.index is not None else torch.cuda.current_device()]
        return torch.default_generator

    def sample(self, seeds: Tensor) -> Data:
        """The sampled subgraph of the ``[B]`` distinct int64 global node ids ``seeds`` (see class doc)."""
        seeds = _check_node_ids(seeds, self.num_nodes, self.device, "seeds")
        return self._sample(seeds)

    def _sample(self, seeds: Tensor) -> Data:
        # index_select / index_copy_ rather than tensor[index]: several times faster on CPU.
        local_id = self._local_id
        local_id.index_copy_(0, seeds, torch.arange(seeds.numel(), device=self.device))
        hop_nodes: List[Tensor] = [seeds]
        hop_edges: List[Tensor] = []
        num_sampled = seeds.numel()
        for fanout in self.num_neighbors:
            csr_position = self._sample_hop(hop_nodes[-1], fanout)
            hop_edges.append(csr_position)
            reached = self._first_unseen(self.csr_source.index_select(0, csr_position))
            local_id.index_copy_(0, reached, torch.arange(num_sampled, num_sampled + reached.numel(), device=self.device))
            num_sampled += reached.numel()
            hop_nodes.append(reached)

        n_id = torch.cat(hop_nodes)
        csr_position = torch.cat(hop_edges) if hop_edges else seeds.new_empty(0)
        edge_index = torch.stack([
            local_id.index_select(0, self.csr_source.index_select(0, csr_position)),
            local_id.index_select(0, self.csr_target.index_select(0, csr_position)),
        ])
        local_id.index_fill_(0, n_id, -1)
        e_id = self.csr_edge_id.index_select(0, csr_position)

        data = Data(edge_index=edge_index, num_nodes=n_id.numel())
        data.n_id, data.e_id, data.batch_size = n_id, e_id, seeds.numel()
        data.num_sampled_nodes = [nodes.numel() for nodes in hop_nodes]
        data.num_sampled_edges = [edges.numel() for edges in hop_edges]
        if self.x is not None:
            data.x = self.x.index_select(0, n_id.to(self.x.device))
        if self.y is not None:
            data.y = self.y.index_select(0, n_id.to(self.y.device))
        if self.edge_attr is not None:
            data.edge_attr = self.edge_attr.index_select(0, e_id.to(self.edge_attr.device))
        return data

    def _first_unseen(self, sources: Tensor) -> Tensor:
        """The distinct nodes of ``sources [S]`` without a local id, in order of first appearance.

        Sort-free: each unseen node's table entry (free until the caller assigns it) receives
        the smallest position at which it occurs, and a position is kept when it is that minimum.
        """
        unseen = sources.masked_select(self._local_id.index_select(0, sources) < 0)
        position = torch.arange(unseen.numel(), device=self.device)
        self._local_id.index_fill_(0, unseen, unseen.numel())
        self._local_id.scatter_reduce_(0, unseen, position, reduce="amin")
        return unseen.masked_select(self._local_id.index_select(0, unseen) == position)

    def _sample_hop(self, frontier: Tensor, fanout: int) -> Tensor:
        """CSR positions ``[E_h]`` of the in-edges sampled for the ``[F]`` nodes ``frontier``.

        Nodes with in-degree ``d <= fanout`` keep all their in-edges; the others draw ``fanout``
        of them uniformly without replacement, by sorting random keys when
        ``d <= HUB_FACTOR · fanout`` and by Floyd's algorithm above, so that a hub costs
        O(fanout²) instead of O(d log d).
        """
        start = self.rowptr.index_select(0, frontier)
        degree = self.rowptr.index_select(0, frontier + 1) - start
        if fanout < 0:
            return _concat_ranges(start, degree)[0]
        keep_all = degree <= fanout
        hub = degree > HUB_FACTOR * fanout
        moderate = ~keep_all & ~hub
        return torch.cat([
            _concat_ranges(start[keep_all], degree[keep_all])[0],
            self._draw_by_sorting(start[moderate], degree[moderate], fanout),
            self._draw_by_floyd(start[hub], degree[hub], fanout),
        ])

    def _draw_by_sorting(self, start: Tensor, degree: Tensor, fanout: int) -> Tensor:
        """``fanout`` positions of each range ``start[s] + [0, degree[s])``, uniform without replacement.

        Every candidate gets the key ``s · 2^32 + U``, ``U`` uniform 32-bit: one sort groups the
        candidates by range in a uniformly random order, and the first ``fanout`` of each are kept.
        """
        candidates, segment, rank = _concat_ranges(start, degree)
        random_bits = torch.randint(
            0, 2**_RANDOM_BITS, candidates.shape, generator=self.generator, device=self.device
        )
        order = torch.argsort((segment << _RANDOM_BITS) | random_bits)
        # Sorting by segment first leaves every segment where it was, so `rank` still applies.
        return candidates.index_select(0, order.masked_select(rank < fanout))

    def _draw_by_floyd(self, start: Tensor, degree: Tensor, fanout: int) -> Tensor:
        """Same draw as `_draw_by_sorting` by Floyd's algorithm, vectorised over the ranges.

        Step ``t = 0 .. fanout - 1`` draws ``r`` uniform in ``[0, u]`` with ``u = d - fanout + t``
        and takes ``r``, or ``u`` when ``r`` was already taken; the taken set is then a uniform
        ``fanout``-subset of ``[0, d)`` (Bentley & Floyd 1987). The loop runs over steps, not nodes.
        """
        taken = torch.empty(degree.numel(), fanout, dtype=torch.long, device=self.device)
        for step in range(fanout):
            upper = degree - fanout + step
            uniform = torch.rand(degree.numel(), dtype=torch.float64, generator=self.generator, device=self.device)
            draw = (uniform * (upper + 1)).long().minimum(upper)
            repeated = (taken[:, :step] == draw.unsqueeze(1)).any(dim=1)
            taken[:, step] = torch.where(repeated, upper, draw)
        return (start.unsqueeze(1) + taken).flatten()


def _concat_ranges(start: Tensor, length: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Concatenation of the ranges ``start[s] .. start[s] + length[s] - 1``, all ``[sum(length)]``.

    Returns (values, segment ``s`` of each value, rank of each value inside its range).
    """
    total = int(length.sum()) if length.numel() else 0
    segment = torch.repeat_interleave(torch.arange(length.numel(), device=length.device), length, output_size=total)
    segment_start = torch.cumsum(length, 0) - length
    rank = torch.arange(total, device=length.device) - segment_start.index_select(0, segment)
    return start.index_select(0, segment) + rank, segment, rank


def check_num_neighbors(num_neighbors: Sequence[int]) -> List[int]:
    """``num_neighbors`` as a list of fanouts per hop, each ``>= 0`` or ``-1`` (all neighbours)."""
    if isinstance(num_neighbors, (int, Tensor)) or not isinstance(num_neighbors, Sequence):
        raise TypeError(f"num_neighbors must be a list of ints (fanout per hop), got {type(num_neighbors).__name__}")
    return [check_size(fanout, "num_neighbors", minimum=-1) for fanout in num_neighbors]


def _check_input_nodes(input_nodes: Optional[Tensor], num_nodes: int, device: torch.device) -> Tensor:
    if input_nodes is None:
        return torch.arange(num_nodes, device=device)
    if isinstance(input_nodes, Tensor) and input_nodes.dtype == torch.bool:
        if input_nodes.shape != (num_nodes,):
            raise ValueError(f"input_nodes as a mask must have shape [num_nodes]=[{num_nodes}], got {list(input_nodes.shape)}")
        return input_nodes.to(device).nonzero().flatten()
    return _check_node_ids(input_nodes, num_nodes, device, "input_nodes")


def _check_node_ids(ids: Tensor, num_nodes: int, device: torch.device, name: str) -> Tensor:
    if not isinstance(ids, Tensor) or ids.dtype not in (torch.int64, torch.int32):
        described = ids.dtype if isinstance(ids, Tensor) else type(ids).__name__
        mask = " (or a bool mask)" if name == "input_nodes" else ""
        raise TypeError(f"{name} must be an int64 tensor of node ids{mask}, got {described}")
    if ids.dim() != 1:
        raise ValueError(f"{name} must have shape [M], got {list(ids.shape)}")
    ids = ids.to(device=device, dtype=torch.long)
    if ids.numel():
        if int(ids.min()) < 0 or int(ids.max()) >= num_nodes:
            raise ValueError(f"{name} must lie in [0, {num_nodes}), got range [{int(ids.min())}, {int(ids.max())}]")
        if torch.unique(ids).numel() != ids.numel():
            raise ValueError(f"{name} must not contain repeated node ids")
    return ids


def _check_rows(value: Optional[Tensor], rows: int, name: str, rows_name: str) -> Optional[Tensor]:
    if value is None:
        return None
    if not isinstance(value, Tensor):
        raise TypeError(f"{name} must be a tensor, got {type(value).__name__}")
    if value.dim() == 0 or value.size(0) != rows:
        raise ValueError(f"{name} must have {rows_name}={rows} rows, got shape {list(value.shape)}")
    return value
