"""`GraphTransformer`: sparse-attention Transformer for node- and graph-level tasks."""
from __future__ import annotations

import math
from typing import Optional, Tuple, Union

import torch
from ogb.utils.features import get_atom_feature_dims, get_bond_feature_dims
from torch import Tensor, nn
from torch_geometric.nn import GINConv, GINEConv, global_add_pool, global_mean_pool

from ..ops import CSRPattern
from ..ops.checks import check_on_device
from ..patterns._utils import check_batch, check_flag, check_size
from ..transforms import (
    ATTENTION_PATTERNS,
    NUM_EDGE_TYPES,
    VIRTUAL_EDGE,
    AttentionPattern,
    attention_pattern,
    batch_edge_ids,
    pattern_batch,
    virtual_layout,
)
from .layers import ACTIVATIONS, SparseTransformerLayer, check_activation, check_heads


class GraphTransformer(nn.Module):
    r"""Graph Transformer: encoders → ``depth`` sparse-attention blocks → node or graph head.

    Attention runs over a sparse pattern, carried by the batch (``attn_index``/``attn_type``/
    ``attn_edge`` from the :mod:`graph_sparse_attn.transforms`, e.g. as a dataset's
    ``pre_transform``/``transform``) or, when none is given, built per batch from the graph
    itself by the same recipe (:func:`~graph_sparse_attn.transforms.attention_pattern`):

    * ``"graph"``: the graph's edges plus self loops;
    * ``"k_hop"``: the graph's edges plus every other pair within ``k_hops`` hops, self loops
      included (:func:`~graph_sparse_attn.patterns.k_hop`);
    * ``"exphormer"``: graph edges + self loops + a random ``expander_degree``-regular expander
      + ``num_virtual`` virtual nodes per graph connected both ways (Shirzad et al. 2023);
    * ``"full"``: every pair of nodes of each graph (GraphGPS's full attention; ``n²`` edges a graph).

    Each attention edge carries features: the encoded bond/edge features for graph edges, and
    a learned embedding of its type (graph edge, self loop, hop, expander, virtual). With
    ``gps=True`` every block also runs a local message-passing layer on the graph's edges in
    parallel with attention (GraphGPS, Rampášek et al. 2022): GINE over the encoded edge
    features, or GIN when the model has none (``edge_dim=None``), as GraphGPS chooses.

    Args:
        in_channels: node feature size, or ``"atom"`` for OGB molecules (``AtomEncoder``).
        hidden_channels: model width. out_channels: outputs per node/graph.
        depth, heads: blocks and attention heads.
        task: ``"graph"`` (pooled, ``[B, out]``) or ``"node"`` (``[N, out]``).
        attention: pattern name (see above). k_hops, expander_degree, num_virtual: its parameters.
        expander_seed: seed of the generator the model's own expanders are drawn from in
            training, graph after graph (``None``: the global RNG); equal to
            ``AddExpanderPattern(seed=...)`` drawing the same graphs in the same order.
        edge_dim: edge feature size, ``"bond"`` for OGB molecules (``BondEncoder``), or None.
        pe_dim: size of a positional/structural encoding passed as ``pe`` (e.g. PyG's
            ``AddLaplacianEigenvectorPE`` or ``AddRandomWalkPE`` output), 0 for none.
        lap_pe: the encoding is Laplacian eigenvectors: flip their signs at random in training.
            It enters through ``Linear(pe)``; any other encoding (e.g. RWSE) through
            ``Linear(BatchNorm(pe))``, as GraphGPS's encoders take them.
        gps: add the local message-passing branch.
        pooling: ``"mean"`` or ``"sum"`` for graph tasks.
        norm: ``"layer"`` (pre-norm LayerNorm blocks and a final LayerNorm) or ``"batch"``
            (GraphGPS's post-norm BatchNorm blocks, no final norm); see :class:`SparseTransformerLayer`.
        dropout, attn_dropout: residual/FFN dropout and attention-weight dropout.
        ffn_dim: feed-forward width (default ``4 * hidden_channels``; GraphGPS uses ``2 *``).
        activation: of the feed-forward blocks and the local branch's MLP, ``"gelu"`` or ``"relu"`` (GraphGPS).
        backend: attention kernel, as in :func:`~graph_sparse_attn.sparse_attention` (``"auto"``);
            ``"compiled"`` runs molecule-sized batches in fused CPU kernels (its first step compiles
            them for seconds; ``gsa train`` takes it for long CPU runs).

    Shapes: ``forward(x [N, F] (long [N, 9] for atoms), edge_index [2, E], edge_attr [E, F_e] = None,
    batch [N] = None, pe [N, pe_dim] = None, *, attn_index [2, E'] | CSRPattern = None, attn_type [E'] = None,
    attn_edge [E'] = None, num_graphs: int = None) -> [B, out]`` or ``[N, out]``. A given pattern
    spans ``N + B num_virtual`` nodes (each graph's virtual nodes after its real ones; a
    ``CSRPattern``'s caller order is that of ``attn_type``/``attn_edge``); ``attn_edge`` is graph-local,
    as PyG batches it, so ``edge_index`` must then list its edges graph by graph (as ``Batch`` does;
    without a given pattern any edge order works). With a pattern and ``num_graphs`` given, the
    forward makes no host sync of its own on CUDA: its value checks raise from the device.
    """

    def __init__(
        self,
        in_channels: Union[int, str],
        hidden_channels: int,
        out_channels: int,
        *,
        depth: int = 4,
        heads: int = 4,
        task: str = "graph",
        attention: str = "graph",
        k_hops: int = 2,
        expander_degree: int = 4,
        num_virtual: int = 1,
        expander_seed: Optional[int] = None,
        edge_dim: Union[int, str, None] = None,
        pe_dim: int = 0,
        lap_pe: bool = False,
        gps: bool = False,
        pooling: str = "mean",
        dropout: float = 0.0,
        attn_dropout: float = 0.0,
        norm: str = "layer",
        backend: str = "auto",
        ffn_dim: Optional[int] = None,
        activation: str = "gelu",
    ) -> None:
        super().__init__()
        if task not in ("graph", "node"):
            raise ValueError(f"task must be 'graph' or 'node', got {task!r}")
        if attention not in ATTENTION_PATTERNS:
            raise ValueError(f"attention must be one of {ATTENTION_PATTERNS}, got {attention!r}")
        check_flag(lap_pe, "lap_pe")
        check_flag(gps, "gps")
        if lap_pe and not pe_dim:
            raise ValueError("lap_pe=True needs the encoding's size: pe_dim > 0")
        if pooling not in ("mean", "sum"):
            raise ValueError(f"pooling must be 'mean' or 'sum', got {pooling!r}")
        for name, size, minimum in (("hidden_channels", hidden_channels, 1), ("out_channels", out_channels, 1), ("depth", depth, 1),
                                    ("heads", heads, 1), ("k_hops", k_hops, 1), ("num_virtual", num_virtual, 0),
                                    ("expander_degree", expander_degree, 0), ("pe_dim", pe_dim, 0)):
            check_size(size, name, minimum=minimum)
        check_heads(hidden_channels, heads, "hidden_channels")
        if expander_seed is not None and attention != "exphormer":
            raise ValueError(f"expander_seed applies to attention='exphormer' only, got attention={attention!r}")
        if attention == "exphormer" and expander_degree % 2:
            raise ValueError(f"expander_degree must be even (d / 2 permutations and their inverses), got {expander_degree}")
        self.in_channels, self.hidden_channels, self.out_channels = in_channels, hidden_channels, out_channels
        self.depth, self.heads, self.task, self.attention = depth, heads, task, attention
        self.k_hops, self.expander_degree, self.num_virtual = k_hops, expander_degree, num_virtual
        self.generator = None if expander_seed is None else torch.Generator().manual_seed(expander_seed)
        self.edge_dim, self.pe_dim, self.lap_pe, self.gps, self.pooling = edge_dim, pe_dim, lap_pe, gps, pooling

        self.node_encoder = _node_encoder(in_channels, hidden_channels)
        self.edge_encoder = _edge_encoder(edge_dim, hidden_channels)
        self.edge_type = nn.Embedding(NUM_EDGE_TYPES, hidden_channels)
        # GraphGPS normalises raw structural encodings (RWSE: return probabilities, std ~0.1) with
        # BatchNorm before projecting them; Laplacian eigenvectors enter raw (its LapPE setting).
        self.pe_encoder = nn.Sequential(
            nn.Identity() if lap_pe else nn.BatchNorm1d(pe_dim), nn.Linear(pe_dim, hidden_channels)
        ) if pe_dim else None
        self.virtual = nn.Embedding(num_virtual, hidden_channels) if attention == "exphormer" and num_virtual else None
        self.layers = nn.ModuleList(
            SparseTransformerLayer(
                hidden_channels, heads, dropout=dropout, attn_dropout=attn_dropout, edge_dim=hidden_channels,
                local=_local_gnn(hidden_channels, activation, edge_dim is not None) if gps else None, norm=norm, backend=backend, ffn_dim=ffn_dim,
                activation=activation,
            )
            for _ in range(depth)
        )
        # Post-norm blocks end normalised already.
        self.norm = nn.LayerNorm(hidden_channels) if norm == "layer" else nn.Identity()
        self.head = nn.Sequential(nn.Linear(hidden_channels, hidden_channels), nn.GELU(), nn.Linear(hidden_channels, out_channels))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for module in (self.node_encoder, self.edge_encoder, self.edge_type, self.pe_encoder, self.virtual, self.norm):
            if module is not None:
                _reset(module)
        for layer in self.layers:
            layer.reset_parameters()
        for module in self.head:
            _reset(module)

    def attention_pattern(self, edge_index: Tensor, num_nodes: int, batch: Optional[Tensor] = None,
                          num_graphs: Optional[int] = None, *, local_edges: bool = True) -> AttentionPattern:
        """The model's own pattern for a batch (:func:`~graph_sparse_attn.transforms.attention_pattern`),
        used when ``forward`` is given none (with ``local_edges=False``: its ``edge`` then indexes
        ``edge_index`` in whatever order it lists its edges). Training draws expanders from the
        ``expander_seed`` generator (or the global RNG); evaluation draws each graph's from a
        generator seeded 0, so predictions are repeatable and do not depend on the batch."""
        seed_per_graph = None if self.training else 0
        return attention_pattern(
            edge_index, num_nodes, self.attention, batch=batch, num_graphs=num_graphs, k_hops=self.k_hops,
            expander_degree=self.expander_degree, num_virtual=self.num_virtual,
            generator=self.generator if seed_per_graph is None else None, seed_per_graph=seed_per_graph, local_edges=local_edges,
        )

    def forward(
        self,
        x: Tensor,
        edge_index: Tensor,
        edge_attr: Optional[Tensor] = None,
        batch: Optional[Tensor] = None,
        pe: Optional[Tensor] = None,
        *,
        attn_index: Union[Tensor, CSRPattern, None] = None,
        attn_type: Optional[Tensor] = None,
        attn_edge: Optional[Tensor] = None,
        num_graphs: Optional[int] = None,
    ) -> Tensor:
        self._check_shapes(x, edge_index, edge_attr, batch, pe)
        num_nodes = x.size(0)
        if batch is None:
            if num_graphs not in (None, 1):
                raise ValueError(f"num_graphs={num_graphs} needs a batch vector; without one x is a single graph")
            batch, num_graphs = torch.zeros(num_nodes, dtype=torch.long, device=x.device), 1
        elif num_graphs is None:
            batch = check_batch(batch, num_nodes)  # this path syncs anyway; a given num_graphs keeps it sync-free
            num_graphs = int(batch[-1]) + 1 if num_nodes else 0
        else:
            batch, num_graphs = batch.long(), check_size(num_graphs, "num_graphs")
        num_virtual = self.num_virtual if self.virtual is not None else 0
        total_nodes = num_nodes + num_graphs * num_virtual

        h = self.node_encoder(x)
        if self.pe_encoder is not None:
            if pe is None or pe.shape != (num_nodes, self.pe_dim) or not pe.is_floating_point():
                raise ValueError(f"pe must be floating-point [N, pe_dim]=[{num_nodes}, {self.pe_dim}], got "
                                 f"{None if pe is None else f'{pe.dtype} {list(pe.shape)}'}")
            pe = pe.to(h.dtype)
            if self.lap_pe and self.training:
                pe = pe * (torch.randint(0, 2, (1, self.pe_dim), device=pe.device) * 2 - 1)
            h = h + self.pe_encoder(pe)
        bond_codes = None
        if self.edge_encoder is not None:
            if edge_attr is None:
                raise ValueError(f"edge_attr is required: the model was built with edge_dim={self.edge_dim!r}")
            if self.edge_dim == "bond":
                bond_codes = _bond_codes(edge_attr)
            # The local branch reads per-bond features; attention reads bonds through a table (below).
            edge_features = self.edge_encoder(edge_attr) if self.gps or bond_codes is None else None
        else:
            edge_features = None  # the local branch is then GIN, which reads no edge features

        given_pattern = attn_index is not None
        if attn_index is None:
            if attn_type is not None or attn_edge is not None:
                raise ValueError("attn_type and attn_edge describe an attn_index: pass it too")
            # Edge ids index edge_index itself: no graph-local round trip, which needs edges graph by graph.
            attn_index, attn_type, attn_edge, _ = self.attention_pattern(edge_index, num_nodes, batch, num_graphs, local_edges=False)
        elif attn_type is None or (attn_edge is None and self.edge_encoder is not None):
            raise ValueError("a given attn_index needs attn_type [E'] (and attn_edge [E'] when the model has edge features)")
        # Sorted once per forward; per-edge tensors follow into sorted order once, and every layer
        # gets the sorted view, so no layer permutes edges again.
        span = f"N + B * num_virtual = {total_nodes} nodes (was it built with num_virtual={num_virtual}?)"
        try:
            pattern = attn_index if isinstance(attn_index, CSRPattern) else CSRPattern.from_edge_index(attn_index, total_nodes)
        except ValueError as error:
            raise ValueError(f"attn_index: {error}; it must span {span}") from None
        if pattern.num_dst != total_nodes or pattern.num_src != total_nodes:
            raise ValueError(
                f"attn_index must span {span}, got {pattern.num_src}x{pattern.num_dst}")
        if attn_type.shape != (pattern.num_edges,) or (attn_edge is not None and attn_edge.shape != (pattern.num_edges,)):
            raise ValueError(f"attn_type and attn_edge must have shape [E']=[{pattern.num_edges}]")
        if given_pattern:
            for name, ids in (("attn_type", attn_type), ("attn_edge", attn_edge)):
                if ids is not None and ids.dtype not in (torch.int32, torch.int64):
                    raise TypeError(f"{name} must be an int64 or int32 tensor, got {ids.dtype}")
            check_on_device(((attn_type >= 0) & (attn_type < NUM_EDGE_TYPES)).all(),
                            f"attn_type must hold edge types in [0, {NUM_EDGE_TYPES}) (transforms.GRAPH_EDGE, ...)")
        if num_virtual:  # e.g. a dataset cache processed before AddVirtualNodes joined its pre_transform
            _check_has_virtual_edges(attn_type, num_virtual)
        attn_type = pattern.caller_to_sorted(attn_type)
        if self.edge_encoder is not None:
            edge_id = pattern.caller_to_sorted(attn_edge)
            if given_pattern:  # graph-local, as PyG batches it
                graph = pattern_batch(batch, num_graphs, num_virtual)[pattern.row]
                edge_id = batch_edge_ids(edge_id, graph, edge_index, batch, num_graphs)
        # Categorical edge features (a type, and a bond or none): the layers project a table of the
        # few distinct rows and gather it per edge, instead of projecting every edge.
        if self.edge_encoder is None:
            attn_attr, attn_attr_index = self.edge_type.weight, attn_type
        elif bond_codes is not None:
            attn_attr = self._edge_table()
            # Edges without a bond (edge_id -1) read the appended "none" code, also in a batch without bonds.
            codes = torch.cat([bond_codes, bond_codes.new_full((1,), NUM_BOND_CODES)])
            attn_attr_index = attn_type * (NUM_BOND_CODES + 1) + codes[torch.where(edge_id >= 0, edge_id, bond_codes.numel())]
        else:
            # Edges without a bond (edge_id -1) read an appended zero row, also in a batch without bonds;
            # index_select, not [], so backward is an index_add rather than an accumulating index_put.
            padded = torch.cat([edge_features, edge_features.new_zeros(1, edge_features.size(1))])
            bond = padded.index_select(0, torch.where(edge_id >= 0, edge_id, edge_features.size(0)))
            attn_attr = self.edge_type(attn_type) + bond
            attn_attr_index = None
        pattern = pattern.sorted()

        local_edge_index = edge_index
        if num_virtual:
            real_pos, virtual_pos = virtual_layout(batch, num_graphs, num_virtual)
            h = h.new_empty(total_nodes, h.size(1)).index_copy_(0, real_pos, h).index_copy_(
                0, virtual_pos, self.virtual.weight.repeat(num_graphs, 1))
            local_edge_index = real_pos[edge_index]
        local = {"local_edge_index": local_edge_index, "local_edge_attr": edge_features} if self.gps else {}
        for layer in self.layers:
            h = layer(h, pattern, edge_attr=attn_attr, edge_attr_index=attn_attr_index, **local)
        if num_virtual:
            h = h.index_select(0, real_pos)
        h = self.norm(h)
        if self.task == "graph":
            h = (global_mean_pool if self.pooling == "mean" else global_add_pool)(h, batch, num_graphs)
        return self.head(h)

    def _check_shapes(self, x: Tensor, edge_index: Tensor, edge_attr: Optional[Tensor], batch: Optional[Tensor],
                      pe: Optional[Tensor]) -> None:
        """Refuse inputs that do not fit the model: shapes and dtypes, and atom features' range (see `_check_ogb_features`)."""
        if self.in_channels == "atom":
            if x.dim() != 2 or x.size(1) != NUM_ATOM_FEATURES or x.is_floating_point():
                raise ValueError(f"x must be OGB atom features: long [N, {NUM_ATOM_FEATURES}], got {x.dtype} {list(x.shape)}")
            _check_ogb_features(x, _ATOM_DIMS, "x", "an atom")
        elif x.dim() != 2 or x.size(1) != self.in_channels or not x.is_floating_point():
            raise ValueError(f"x must be floating-point [N, in_channels]=[N, {self.in_channels}], got {x.dtype} {list(x.shape)}")
        if edge_index.dim() != 2 or edge_index.size(0) != 2:
            raise ValueError(f"edge_index must have shape [2, E], got {list(edge_index.shape)}")
        num_edges = edge_index.size(1)
        if edge_attr is not None:
            if self.edge_encoder is None:
                raise ValueError("edge_attr was given but the model has no edge_dim: build it with edge_dim=F (or 'bond')")
            width = len(_BOND_DIMS) if self.edge_dim == "bond" else self.edge_dim
            if edge_attr.dim() != 2 or edge_attr.shape != (num_edges, width):
                raise ValueError(f"edge_attr must have shape [E, {width}]=[{num_edges}, {width}] (one row per edge_index column), "
                                 f"got {list(edge_attr.shape)}")
        if pe is not None and self.pe_encoder is None:
            raise ValueError("pe was given but the model has pe_dim=0: build it with pe_dim=the encoding's size")
        if batch is not None and (batch.dim() != 1 or batch.size(0) != x.size(0) or batch.is_floating_point()):
            raise ValueError(f"batch must be a LongTensor [N]=[{x.size(0)}], got {batch.dtype} {list(batch.shape)}")

    def _edge_table(self) -> Tensor:
        """``[T (B + 1), hidden]`` features of every (edge type, bond code or none) pair: row ``t (B + 1) + b``
        is ``edge_type(t) + BondEncoder(bond b)``, and row ``t (B + 1) + B`` is ``edge_type(t)`` alone."""
        types = self.edge_type.weight
        bonds = self.edge_encoder(_ALL_BONDS.to(types.device))
        bonds = torch.cat([bonds, bonds.new_zeros(1, bonds.size(1))])  # [B + 1, hidden]
        return (types[:, None] + bonds[None]).reshape(-1, types.size(1))

    def extra_repr(self) -> str:
        return (
            f"in_channels={self.in_channels!r}, hidden_channels={self.hidden_channels}, out_channels={self.out_channels}, "
            f"depth={self.depth}, heads={self.heads}, task={self.task!r}, attention={self.attention!r}, gps={self.gps}, "
            f"norm={self.layers[0].norm_kind!r}"
        )


_ATOM_DIMS = tuple(get_atom_feature_dims())
NUM_ATOM_FEATURES = len(_ATOM_DIMS)
# OGB bond features as one code each, b = Σ_f value_f · stride_f, and the table of all codes.
_BOND_DIMS = tuple(get_bond_feature_dims())
NUM_BOND_CODES = math.prod(_BOND_DIMS)
_BOND_STRIDES = torch.tensor([math.prod(_BOND_DIMS[f + 1:]) for f in range(len(_BOND_DIMS))])
_ALL_BONDS = torch.cartesian_prod(*(torch.arange(d) for d in _BOND_DIMS))  # [B, F], row b has code b


def _bond_codes(edge_attr: Tensor) -> Tensor:
    """``[E]`` code of each bond's OGB features ``edge_attr [E, F]`` (long), checked against the feature sizes."""
    if edge_attr.dim() != 2 or edge_attr.size(1) != len(_BOND_DIMS) or edge_attr.is_floating_point():
        raise ValueError(f"edge_attr must be OGB bond features: long [E, {len(_BOND_DIMS)}], got {edge_attr.dtype} {list(edge_attr.shape)}")
    _check_ogb_features(edge_attr, _BOND_DIMS, "edge_attr", "a bond")
    return (edge_attr * _BOND_STRIDES.to(edge_attr.device)).sum(-1)


def _check_has_virtual_edges(attn_type: Tensor, num_virtual: int) -> None:
    """Refuse a given pattern without virtual edges for a model with virtual nodes (they would be isolated)."""
    message = (f"attn_type has no virtual edges but the model has num_virtual={num_virtual}: "
               f"build the pattern with AddVirtualNodes({num_virtual}) (a stale processed/ cache?)")
    if attn_type.numel() == 0:  # an empty batch
        return
    check_on_device((attn_type == VIRTUAL_EDGE).any(), message)


def _check_ogb_features(values: Tensor, dims: Tuple[int, ...], name: str, kind: str) -> None:
    """Refuse categorical features ``[*, F]`` outside ``[0, dims[f])`` (asynchronously on GPUs and under compile)."""
    inside = ((values >= 0) & (values < torch.tensor(dims, device=values.device))).all()
    check_on_device(inside, f"{name} holds {kind} feature outside OGB's feature sizes {list(dims)}")


def _node_encoder(in_channels: Union[int, str], hidden: int) -> nn.Module:
    if in_channels == "atom":
        from ogb.graphproppred.mol_encoder import AtomEncoder

        return AtomEncoder(hidden)
    if isinstance(in_channels, bool) or not isinstance(in_channels, int) or in_channels <= 0:
        raise ValueError(f"in_channels must be a positive int or 'atom', got {in_channels!r}")
    return nn.Linear(in_channels, hidden)


def _edge_encoder(edge_dim: Union[int, str, None], hidden: int) -> Optional[nn.Module]:
    if edge_dim is None:
        return None
    if edge_dim == "bond":
        from ogb.graphproppred.mol_encoder import BondEncoder

        return BondEncoder(hidden)
    if isinstance(edge_dim, bool) or not isinstance(edge_dim, int) or edge_dim <= 0:
        raise ValueError(f"edge_dim must be a positive int, 'bond' or None, got {edge_dim!r}")
    return nn.Linear(edge_dim, hidden)


def _local_gnn(hidden: int, activation: str, edge_features: bool) -> nn.Module:
    """GraphGPS's local branch: GINE over the encoded edge features, or GIN without any (GINE over
    zero features would hold a projection whose weight never gets a gradient)."""
    check_activation(activation)
    mlp = nn.Sequential(nn.Linear(hidden, hidden), ACTIVATIONS[activation](), nn.Linear(hidden, hidden))
    return GINEConv(mlp, edge_dim=hidden) if edge_features else GINConv(mlp)


def _reset(module: nn.Module) -> None:
    """Reset every leaf layer of ``module`` (OGB's encoders have no reset_parameters of their own).

    Embeddings start as OGB's encoders start them, Xavier-uniform: ``nn.Embedding``'s own N(0, 1)
    made the sum of nine atom embeddings ~5x larger than in OGB's models (std 2.7 against 0.5)."""
    for child in module.modules():
        if isinstance(child, nn.Embedding):
            nn.init.xavier_uniform_(child.weight)
        elif isinstance(child, (nn.Linear, nn.LayerNorm, nn.BatchNorm1d)):
            child.reset_parameters()
