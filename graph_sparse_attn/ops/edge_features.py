"""Two adjoint primitives that let edge features enter attention without ``[E, H, F]`` tensors.

With node tensors ``X [N, H, F]``, edge features ``A [E, F]`` and each edge's node ``index [E]``:

* ``edge_dot(X, A, index)[e, h] = X[index[e], h] · A[e]``           (``[E, H]``)
* ``edge_weighted_sum(W, A, index, N)[n, h] = Σ_{e: index[e]=n} W[e, h] A[e]``   (``[N, H, F]``)

Each is the other's adjoint, so their backwards are written with each other. Work is done head
by head, so no temporary is larger than ``[E, F]`` (the size of ``A`` itself) and nothing
per-edge beyond the inputs is saved for backward.
"""
from __future__ import annotations

import math
from typing import Optional, Tuple, Union

import torch
from torch import Tensor

from .attention import _edge_tensor, attention_with_weights
from .fused import autocast_off
from .checks import check_on_device
from .pattern import CSRPattern, check_edge_index


def _edge_dot(x: Tensor, a: Tensor, index: Tensor) -> Tensor:
    out = a.new_empty(a.size(0), x.size(1))
    for h in range(x.size(1)):
        out[:, h] = (x[:, h].index_select(0, index) * a).sum(-1)
    return out


def _edge_weighted_sum(w: Tensor, a: Tensor, index: Tensor, num_nodes: int) -> Tensor:
    out = a.new_zeros(num_nodes, w.size(1), a.size(1))
    for h in range(w.size(1)):
        out[:, h].index_add_(0, index, w[:, h : h + 1] * a)
    return out


def _edge_mix(w: Tensor, x: Tensor, index: Tensor) -> Tensor:
    """``out[e] = Σ_h w[e, h] x[index[e], h]`` → ``[E, F]``."""
    out = x.new_zeros(index.numel(), x.size(-1))
    for h in range(w.size(1)):
        out += w[:, h : h + 1] * x[:, h].index_select(0, index)
    return out


class _EdgeDot(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, a, index):
        ctx.save_for_backward(x, a, index)
        return _edge_dot(x, a, index)

    @staticmethod
    def backward(ctx, grad):
        x, a, index = ctx.saved_tensors
        grad_x = _edge_weighted_sum(grad, a, index, x.size(0)) if ctx.needs_input_grad[0] else None
        grad_a = _edge_mix(grad, x, index) if ctx.needs_input_grad[1] else None
        return grad_x, grad_a, None


class _EdgeWeightedSum(torch.autograd.Function):
    @staticmethod
    def forward(ctx, w, a, index, num_nodes):
        ctx.save_for_backward(w, a, index)
        return _edge_weighted_sum(w, a, index, num_nodes)

    @staticmethod
    def backward(ctx, grad):
        w, a, index = ctx.saved_tensors
        grad_w = _edge_dot(grad, a, index) if ctx.needs_input_grad[0] else None
        grad_a = _edge_mix(w, grad, index) if ctx.needs_input_grad[1] else None
        return grad_w, grad_a, None, None


def edge_dot(x: Tensor, edge_attr: Tensor, index: Tensor) -> Tensor:
    """``out[e, h] = x[index[e], h] · edge_attr[e]`` for ``x [N, H, F]``, ``edge_attr [E, F]`` → ``[E, H]``."""
    return _EdgeDot.apply(x, edge_attr, index)


def edge_weighted_sum(weights: Tensor, edge_attr: Tensor, index: Tensor, num_nodes: int) -> Tensor:
    """``out[n, h] = Σ_{e: index[e]=n} weights[e, h] edge_attr[e]`` for ``weights [E, H]`` → ``[N, H, F]``."""
    return _EdgeWeightedSum.apply(weights, edge_attr, index, num_nodes)


# Up to this many [E, H, C] elements (64 MB in float32) edge features are projected per edge and
# attention runs in one gathered pass; above it the adjoint form keeps memory at O(E·F).
PROJECTED_MAX_ELEMENTS = 1 << 24


@autocast_off
def edge_feature_attention(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    edges: Union[Tensor, CSRPattern],
    edge_attr: Optional[Tensor],
    edge_weight: Optional[Tensor],
    *,
    edge_gate: Optional[Tensor] = None,
    edge_bias: Optional[Tensor] = None,
    gate_mode: str = "scale",
    dropout: float = 0.0,
    training: bool = True,
    need_weights: bool = False,
    backend: str = "auto",
    edge_attr_index: Optional[Tensor] = None,
) -> Tuple[Tensor, Optional[Tensor]]:
    r"""Attention whose keys and values both carry projected edge features.

    .. math::
        \alpha_{ij} = \mathrm{softmax}_j\big(\mathbf{q}_i^\top(\mathbf{k}_j + \mathbf{W}\mathbf{e}_{ij})/\sqrt{C}\big),\qquad
        \mathbf{o}_i = \sum_j \alpha_{ij}(\mathbf{v}_j + \mathbf{W}\mathbf{e}_{ij})

    Computed in whichever of two algebraically equal forms is cheaper for the size at hand. Small
    patterns (``E·H·C <= PROJECTED_MAX_ELEMENTS``, e.g. molecule batches) form the projected
    features :math:`\mathbf{W}\mathbf{e}_{ij}` ``[E, H, C]`` once and attend in a single gathered
    pass (few kernel launches). Large ones build no ``[E, H, C]`` tensor: the edge term enters the
    logits as an edge bias :math:`(\mathbf{W}^\top\mathbf{q}_i)^\top\mathbf{e}_{ij}` and the output
    as :math:`\mathbf{W}\sum_j \alpha_{ij}\mathbf{e}_{ij}` with ``α`` the weights after dropout
    (memory O(E·F)).
    Without ``edge_weight`` it is plain :func:`~graph_sparse_attn.sparse_attention`.

    Categorical edge features (bond types, edge types) take few distinct values: pass those as
    ``edge_attr [U, F]`` and each edge's row as ``edge_attr_index [E]``. The projection then runs
    on the ``U`` rows and is gathered per edge, instead of an ``[E, F] × [F, H·C]`` product (and
    its backward) per layer.

    Args:
        query ``[N_dst, H, C]``, key ``[N_src, H, C]``, value ``[N_src, H, C]``; edges: ``edge_index [2, E]``
        or a :class:`CSRPattern` (as in `sparse_attention`);
        edge_attr ``[E, F]`` (or ``[U, F]`` with ``edge_attr_index``); edge_weight ``W`` as ``[H, C, F]``; edge_gate / edge_bias ``[E]`` or
        ``[E, H]`` (see `sparse_attention`; a ``"scale"`` gate multiplies the edge-feature score too);
        backend: as in `sparse_attention` (the projected form runs ``"compiled"`` when it resolves
        to that, the gathered pass otherwise; see `attention_with_weights`).

    Returns:
        ``(out [N_dst, H, C], alpha [E, H] or None)`` with ``alpha`` before dropout, caller's edge order.
    """
    edge_attr_sorted = None
    if edge_weight is not None:
        if not isinstance(edge_weight, Tensor) or edge_weight.dim() != 3 or edge_weight.shape[:2] != query.shape[1:]:
            raise ValueError(f"edge_weight must be a tensor [H, C, F] with [H, C]={list(query.shape[1:])} like query, "
                             f"got {list(edge_weight.shape) if isinstance(edge_weight, Tensor) else type(edge_weight).__name__}")
        heads, channels, edge_dim = edge_weight.shape
        if edge_attr is None:
            raise ValueError(f"edge_attr [E, {edge_dim}] is required because the layer has edge features (edge_dim={edge_dim})")
        if not isinstance(edge_attr, Tensor) or not edge_attr.is_floating_point():
            raise TypeError(f"edge_attr must be a floating-point tensor [E, {edge_dim}], got "
                            f"{edge_attr.dtype if isinstance(edge_attr, Tensor) else type(edge_attr).__name__}")
        if edge_attr.dtype != edge_weight.dtype:
            raise TypeError(f"edge_attr must have edge_weight's dtype {edge_weight.dtype}, got {edge_attr.dtype}")
        if edge_attr.dim() == 1:
            edge_attr = edge_attr.unsqueeze(-1)
        num_edges = edges.num_edges if isinstance(edges, CSRPattern) else _edge_count(edges)
        if edge_attr_index is not None:
            _check_attr_index(edge_attr_index, num_edges, edge_attr.size(0))
        rows = num_edges if edge_attr_index is None else edge_attr.size(0)
        if edge_attr.shape != (rows, edge_dim):
            expected = "[E, edge_dim]" if edge_attr_index is None else "[U, edge_dim] (U rows indexed by edge_attr_index)"
            raise ValueError(f"edge_attr must have shape {expected}=[{rows}, {edge_dim}], got {list(edge_attr.shape)}")
        # The reference backend has no per-edge values: it checks the edge-bias form.
        if num_edges * heads * channels <= PROJECTED_MAX_ELEMENTS and backend != "reference":
            # Small patterns: project once, W a_ij [E, H, C], and attend in a single pass.
            edge_proj = edge_attr @ edge_weight.reshape(heads * channels, edge_dim).t()
            if edge_attr_index is not None:
                edge_proj = edge_proj.index_select(0, edge_attr_index)
            edge_proj = edge_proj.view(-1, heads, channels)
            out, alpha, _ = attention_with_weights(
                query, key, value, edges, edge_bias=edge_bias, edge_gate=edge_gate, gate_mode=gate_mode,
                dropout=dropout, training=training, need_weights=need_weights, edge_values=edge_proj, backend=backend,
            )
            return out, alpha
        # Large patterns: q_i · (W a_ij) / sqrt(C) == (Wᵀ q_i) · a_ij / sqrt(C), no [E, H, C] keys.
        # Sorted once here; attention below reuses the sort.
        edges = pattern = edges if isinstance(edges, CSRPattern) else CSRPattern.from_edge_index(edges, (key.size(0), query.size(0)))
        if edge_attr_index is not None:
            edge_attr = edge_attr.index_select(0, edge_attr_index)
        # In the query's dtype, as the projected form casts its edge values.
        edge_weight, edge_attr = edge_weight.to(query.dtype), edge_attr.to(query.dtype)
        edge_attr_sorted, row = pattern.caller_to_sorted(edge_attr), pattern.row.long()
        query_edge = torch.einsum("nhc,hcf->nhf", query, edge_weight) / math.sqrt(channels)
        edge_score = pattern.sorted_to_caller(edge_dot(query_edge, edge_attr_sorted, row))
        per_edge = dict(num_edges=pattern.num_edges, heads=heads, device=query.device, dtype=query.dtype)
        if edge_gate is not None and gate_mode == "scale":
            edge_score = edge_score * _edge_tensor(edge_gate, "edge_gate", **per_edge)
        if edge_bias is not None:
            edge_score = edge_score + _edge_tensor(edge_bias, "edge_bias", **per_edge)
        edge_bias = edge_score

    out, alpha, weights = attention_with_weights(
        query, key, value, edges, edge_bias=edge_bias, edge_gate=edge_gate, gate_mode=gate_mode,
        dropout=dropout, training=training, need_weights=need_weights or edge_attr_sorted is not None, backend=backend,
    )
    if edge_attr_sorted is not None:
        # Σ_j α_ij W a_ij == W Σ_j α_ij a_ij, with the α that multiplied the values.
        edge_sum = edge_weighted_sum(pattern.caller_to_sorted(weights), edge_attr_sorted, pattern.row.long(), pattern.num_dst)
        out = out + torch.einsum("nhf,hcf->nhc", edge_sum, edge_weight)
    return out, (alpha if need_weights else None)


def _edge_count(edge_index: Tensor) -> int:
    """``E`` of an ``edge_index [2, E]``; its values are checked where attention reads them."""
    if not isinstance(edge_index, Tensor) or edge_index.dim() != 2 or edge_index.size(0) != 2:
        check_edge_index(edge_index, 0, 0)  # raises the TypeError/ValueError naming what was expected
    return edge_index.size(1)


def _check_attr_index(index: Tensor, num_edges: int, num_rows: int) -> None:
    if not isinstance(index, Tensor) or index.dtype not in (torch.int64, torch.int32):
        raise TypeError("edge_attr_index must be an integer tensor [E]")
    if index.shape != (num_edges,):
        raise ValueError(f"edge_attr_index must have shape [E]=[{num_edges}], got {list(index.shape)}")
    check_on_device(((index >= 0) & (index < num_rows)).all(), f"edge_attr_index must hold rows of edge_attr in [0, {num_rows})")


