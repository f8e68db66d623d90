"""Two adjoint primitives that let edge features enter attention without ``[E, H, F]`` tensors.

With node tensors ``X [N, H, F]``, edge features ``A [E, F]`` and each edge's node ``index [E]``:

* ``edge_dot(X, A, index)[e, h] = X[index[e], h] · A[e]``           (``[E, H]``)
* ``edge_weighted_sum(W, A, index, N)[n, h] = Σ_{e: index[e]=n} W[e, h] A[e]``   (``[N, H, F]``)

Each is the other's adjoint, so their backwards are written with each other. Work is done head
by head, so no temporary is larger than ``[E, F]`` (the size of ``A`` itself) and nothing
per-edge beyond the inputs is saved for backward.
"""
from __future__ import annotations

import torch
from torch import Tensor


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
