"""`GraphTransformer`: sparse-attention Transformer for node- and graph-level tasks."""
from __future__ import annotations

from typing import Optional, Tuple, Union

import torch
from torch import Tensor, nn
from torch_geometric.nn import GINEConv, global_add_pool, global_mean_pool

from ..ops import CSRPattern
from ..patterns import add_virtual_nodes, expander, k_hop
from .layers import SparseTransformerLayer

ATTENTION_PATTERNS = ("graph", "k_hop", "exphormer")
# Edge types of the attention pattern; each gets a learned embedding added to its edge features.
GRAPH_EDGE, SELF_LOOP, HOP_EDGE, EXPANDER_EDGE, VIRTUAL_EDGE = range(5)


class GraphTransformer(nn.Module):
    r"""Graph Transformer: encoders → ``depth`` sparse-attention blocks → node or graph head.

    Attention runs over a sparse pattern built per batch from the graph itself:

    * ``"graph"``: the graph's edges plus self loops;
    * ``"k_hop"``: every pair within ``k_hops`` hops (:func:`~graph_sparse_attn.patterns.k_hop`);
    * ``"exphormer"``: graph edges + self loops + a random ``expander_degree``-regular expander
      + ``num_virtual`` virtual nodes per graph connected both ways (Shirzad et al. 2023).

    Each attention edge carries features: the encoded bond/edge features for graph edges, and
    a learned embedding of its type (graph edge, self loop, hop, expander, virtual). With
    ``gps=True`` every block also runs a local GINE message-passing layer on the graph's edges
    in parallel with attention (GraphGPS, Rampášek et al. 2022).

    Args:
        in_channels: node feature size, or ``"atom"`` for OGB molecules (``AtomEncoder``).
        hidden_channels: model width. out_channels: outputs per node/graph.
        depth, heads: blocks and attention heads.
        task: ``"graph"`` (pooled, ``[B, out]``) or ``"node"`` (``[N, out]``).
        attention: pattern name (see above). k_hops, expander_degree, num_virtual: its parameters.
        edge_dim: edge feature size, ``"bond"`` for OGB molecules (``BondEncoder``), or None.
        pe_dim: size of a positional/structural encoding passed as ``pe`` (e.g. PyG's
            ``AddLaplacianEigenvectorPE`` or ``AddRandomWalkPE`` output), 0 for none.
        lap_pe: the encoding is Laplacian eigenvectors: flip their signs at random in training.
        gps: add the local message-passing branch.
        pooling: ``"mean"`` or ``"sum"`` for graph tasks.
        dropout, attn_dropout: residual/FFN dropout and attention-weight dropout.

    Shapes: ``forward(x [N, F] (long [N, 9] for atoms), edge_index [2, E], edge_attr [E, F_e] = None,
    batch [N] = None, pe [N, pe_dim] = None) -> [B, out]`` or ``[N, out]``.
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
        edge_dim: Union[int, str, None] = None,
        pe_dim: int = 0,
        lap_pe: bool = False,
        gps: bool = False,
        pooling: str = "mean",
        dropout: float = 0.0,
        attn_dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if task not in ("graph", "node"):
            raise ValueError(f"task must be 'graph' or 'node', got {task!r}")
        if attention not in ATTENTION_PATTERNS:
            raise ValueError(f"attention must be one of {ATTENTION_PATTERNS}, got {attention!r}")
        if pooling not in ("mean", "sum"):
            raise ValueError(f"pooling must be 'mean' or 'sum', got {pooling!r}")
        if min(hidden_channels, out_channels, depth, heads) <= 0 or min(k_hops, num_virtual, expander_degree, pe_dim) < 0:
            raise ValueError("sizes must be positive (k_hops, num_virtual, expander_degree and pe_dim non-negative)")
        self.in_channels, self.hidden_channels, self.out_channels = in_channels, hidden_channels, out_channels
        self.depth, self.heads, self.task, self.attention = depth, heads, task, attention
        self.k_hops, self.expander_degree, self.num_virtual = k_hops, expander_degree, num_virtual
        self.edge_dim, self.pe_dim, self.lap_pe, self.gps, self.pooling = edge_dim, pe_dim, lap_pe, gps, pooling

        self.node_encoder = _node_encoder(in_channels, hidden_channels)
        self.edge_encoder = _edge_encoder(edge_dim, hidden_channels)
        self.edge_type = nn.Embedding(5, hidden_channels)
        self.pe_encoder = nn.Linear(pe_dim, hidden_channels) if pe_dim else None
        self.virtual = nn.Embedding(num_virtual, hidden_channels) if attention == "exphormer" and num_virtual else None
        self.layers = nn.ModuleList(
            SparseTransformerLayer(
                hidden_channels, heads, dropout=dropout, attn_dropout=attn_dropout, edge_dim=hidden_channels,
                local=_gine(hidden_channels) if gps else None,
            )
            for _ in range(depth)
        )
        self.norm = nn.LayerNorm(hidden_channels)
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

    def attention_pattern(
        self, edge_index: Tensor, num_nodes: int, batch: Tensor, edge_features: Tensor
    ) -> Tuple[Tensor, Tensor, int, Tensor]:
        """Build the attention edges for a batch.

        Returns ``(att_edge_index [2, E'], att_edge_attr [E', hidden], total_nodes, total_batch)``
        where virtual nodes (if any) are appended after the ``num_nodes`` real ones.
        """
        device = edge_index.device
        if self.attention == "k_hop":
            hops = k_hop(edge_index, self.k_hops, num_nodes)
            parts = [(hops, self._hop_features(hops, edge_index, edge_features, num_nodes))]
            types = [HOP_EDGE]
        else:
            loops = torch.arange(num_nodes, device=device).repeat(2, 1)
            parts = [(edge_index, edge_features), (loops, None)]
            types = [GRAPH_EDGE, SELF_LOOP]
        total_nodes, total_batch = num_nodes, batch
        if self.attention == "exphormer":
            if self.expander_degree:
                # A fresh expander per training step; a fixed one in evaluation, so predictions are repeatable.
                generator = None if self.training else torch.Generator(device=device).manual_seed(0)
                parts.append((expander(num_nodes, self.expander_degree, generator=generator, batch=batch), None))
                types.append(EXPANDER_EDGE)
            if self.virtual is not None:
                total_nodes, virtual_edges, total_batch = add_virtual_nodes(num_nodes, self.num_virtual, batch=batch)
                parts.append((virtual_edges, None))
                types.append(VIRTUAL_EDGE)
        att_edges = torch.cat([edges for edges, _ in parts], dim=1)
        att_attr = torch.cat(
            [
                self.edge_type.weight[kind].expand(edges.size(1), -1) + (0 if feats is None else feats)
                for (edges, feats), kind in zip(parts, types)
            ]
        )
        return att_edges, att_attr, total_nodes, total_batch

    def _hop_features(self, hops: Tensor, edge_index: Tensor, edge_features: Tensor, num_nodes: int) -> Tensor:
        """Edge features on k-hop pairs: the graph edge's encoded features (+ its type) where one exists."""
        hop_keys = hops[1] * num_nodes + hops[0]  # sorted: k_hop returns (target, source) order
        position = torch.searchsorted(hop_keys, edge_index[1] * num_nodes + edge_index[0])
        direct = edge_features + self.edge_type.weight[GRAPH_EDGE] - self.edge_type.weight[HOP_EDGE]
        return torch.zeros(hops.size(1), self.hidden_channels, dtype=edge_features.dtype, device=hops.device).index_add(0, position, direct)

    def forward(
        self,
        x: Tensor,
        edge_index: Tensor,
        edge_attr: Optional[Tensor] = None,
        batch: Optional[Tensor] = None,
        pe: Optional[Tensor] = None,
    ) -> Tensor:
        num_nodes = x.size(0)
        batch = torch.zeros(num_nodes, dtype=torch.long, device=x.device) if batch is None else batch
        h = self.node_encoder(x)
        if self.pe_encoder is not None:
            if pe is None or pe.shape != (num_nodes, self.pe_dim):
                raise ValueError(f"pe must have shape [N, pe_dim]=[{num_nodes}, {self.pe_dim}]")
            if self.lap_pe and self.training:
                pe = pe * (torch.randint(0, 2, (1, self.pe_dim), device=pe.device) * 2 - 1)
            h = h + self.pe_encoder(pe)
        if self.edge_encoder is not None:
            if edge_attr is None:
                raise ValueError(f"edge_attr is required: the model was built with edge_dim={self.edge_dim!r}")
            edge_features = self.edge_encoder(edge_attr)
        else:
            edge_features = torch.zeros(edge_index.size(1), self.hidden_channels, device=x.device, dtype=h.dtype)

        att_edges, att_attr, total_nodes, total_batch = self.attention_pattern(edge_index, num_nodes, batch, edge_features)
        if total_nodes > num_nodes:
            num_graphs = int(batch.max()) + 1 if num_nodes else 0
            h = torch.cat([h, self.virtual.weight.repeat(num_graphs, 1)])
        pattern = CSRPattern.from_edge_index(att_edges, total_nodes)  # sorted once for all layers
        for layer in self.layers:
            h = layer(h, pattern, total_batch, edge_attr=att_attr, local_edge_index=edge_index, local_edge_attr=edge_features)
        h = self.norm(h[:num_nodes])
        if self.task == "graph":
            h = (global_mean_pool if self.pooling == "mean" else global_add_pool)(h, batch)
        return self.head(h)

    def extra_repr(self) -> str:
        return (
            f"in_channels={self.in_channels!r}, hidden_channels={self.hidden_channels}, out_channels={self.out_channels}, "
            f"depth={self.depth}, heads={self.heads}, task={self.task!r}, attention={self.attention!r}, gps={self.gps}"
        )


def _node_encoder(in_channels: Union[int, str], hidden: int) -> nn.Module:
    if in_channels == "atom":
        from ogb.graphproppred.mol_encoder import AtomEncoder

        return AtomEncoder(hidden)
    if not isinstance(in_channels, int) or in_channels <= 0:
        raise ValueError(f"in_channels must be a positive int or 'atom', got {in_channels!r}")
    return nn.Linear(in_channels, hidden)


def _edge_encoder(edge_dim: Union[int, str, None], hidden: int) -> Optional[nn.Module]:
    if edge_dim is None:
        return None
    if edge_dim == "bond":
        from ogb.graphproppred.mol_encoder import BondEncoder

        return BondEncoder(hidden)
    if not isinstance(edge_dim, int) or edge_dim <= 0:
        raise ValueError(f"edge_dim must be a positive int, 'bond' or None, got {edge_dim!r}")
    return nn.Linear(edge_dim, hidden)


def _gine(hidden: int) -> GINEConv:
    mlp = nn.Sequential(nn.Linear(hidden, hidden), nn.GELU(), nn.Linear(hidden, hidden))
    return GINEConv(mlp, edge_dim=hidden)


def _reset(module: nn.Module) -> None:
    """Reset every leaf layer of ``module`` (OGB's encoders have no reset_parameters of their own)."""
    for child in module.modules():
        if isinstance(child, (nn.Linear, nn.Embedding, nn.LayerNorm)):
            child.reset_parameters()
