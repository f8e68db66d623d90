"""`SparseAttnConv`: a memory-lean drop-in for PyG's `TransformerConv`."""
import typing
from typing import Optional, Tuple, Union

import torch
from torch import Tensor
from torch_geometric.nn.aggr import SumAggregation
from torch_geometric.nn.conv import MessagePassing
from torch_geometric.nn.dense.linear import Linear
from torch_geometric.nn.resolver import aggregation_resolver
from torch_geometric.typing import Adj, NoneType, PairTensor, SparseTensor

from ..ops import CSRPattern
from ..ops.adjacency import edges_from_adjacency
from ..ops.attention import check_attention_options
from ..ops.dispatch import check_backend
from ..ops.edge_features import edge_feature_attention
from ..patterns._utils import check_size

if typing.TYPE_CHECKING:
    from typing import overload
else:  # TorchScript resolves the overloads of `forward` by argument types, as for TransformerConv.
    from torch.jit import _overload_method as overload


def _message_hooks(conv: MessagePassing) -> bool:
    """Whether PyG message forward hooks are registered on ``conv`` (`AttentionExplainer`,
    `to_hetero_with_bases` register them); hooks of `propagate`'s other steps, which `SparseAttnConv`
    does not run, are refused. A scripted layer (``torch.jit.script``) keeps no hooks."""
    others = [name for name in ("propagate_forward_pre", "propagate_forward", "message_forward_pre", "aggregate_forward_pre",
                                "aggregate_forward", "message_and_aggregate_forward_pre", "message_and_aggregate_forward",
                                "edge_update_forward_pre", "edge_update_forward")
              if getattr(conv, f"_{name}_hooks", None)]
    if others:
        raise ValueError(f"SparseAttnConv runs PyG's message forward hooks only (register_message_forward_hook); "
                         f"it has {', '.join(name + ' hooks' for name in others)} registered")
    return bool(getattr(conv, "_message_forward_hooks", None))


class SparseAttnConv(MessagePassing):
    r"""Graph transformer convolution (Shi et al. 2021) on :func:`~graph_sparse_attn.sparse_attention`'s kernels (``backend="auto"`` by default).

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
    model. Unlike it, large patterns (``E·H·C > 2²⁴``) build no ``[E, H, C]`` tensor: edge features enter through
    :math:`\mathbf{q}_i^\top \mathbf{W}_6 \mathbf{e}_{ij} = (\mathbf{W}_6^\top \mathbf{q}_i)^\top \mathbf{e}_{ij}`
    and :math:`\sum_j \alpha_{ij} \mathbf{W}_6 \mathbf{e}_{ij} = \mathbf{W}_6 \sum_j \alpha_{ij} \mathbf{e}_{ij}`.

    Args:
        in_channels: size of each input sample, ``-1`` for lazy initialisation, or a tuple
            ``(source, target)`` for bipartite graphs.
        out_channels: size of each output sample per head.
        heads: number of attention heads ``H``.
        concat: concatenate the heads (``[N, H * C]``) or average them (``[N, C]``).
        beta: gate the skip connection with
            :math:`\beta_i = \sigma(\mathbf{w}_5^\top[\mathbf{m}_i, \mathbf{W}_1\mathbf{x}_i, \mathbf{m}_i - \mathbf{W}_1\mathbf{x}_i])`
            (``m_i`` the attention output; the order `TransformerConv` computes, though its docstring writes another),
            :math:`\mathbf{x}'_i = \beta_i \mathbf{W}_1\mathbf{x}_i + (1 - \beta_i)\mathbf{m}_i`.
        dropout: dropout probability of the attention weights (in training), in ``[0, 1)``.
        edge_dim: edge feature size, if any.
        bias: learn additive biases.
        root_weight: add the transformed root features :math:`\mathbf{W}_1 \mathbf{x}_i`.
        gate_mode: how ``edge_gate`` (see :func:`~graph_sparse_attn.sparse_attention`) enters the
            logits: ``"scale"`` multiplies the whole score :math:`\mathbf{q}_i^\top(\mathbf{k}_j +
            \mathbf{W}_6\mathbf{e}_{ij})` by the gate, ``"log"`` adds :math:`\log g_{ij}` (a gate of
            exactly 0 removes its edge; a target whose gates are all 0 gets no messages, as after
            :func:`~graph_sparse_attn.patterns.prune`).
        backend: attention kernel, as in :func:`~graph_sparse_attn.sparse_attention` (``"auto"``).
        **kwargs: extra arguments of :class:`~torch_geometric.nn.conv.MessagePassing` (``aggr``
            and ``flow`` only at their defaults). PyG's explain mode (``Explainer``, e.g.
            ``GNNExplainer``) masks each edge's message as in ``TransformerConv``, and message
            forward hooks (``AttentionExplainer``) see its messages and ``_alpha`` as there.

    Shapes:
        - input: ``x [N, F_in]`` or ``([N_src, F_src], [N_dst, F_dst])``; ``edge_index [2, E]``
          (or an ``EdgeIndex``), a ``torch.sparse`` / ``SparseTensor`` ``adj_t [N_dst, N_src]``, or a
          :class:`~graph_sparse_attn.CSRPattern`; ``edge_attr [E, edge_dim]`` (optional)
        - output: ``[N_dst, H * C]`` (or ``[N_dst, C]`` if ``concat=False``), plus the attention
          ``alpha [E, H]`` when ``return_attention_weights`` is set (see :meth:`forward`).
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
        backend: str = "auto",
        **kwargs,
    ):
        kwargs.setdefault("aggr", "add")
        # Messages are summed with softmax weights over each target's incoming edges: another
        # aggregation or flow would be accepted by MessagePassing and silently not applied.
        if not isinstance(aggregation_resolver(kwargs["aggr"]), SumAggregation):
            raise ValueError(f"aggr must be 'add' or 'sum' (attention sums its softmax-weighted messages), got {kwargs['aggr']!r}")
        if kwargs.get("flow", "source_to_target") != "source_to_target":
            raise ValueError(f"flow must be 'source_to_target' (row 0 of edge_index is the source), got {kwargs['flow']!r}")
        super().__init__(node_dim=0, **kwargs)
        check_size(out_channels, "out_channels", minimum=1)
        check_size(heads, "heads", minimum=1)
        check_attention_options(dropout, gate_mode)
        check_backend(backend)
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.heads = heads
        self.beta = beta and root_weight
        self.root_weight = root_weight
        self.concat = concat
        self.dropout = dropout
        self.edge_dim = edge_dim
        self.gate_mode = gate_mode
        self.backend = backend
        # TransformerConv keeps the last attention here during a call and clears it after; code
        # that checks ``conv._alpha`` sees the same ``None`` (alpha is returned, never stored).
        self._alpha: Optional[Tensor] = None

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

    @overload
    def forward(
        self,
        x: Union[Tensor, PairTensor],
        edge_index: Adj,
        edge_attr: Optional[Tensor] = None,
        return_attention_weights: NoneType = None,
        edge_gate: Optional[Tensor] = None,
        edge_bias: Optional[Tensor] = None,
    ) -> Tensor:
        pass

    @overload
    def forward(  # noqa: F811
        self,
        x: Union[Tensor, PairTensor],
        edge_index: Tensor,
        edge_attr: Optional[Tensor] = None,
        return_attention_weights: bool = None,
        edge_gate: Optional[Tensor] = None,
        edge_bias: Optional[Tensor] = None,
    ) -> Tuple[Tensor, Tuple[Tensor, Tensor]]:
        pass

    @overload
    def forward(  # noqa: F811
        self,
        x: Union[Tensor, PairTensor],
        edge_index: SparseTensor,
        edge_attr: Optional[Tensor] = None,
        return_attention_weights: bool = None,
        edge_gate: Optional[Tensor] = None,
        edge_bias: Optional[Tensor] = None,
    ) -> Tuple[Tensor, SparseTensor]:
        pass

    def forward(  # noqa: F811
        self,
        x: Union[Tensor, PairTensor],
        edge_index: Adj,
        edge_attr: Optional[Tensor] = None,
        return_attention_weights: Optional[bool] = None,
        edge_gate: Optional[Tensor] = None,
        edge_bias: Optional[Tensor] = None,
    ) -> Union[Tensor, Tuple[Tensor, Tuple[Tensor, Tensor]], Tuple[Tensor, SparseTensor]]:
        """Run the layer.

        ``edge_index`` takes every form ``TransformerConv`` takes (see
        :func:`~graph_sparse_attn.ops.adjacency.edges_from_adjacency`): ``[2, E]``, an
        ``EdgeIndex``, a ``torch.sparse`` or ``SparseTensor`` ``adj_t [N_dst, N_src]``, or a
        prebuilt ``CSRPattern``. Per-edge tensors (``edge_attr``, ``edge_gate``, ``edge_bias`` and
        the returned ``alpha``) follow its edge order; a sparse ``adj_t`` whose values are
        ``[E, edge_dim]`` supplies ``edge_attr`` when none is passed.

        ``return_attention_weights`` set to any bool (as in PyG) also returns the attention
        ``alpha [E, H]``: as ``(edge_index, alpha)`` for an ``edge_index`` tensor (the pattern's
        ``edge_index`` for a ``CSRPattern``), as ``(adj_t, alpha)`` for a ``torch.sparse``
        ``adj_t`` (the caller's own, with ``alpha`` in its stored order, as ``TransformerConv``
        returns it), and as ``adj_t.set_value(alpha)`` for a ``SparseTensor``. ``edge_gate [E]``
        or ``[E, H]`` in ``[0, 1]`` re-weights the edges (a learnable pattern, see `nn.gates`);
        ``edge_bias [E]`` or ``[E, H]`` is added to the attention logits (e.g. a positional bias).

        The layer scripts with ``torch.jit.script`` like ``TransformerConv`` (the attention itself
        runs in Python, see :meth:`_attend`).
        """
        heads, channels = self.heads, self.out_channels
        if isinstance(x, Tensor):
            x_src, x_dst = x, x
        else:
            x_src, x_dst = x[0], x[1]
        if x_src.dim() != 2 or x_dst.dim() != 2:
            raise ValueError("x must be [N, in_channels] (or a pair of them, [N_src, F_src] and [N_dst, F_dst])")
        query = self.lin_query(x_dst).view(-1, heads, channels)
        key = self.lin_key(x_src).view(-1, heads, channels)
        value = self.lin_value(x_src).view(-1, heads, channels)
        want_alpha = isinstance(return_attention_weights, bool)
        out, alpha = self._attend(query, key, value, edge_index, edge_attr, edge_gate, edge_bias, want_alpha)

        if self.concat:
            out = out.reshape(-1, heads * channels)
        else:
            out = out.mean(dim=1)
        if self.root_weight:
            x_root = self.lin_skip(x_dst)
            if self.lin_beta is not None:
                beta = self.lin_beta(torch.cat([out, x_root, out - x_root], dim=-1)).sigmoid()
                out = beta * x_root + (1 - beta) * out
            else:
                out = out + x_root

        if isinstance(return_attention_weights, bool):
            assert alpha is not None
            if isinstance(edge_index, SparseTensor):
                return out, edge_index.set_value(alpha, layout="coo")
            return out, (self._attention_index(edge_index, alpha), alpha)
        return out

    @torch.jit.ignore
    def _attend(
        self,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        edge_index: Adj,
        edge_attr: Optional[Tensor],
        edge_gate: Optional[Tensor],
        edge_bias: Optional[Tensor],
        need_weights: bool,
    ) -> Tuple[Tensor, Optional[Tensor]]:
        """``(out [N_dst, H, C], alpha [E, H] or None)`` over any adjacency (run as Python when scripted)."""
        edges, adj_values = edges_from_adjacency(edge_index, (key.size(0), query.size(0)))
        if edge_attr is None and adj_values is not None and adj_values.dim() > 1:
            edge_attr = adj_values
        if edge_attr is not None and self.lin_edge is None:  # given, or carried by a hybrid adj_t
            raise ValueError("edge_attr (or an adj_t with [E, F] values) was given but the layer has no edge features: "
                             "build it with edge_dim=F")
        if edge_attr is not None and self.lin_edge is not None and isinstance(self.lin_edge.weight, torch.nn.parameter.UninitializedParameter):
            self.lin_edge(edge_attr[:0])  # edge_dim=-1: PyG's lazy Linear learns its input size from a call
        edge_weight = None if self.lin_edge is None else self.lin_edge.weight.view(self.heads, self.out_channels, -1)
        explain = bool(getattr(self, "explain", False))  # a scripted layer has no explain mode
        per_edge = explain or _message_hooks(self)
        if per_edge and self.training and self.dropout > 0:
            raise ValueError("explain mode and message hooks need the layer in eval() or dropout=0 (the per-edge messages "
                             "they see would not carry the kernel's dropout mask)")
        out, alpha = edge_feature_attention(
            query, key, value, edges, edge_attr, edge_weight,
            edge_gate=edge_gate, edge_bias=edge_bias, gate_mode=self.gate_mode,
            dropout=self.dropout, training=self.training, need_weights=need_weights or per_edge, backend=self.backend,
        )
        if per_edge:
            assert alpha is not None
            out = self._per_edge_messages(query, key, value, edges, edge_attr, alpha, explain)
        return out, alpha if need_weights else None

    def _per_edge_messages(self, query: Tensor, key: Tensor, value: Tensor, edges: Union[Tensor, CSRPattern],
                           edge_attr: Optional[Tensor], alpha: Tensor, explain: bool) -> Tensor:
        """`TransformerConv`'s per-edge path, for PyG's explain mode and message hooks: the messages
        ``α_ij (v_j + W_6 e_ij)`` ``[E, H, C]`` go through each message forward hook (called as
        `MessagePassing.propagate` calls it, with ``TransformerConv``'s message arguments and
        ``self._alpha`` set meanwhile), then `MessagePassing.explain_message` (the explainer's edge mask)
        in explain mode, and are summed per target. Builds ``[E, H, C]`` tensors: for explaining only."""
        edge_index = edges.edge_index if isinstance(edges, CSRPattern) else edges
        src, dst = edge_index
        value_j = value.index_select(0, src)
        messages = value_j
        if self.lin_edge is not None:
            assert edge_attr is not None
            messages = messages + self.lin_edge(edge_attr.view(edge_index.size(1), -1)).view_as(value_j)
        messages = messages * alpha.unsqueeze(-1)
        if self._message_forward_hooks:
            msg_kwargs = {"query_i": query.index_select(0, dst), "key_j": key.index_select(0, src),
                          "value_j": value_j, "edge_attr": edge_attr, "index": dst, "ptr": None,
                          "size_i": query.size(0)}
            self._alpha = alpha
            try:
                for hook in self._message_forward_hooks.values():
                    result = hook(self, (msg_kwargs,), messages)
                    if result is not None:
                        messages = result
            finally:
                self._alpha = None
        if explain:
            messages = self.explain_message(messages, query.size(0))
        return messages.new_zeros(query.size(0), *messages.shape[1:]).index_add_(0, dst, messages)

    @torch.jit.ignore
    def _attention_index(self, edge_index: Tensor, alpha: Tensor) -> Tensor:
        """What is returned beside ``alpha``: the caller's ``edge_index`` or ``torch.sparse`` ``adj_t``
        (as ``TransformerConv``), or a ``CSRPattern``'s ``edge_index [2, E]``."""
        if isinstance(edge_index, CSRPattern):
            return edge_index.edge_index
        return edge_index

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}({self.in_channels}, {self.out_channels}, heads={self.heads})"
