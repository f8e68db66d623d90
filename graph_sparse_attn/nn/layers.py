"""Transformer blocks over sparse attention patterns: fixed, learnable (gated) or dynamic (kNN)."""
from __future__ import annotations

from typing import Optional, Tuple, Union

import torch
from torch import Tensor, nn

from ..ops import CSRPattern
from ..ops.attention import check_attention_options
from ..ops.dispatch import check_backend
from ..patterns._utils import check_size
from ..patterns.dynamic import METRICS, knn
from ..ops.edge_features import edge_feature_attention
from .dropout import Dropout

Pattern = Union[Tensor, CSRPattern]
# Block normalisations: pre-norm LayerNorm, or post-norm BatchNorm over nodes (GraphGPS).
NORMS = {"layer": nn.LayerNorm, "batch": nn.BatchNorm1d}
# Feed-forward activations: GELU (Transformers), or ReLU (GraphGPS's layers).
ACTIVATIONS = {"gelu": nn.GELU, "relu": nn.ReLU}


def check_heads(dim: int, heads: int, dim_name: str = "dim") -> None:
    """Refuse a width ``dim`` (called ``dim_name`` by the caller) that ``heads`` heads do not split evenly."""
    if isinstance(dim, bool) or isinstance(heads, bool) or not isinstance(dim, int) or not isinstance(heads, int):
        raise TypeError(f"{dim_name} and heads must be ints, got {dim!r} and {heads!r}")
    if dim <= 0 or heads <= 0 or dim % heads:
        raise ValueError(f"{dim_name} ({dim}) must be a positive multiple of heads ({heads})")


def check_activation(activation: str) -> None:
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {tuple(ACTIVATIONS)}, got {activation!r}")


class FeedForward(nn.Module):
    """Position-wise MLP ``Linear(dim, hidden) → activation → Dropout → Linear(hidden, dim)``: ``[N, dim] → [N, dim]``."""

    def __init__(self, dim: int, hidden: int, dropout: float = 0.0, activation: str = "gelu") -> None:
        super().__init__()
        check_size(dim, "dim", minimum=1)
        check_size(hidden, "hidden", minimum=1)
        check_activation(activation)
        self.net = nn.Sequential(nn.Linear(dim, hidden), ACTIVATIONS[activation](), Dropout(dropout), nn.Linear(hidden, dim))

    def reset_parameters(self) -> None:
        self.net[0].reset_parameters()
        self.net[3].reset_parameters()

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class SparseMultiheadAttention(nn.Module):
    r"""Multi-head attention over a sparse pattern with input and output projections.

    .. math::
        \mathrm{Attn}(\mathbf{X})_i = \mathbf{W}_O \big\Vert_{h} \sum_{j \in \mathcal{N}(i)}
        \alpha^h_{ij}\,(\mathbf{v}^h_j + \mathbf{W}^h_E \mathbf{e}_{ij})

    with :math:`\alpha^h_{ij} = \mathrm{softmax}_j((\mathbf{q}^h_i)^\top(\mathbf{k}^h_j + \mathbf{W}^h_E
    \mathbf{e}_{ij})/\sqrt{C} + b_{ij})`, optionally gated (see :func:`~graph_sparse_attn.sparse_attention`);
    edge features enter as in :func:`~graph_sparse_attn.ops.edge_features.edge_feature_attention` (no
    ``[E, H, C]`` tensor above ``E·H·C = 2²⁴``).

    ``backend`` picks the kernel as in :func:`~graph_sparse_attn.sparse_attention` (default ``"auto"``).

    Shapes: ``forward(x [N, dim], edge_index [2, E] | CSRPattern, edge_attr [E, edge_dim] = None,
    edge_gate = None, edge_bias = None, edge_attr_index [E] = None) -> [N, dim]``; with ``edge_attr_index``,
    ``edge_attr`` is a table ``[U, edge_dim]`` of distinct features (see
    :func:`~graph_sparse_attn.ops.edge_features.edge_feature_attention`).
    """

    def __init__(self, dim: int, heads: int, *, edge_dim: Optional[int] = None, dropout: float = 0.0, gate_mode: str = "scale",
                 backend: str = "auto") -> None:
        super().__init__()
        check_heads(dim, heads)
        check_attention_options(dropout, gate_mode)
        if edge_dim is not None and (isinstance(edge_dim, bool) or not isinstance(edge_dim, int) or edge_dim <= 0):
            raise ValueError(f"edge_dim must be a positive int or None, got {edge_dim!r}")
        check_backend(backend)
        self.dim, self.heads, self.dropout, self.gate_mode, self.backend = dim, heads, dropout, gate_mode, backend
        self.qkv = nn.Linear(dim, 3 * dim)
        self.lin_edge = nn.Linear(edge_dim, dim, bias=False) if edge_dim else None
        self.out = nn.Linear(dim, dim)

    def reset_parameters(self) -> None:
        for lin in (self.qkv, self.lin_edge, self.out):
            if lin is not None:
                lin.reset_parameters()

    def project(self, x: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        """Queries, keys and values ``[N, H, C]``."""
        if x.dim() != 2 or x.size(1) != self.dim:
            raise ValueError(f"x must have shape [N, dim]=[N, {self.dim}], got {list(x.shape)}")
        shape = (x.size(0), self.heads, self.dim // self.heads)
        return tuple(t.reshape(shape) for t in self.qkv(x).chunk(3, dim=-1))

    def attend(self, query: Tensor, key: Tensor, value: Tensor, edge_index: Pattern, edge_attr: Optional[Tensor] = None,
               edge_gate: Optional[Tensor] = None, edge_bias: Optional[Tensor] = None, edge_attr_index: Optional[Tensor] = None) -> Tensor:
        if (edge_attr is not None or edge_attr_index is not None) and self.lin_edge is None:
            raise ValueError("edge_attr/edge_attr_index were given but the attention has no edge_dim: build it with edge_dim=F")
        edge_weight = None if self.lin_edge is None else self.lin_edge.weight.view(self.heads, self.dim // self.heads, -1)
        out, _ = edge_feature_attention(
            query, key, value, edge_index, edge_attr, edge_weight, edge_gate=edge_gate, edge_bias=edge_bias,
            gate_mode=self.gate_mode, dropout=self.dropout, training=self.training, backend=self.backend,
            edge_attr_index=edge_attr_index,
        )
        return self.out(out.reshape(query.size(0), self.dim))

    def forward(self, x: Tensor, edge_index: Pattern, edge_attr: Optional[Tensor] = None,
                edge_gate: Optional[Tensor] = None, edge_bias: Optional[Tensor] = None, edge_attr_index: Optional[Tensor] = None) -> Tensor:
        return self.attend(*self.project(x), edge_index, edge_attr, edge_gate, edge_bias, edge_attr_index)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, heads={self.heads}, edge_dim={None if self.lin_edge is None else self.lin_edge.in_features}"


class KNNAttention(SparseMultiheadAttention):
    r"""Attention over a pattern generated from the current queries (the "Generate(Q, K, V)" step).

    Each forward, every query attends to the ``k`` keys most similar to it (``metric`` of
    :func:`~graph_sparse_attn.patterns.knn`, over all heads' channels concatenated) within
    its own sequence/graph of ``batch``. The selection is not differentiated; gradients flow
    through the attention weights on the selected edges.

    Shapes: ``forward(x [N, dim], batch [N] = None) -> [N, dim]``.
    """

    def __init__(self, dim: int, heads: int, k: int, *, metric: str = "dot", dropout: float = 0.0, backend: str = "auto") -> None:
        super().__init__(dim, heads, dropout=dropout, backend=backend)
        check_size(k, "k", minimum=1)
        if metric not in METRICS:
            raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
        self.k, self.metric = k, metric

    def forward(self, x: Tensor, batch: Optional[Tensor] = None) -> Tensor:
        query, key, value = self.project(x)
        with torch.no_grad():
            flat = lambda t: t.detach().flatten(1)  # noqa: E731
            edge_index = knn(flat(query), flat(key), self.k, batch=batch, key_batch=batch, metric=self.metric)
        return self.attend(query, key, value, edge_index)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, heads={self.heads}, k={self.k}, metric={self.metric!r}"


class SparseTransformerLayer(nn.Module):
    r"""Transformer block with sparse attention:

    .. math::
        \mathbf{h} = \mathbf{x} + \mathrm{Drop}(\mathrm{Attn}(\mathrm{LN}(\mathbf{x}))),\qquad
        \mathbf{x}' = \mathbf{h} + \mathrm{Drop}(\mathrm{FFN}(\mathrm{LN}(\mathbf{h})))

    With ``norm="batch"`` the block is GraphGPS's post-norm form instead, BatchNorm after each
    residual sum (the local branch normalised on its own, then added):

    .. math::
        \mathbf{h} = \mathrm{BN}(\mathbf{x} + \mathrm{Drop}(\mathrm{Attn}(\mathbf{x})))
        \;[+\; \mathrm{BN}(\mathbf{x} + \mathrm{Drop}(\mathrm{MPNN}(\mathbf{x})))],\qquad
        \mathbf{x}' = \mathrm{BN}(\mathbf{h} + \mathrm{Drop}(\mathrm{FFN}(\mathbf{h})))

    ``Attn`` is :class:`SparseMultiheadAttention` over the given pattern (with optional edge
    features, additive edge bias and edge gates), or, with ``knn=k``, :class:`KNNAttention`
    over a pattern generated from the queries each forward.
    Batched graphs need no padding: the pattern keeps each sequence/graph to itself.

    Args:
        dim: model width.
        heads: attention heads (``dim`` divisible by it).
        ffn_dim: hidden width of the feed-forward block (default ``4 * dim``).
        activation: the feed-forward block's, ``"gelu"`` or ``"relu"`` (GraphGPS).
        dropout: dropout after attention and feed-forward.
        attn_dropout: dropout of the attention weights.
        edge_dim: edge feature size for the fixed-pattern attention.
        gate_mode: how ``edge_gate`` enters the logits (``"scale"`` or ``"log"``).
        knn: build a dynamic kNN pattern with this many keys per query instead.
        local: a message-passing layer ``local(h, local_edge_index, local_edge_attr) -> [N, dim]``
            run in parallel with attention on the same input (GraphGPS-style hybrid); pre-norm:
            :math:`\mathbf{h} = \mathbf{x} + \mathrm{Drop}(\mathrm{Attn}(\mathrm{LN}\,\mathbf{x})) + \mathrm{Drop}(\mathrm{MPNN}(\mathrm{LN}\,\mathbf{x}))`.
        norm: ``"layer"`` (pre-norm LayerNorm) or ``"batch"`` (post-norm BatchNorm, as GraphGPS).
        backend: attention kernel, as in :func:`~graph_sparse_attn.sparse_attention` (``"auto"``).

    Shapes: ``forward(x [N, dim], edge_index [2, E] | CSRPattern | None, batch [N] = None, ...) -> [N, dim]``.
    """

    def __init__(
        self,
        dim: int,
        heads: int,
        *,
        ffn_dim: Optional[int] = None,
        dropout: float = 0.0,
        attn_dropout: float = 0.0,
        edge_dim: Optional[int] = None,
        gate_mode: str = "scale",
        knn: Optional[int] = None,
        local: Optional[nn.Module] = None,
        norm: str = "layer",
        backend: str = "auto",
        activation: str = "gelu",
    ) -> None:
        super().__init__()
        check_heads(dim, heads)
        if knn is not None and (edge_dim is not None or gate_mode != "scale"):
            raise ValueError("knn attention builds its pattern from the queries: edge_dim and gate_mode do not apply with it")
        if ffn_dim is not None and (isinstance(ffn_dim, bool) or not isinstance(ffn_dim, int) or ffn_dim <= 0):
            raise ValueError(f"ffn_dim must be a positive int or None (4 * dim), got {ffn_dim!r}")
        if norm not in NORMS:
            raise ValueError(f"norm must be one of {tuple(NORMS)}, got {norm!r}")
        self.dim, self.heads, self.norm_kind = dim, heads, norm
        self.norm_attn = NORMS[norm](dim)
        if knn is None:
            self.attn = SparseMultiheadAttention(dim, heads, edge_dim=edge_dim, dropout=attn_dropout, gate_mode=gate_mode,
                                                 backend=backend)
        else:
            self.attn = KNNAttention(dim, heads, knn, dropout=attn_dropout, backend=backend)
        self.local = local
        # Post-norm normalises the local branch's residual sum on its own (GraphGPS); pre-norm
        # feeds both branches the same normalised input.
        self.norm_local = NORMS[norm](dim) if local is not None and norm == "batch" else None
        self.norm_ffn = NORMS[norm](dim)
        self.ffn = FeedForward(dim, ffn_dim or 4 * dim, dropout, activation)
        self.dropout = Dropout(dropout)

    @property
    def is_dynamic(self) -> bool:
        return isinstance(self.attn, KNNAttention)

    def reset_parameters(self) -> None:
        for module in (self.norm_attn, self.attn, self.norm_local, self.norm_ffn, self.ffn):
            if module is not None:
                module.reset_parameters()
        if self.local is not None:
            # A user's local branch need not define reset_parameters: reset the submodules that do.
            owners = [self.local] if hasattr(self.local, "reset_parameters") else self.local.modules()
            for module in owners:
                if hasattr(module, "reset_parameters"):
                    module.reset_parameters()

    def forward(
        self,
        x: Tensor,
        edge_index: Optional[Pattern] = None,
        batch: Optional[Tensor] = None,
        *,
        edge_attr: Optional[Tensor] = None,
        edge_attr_index: Optional[Tensor] = None,
        edge_bias: Optional[Tensor] = None,
        edge_gate: Optional[Tensor] = None,
        local_edge_index: Optional[Tensor] = None,
        local_edge_attr: Optional[Tensor] = None,
    ) -> Tensor:
        if self.local is not None and local_edge_index is None:
            raise ValueError("local_edge_index is required when the layer has a local message-passing branch")
        if self.local is None and (local_edge_index is not None or local_edge_attr is not None):
            raise ValueError("local_edge_index/local_edge_attr were given but the layer has no local branch: build it with local=")
        pre = self.norm_kind == "layer"
        h = self.norm_attn(x) if pre else x
        if self.is_dynamic:
            given = [name for name, value in (("edge_index", edge_index), ("edge_attr", edge_attr), ("edge_attr_index", edge_attr_index),
                                              ("edge_bias", edge_bias), ("edge_gate", edge_gate)) if value is not None]
            if given:
                raise ValueError(f"{', '.join(given)}: not used by a knn layer, which builds its pattern from the queries")
            attended = self.attn(h, batch)
        else:
            if edge_index is None:
                raise ValueError("edge_index is required for a fixed-pattern SparseTransformerLayer")
            attended = self.attn(h, edge_index, edge_attr, edge_gate=edge_gate, edge_bias=edge_bias, edge_attr_index=edge_attr_index)
        out = x + self.dropout(attended)
        if not pre:
            out = self.norm_attn(out)
        if self.local is not None:
            local = self.dropout(self.local(h, local_edge_index, local_edge_attr))
            out = out + local if pre else out + self.norm_local(x + local)
        if pre:
            return out + self.dropout(self.ffn(self.norm_ffn(out)))
        return self.norm_ffn(out + self.dropout(self.ffn(out)))

    def extra_repr(self) -> str:
        return f"dim={self.dim}, heads={self.heads}, norm={self.norm_kind!r}"
