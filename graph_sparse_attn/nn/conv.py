"""`SparseAttnConv`: a memory-lean drop-in for PyG's `TransformerConv`."""
from __future__ import annotations

from typing import Optional, Tuple, Union

import torch
from torch import Tensor
from torch_geometric.nn.conv import MessagePassing
from torch_geometric.nn.dense.linear import Linear

from ..ops import CSRPattern
from ..ops.attention import GATE_MODES
from ..ops.edge_features import edge_feature_attention

PairTensor = Tuple[Tensor, Tensor]


class SparseAttnConv(MessagePassing):
    r"""Graph transformer convolution (Shi et al. 2021) on the memory-lean ``csr`` attention kernel.

    .. math::
        \mathbf{x}^{\prime}_i = \mathbf{W}_1 \mathbf{x}_i +
        \sum_{j \in \mathcal{N}(i)} \alpha_{i,j} \left(\mathbf{W}_2 \mathbf{x}_{j}
        + \mathbf{W}_6 \mathbf{e}_{ij}\right),
        \qquad
        \alpha_{i,j} = \textrm{softmax}_j \left(
        \frac{(\mathbf{W}_3\mathbf{x}_i)^{\top} (\mathbf{W}_4\mathbf{x}_j + \mathbf{W}_6 \mathbf{e}_{ij})}
        {\sqrt{d}} \right)

    It has :class:`~torch_geometric.nn.conv.TransformerConv`'s constructor, parameter names and
    outputs, so ``SparseAttnConv(...).load_state_dict(transformer_conv.state_dict())`` migrates a
    model. Unlike it, no ``[E, H, C]`` tensor is built: edge features enter through
    :math:`\mathbf{q}_i^\top \mathbf{W}_6 \mathbf{e}_{ij} = (\mathbf{W}_6^\top \mathbf{q}_i)^\top \mathbf{e}_{ij}`
    and :math:`\sum_j \alpha_{ij} \mathbf{W}_6 \mathbf{e}_{ij} = \mathbf{W}_6 \sum_j \alpha_{ij} \mathbf{e}_{ij}`.

    Args:
        in_channels: size of each input sample, ``-1`` for lazy initialisation, or a tuple
            ``(source, target)`` for bipartite graphs.
        out_channels: size of each output sample per head.
        heads: number of attention heads ``H``.
        concat: concatenate the heads (``[N, H * C]``) or average them (``[N, C]``).
        beta: gate the skip connection with
            :math:`\beta_i = \sigma(\mathbf{w}_5^\top[\mathbf{W}_1\mathbf{x}_i, \mathbf{m}_i, \mathbf{W}_1\mathbf{x}_i - \mathbf{m}_i])`.
        dropout: dropout probability of the attention weights (in training).
        edge_dim: edge feature size, if any.
        bias: learn additive biases.
        root_weight: add the transformed root features :math:`\mathbf{W}_1 \mathbf{x}_i`.
        gate_mode: how ``edge_gate`` (see :func:`~graph_sparse_attn.sparse_attention`) enters the
            logits: ``"scale"`` multiplies the whole score :math:`\mathbf{q}_i^\top(\mathbf{k}_j +
            \mathbf{W}_6\mathbf{e}_{ij})` by the gate, ``"log"`` adds :math:`\log g_{ij}`.
        **kwargs: extra arguments of :class:`~torch_geometric.nn.conv.MessagePassing`.

    Shapes:
        - input: ``x [N, F_in]`` or ``([N_src, F_src], [N_dst, F_dst])``, ``edge_index [2, E]`` or a
          :class:`~graph_sparse_attn.CSRPattern`, ``edge_attr [E, edge_dim]`` (optional)
        - output: ``[N_dst, H * C]`` (or ``[N_dst, C]`` if ``concat=False``), plus
          ``(edge_index [2, E], alpha [E, H])`` when ``return_attention_weights`` is set.
    """

    def __init__(
        self,
        in_channels: Union[int, Tuple[int, int]],
        out_channels: int,
        heads: int = 1,
        concat: bool = True,
        beta: bool = False,
        dropout: float = 0.0,
        edge_dim: Optional[int] = None,
        bias: bool = True,
        root_weight: bool = True,
        gate_mode: str = "scale",
        **kwargs,
    ):
        kwargs.setdefault("aggr", "add")
        super().__init__(node_dim=0, **kwargs)
        if out_channels <= 0 or heads <= 0:
            raise ValueError(f"out_channels and heads must be positive, got {out_channels} and {heads}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        if gate_mode not in GATE_MODES:
            raise ValueError(f"gate_mode must be one of {GATE_MODES}, got {gate_mode!r}")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.heads = heads
        self.beta = beta and root_weight
        self.root_weight = root_weight
        self.concat = concat
        self.dropout = dropout
        self.edge_dim = edge_dim
        self.gate_mode = gate_mode

        src_channels, dst_channels = (in_channels, in_channels) if isinstance(in_channels, int) else in_channels
        self.lin_key = Linear(src_channels, heads * out_channels, bias=bias)
        self.lin_query = Linear(dst_channels, heads * out_channels, bias=bias)
        self.lin_value = Linear(src_channels, heads * out_channels, bias=bias)
        if edge_dim is not None:
            self.lin_edge = Linear(edge_dim, heads * out_channels, bias=False)
        else:
            self.register_parameter("lin_edge", None)
        skip_channels = heads * out_channels if concat else out_channels
        self.lin_skip = Linear(dst_channels, skip_channels, bias=bias)
        if self.beta:
            self.lin_beta = Linear(3 * skip_channels, 1, bias=False)
        else:
            self.register_parameter("lin_beta", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        super().reset_parameters()
        for lin in (self.lin_key, self.lin_query, self.lin_value, self.lin_edge, self.lin_skip, self.lin_beta):
            if lin is not None:
                lin.reset_parameters()

    def forward(
        self,
        x: Union[Tensor, PairTensor],
        edge_index: Union[Tensor, CSRPattern],
        edge_attr: Optional[Tensor] = None,
        return_attention_weights: Optional[bool] = None,
        edge_gate: Optional[Tensor] = None,
        edge_bias: Optional[Tensor] = None,
    ) -> Union[Tensor, Tuple[Tensor, Tuple[Tensor, Tensor]]]:
        """Run the layer.

        ``return_attention_weights`` set to any bool (as in PyG) also returns
        ``(edge_index, alpha [E, H])`` in the caller's edge order. ``edge_gate [E]`` or
        ``[E, H]`` in ``[0, 1]`` re-weights the edges (a learnable pattern, see `nn.gates`);
        ``edge_bias [E]`` or ``[E, H]`` is added to the attention logits (e.g. a positional bias).
        """
        heads, channels = self.heads, self.out_channels
        x_src, x_dst = (x, x) if isinstance(x, Tensor) else x
        query = self.lin_query(x_dst).view(-1, heads, channels)
        key = self.lin_key(x_src).view(-1, heads, channels)
        value = self.lin_value(x_src).view(-1, heads, channels)
        if not isinstance(edge_index, CSRPattern):
            edge_index = CSRPattern.from_edge_index(edge_index, (x_src.size(0), x_dst.size(0)))
        want_alpha = isinstance(return_attention_weights, bool)
        edge_weight = None if self.lin_edge is None else self.lin_edge.weight.view(heads, channels, -1)
        out, alpha = edge_feature_attention(
            query, key, value, edge_index, edge_attr, edge_weight,
            edge_gate=edge_gate, edge_bias=edge_bias, gate_mode=self.gate_mode,
            dropout=self.dropout, training=self.training, need_weights=want_alpha,
        )
        out = out.reshape(-1, heads * channels) if self.concat else out.mean(dim=1)
        if self.root_weight:
            x_root = self.lin_skip(x_dst)
            if self.lin_beta is not None:
                beta = self.lin_beta(torch.cat([out, x_root, out - x_root], dim=-1)).sigmoid()
                out = beta * x_root + (1 - beta) * out
            else:
                out = out + x_root
        if want_alpha:
            return out, (edge_index.edge_index, alpha)
        return out

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}({self.in_channels}, {self.out_channels}, heads={self.heads})"
