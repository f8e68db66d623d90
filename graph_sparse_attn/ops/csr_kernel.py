"""The ``csr`` backend: fused sparse attention with a hand-written, recomputing backward.

Only ``[E, H]`` edge scores and ``[N, H, D]`` node tensors are ever allocated; per-edge
messages ``[E, H, D]`` are never formed. Per head, scores come from a sampled dense-dense
product (SDDMM, ``torch.sparse.sampled_addmm``) and aggregation from a CSR @ dense product
(SpMM). Backward recomputes the probabilities from the saved row log-sum-exp instead of
keeping ``[E, H]`` intermediates alive between forward and backward:

    dV = Pᵀ dO,  dP = SDDMM(dO, V),  dS = P ⊙ (dP − rowsum(dO ⊙ O)),  dQ = dS K,  dK = dSᵀ Q
"""
from __future__ import annotations

import warnings
from typing import Optional, Tuple

import torch
from torch import Tensor

from .pattern import CSRPattern


def _csr(ptr: Tensor, idx: Tensor, values: Tensor, size: Tuple[int, int]) -> Tensor:
    return torch.sparse_csr_tensor(ptr, idx, values, size=size, check_invariants=False)


def sddmm(pattern: CSRPattern, a: Tensor, b: Tensor) -> Tensor:
    """Edge scores ``s[e, h] = a[row[e], h] · b[col[e], h]`` in sorted edge order.

    Args:
        a: ``[N_dst, H, D]``; b: ``[N_src, H, D]``. Returns ``[E, H]``.
    """
    heads = a.size(1)
    out = a.new_empty(pattern.num_edges, heads)
    zeros = a.new_zeros(pattern.num_edges)
    mask = _csr(pattern.rowptr, pattern.col, zeros, (pattern.num_dst, pattern.num_src))
    for h in range(heads):
        scores = torch.sparse.sampled_addmm(mask, a[:, h].contiguous(), b[:, h].contiguous().t(), beta=0.0)
        out[:, h] = scores.values()
    return out


def spmm(pattern: CSRPattern, weights: Tensor, x: Tensor, transpose: bool = False) -> Tensor:
    """Weighted aggregation ``out[i, h] = Σ_e weights[e, h] x[col[e], h]`` over rows of the pattern.

    With ``transpose=True`` it aggregates over columns instead
    (``out[j, h] = Σ_e weights[e, h] x[row[e], h]``), using the by-source layout.

    Args:
        weights: ``[E, H]`` in sorted edge order; x: ``[N_src, H, D]`` (``[N_dst, H, D]`` when
            transposed). Returns ``[N_dst, H, D]`` (``[N_src, H, D]`` when transposed).
    """
    if transpose:
        ptr, idx, size = pattern.colptr, pattern.row_t, (pattern.num_src, pattern.num_dst)
        weights = weights.index_select(0, pattern.perm_t)
    else:
        ptr, idx, size = pattern.rowptr, pattern.col, (pattern.num_dst, pattern.num_src)
    heads = weights.size(1)
    out = x.new_empty(size[0], heads, x.size(-1))
    for h in range(heads):
        out[:, h] = _csr(ptr, idx, weights[:, h].contiguous(), size) @ x[:, h].contiguous()
    return out


def segment_softmax(logits: Tensor, pattern: CSRPattern) -> Tuple[Tensor, Tensor]:
    """Softmax of ``logits [E, H]`` over each target's incoming edges.

    Returns ``(probs [E, H], lse [N_dst, H])``. Targets without edges (or whose logits are all
    ``-inf``) get ``lse = +inf`` so that recomputing ``exp(logit − lse)`` gives exact zeros.
    """
    row_max = torch.segment_reduce(logits, "max", offsets=pattern.rowptr, axis=0)
    row_max = torch.where(torch.isfinite(row_max), row_max, torch.zeros_like(row_max))
    exp = torch.exp(logits - row_max.index_select(0, pattern.row))
    row_sum = torch.segment_reduce(exp, "sum", offsets=pattern.rowptr, axis=0)
    lse = torch.where(row_sum > 0, row_max + torch.log(row_sum), torch.full_like(row_sum, float("inf")))
    # A row sum is >= 1 wherever a finite logit exists, so the clamp only turns 0/0 into 0.
    probs = exp / row_sum.clamp_min(torch.finfo(row_sum.dtype).tiny).index_select(0, pattern.row)
    return probs, lse


def dropout_scale(seed: int, shape: Tuple[int, int], p: float, like: Tensor) -> Tensor:
    """Inverted-dropout multipliers (0 or ``1/(1-p)``) drawn from ``seed``, so backward can regenerate them."""
    generator = torch.Generator(device=like.device)
    generator.manual_seed(seed)
    keep = torch.rand(shape, generator=generator, device=like.device, dtype=like.dtype) >= p
    return keep.to(like.dtype) / (1.0 - p)


def _reduce_to(grad: Tensor, shape: torch.Size) -> Tensor:
    return grad.sum(dim=1, keepdim=True) if shape[1] == 1 and grad.size(1) != 1 else grad


class CSRAttentionFunction(torch.autograd.Function):
    """Autograd function of the ``csr`` backend (all per-edge tensors in sorted edge order).

    Inputs: ``query [N_dst, H, D]``, ``key [N_src, H, D]``, ``value [N_src, H, Dv]``,
    ``bias [E, 1|H]`` or None, ``gate [E, 1|H]`` or None (multiplies ``q·k`` before scaling),
    the ``CSRPattern``, ``scale``, dropout probability, dropout seed, and whether to also
    return the (pre-dropout, differentiable) probabilities ``[E, H]``.
    """

    @staticmethod
    def forward(ctx, query, key, value, bias, gate, pattern, scale, dropout_p, seed, need_weights):
        scores = sddmm(pattern, query, key)
        logits = _logits(scores, bias, gate, scale)
        probs, lse = segment_softmax(logits, pattern)
        weights = probs * dropout_scale(seed, probs.shape, dropout_p, probs) if dropout_p > 0 else probs
        out = spmm(pattern, weights, value)
        ctx.save_for_backward(query, key, value, bias, gate, out, lse)
        ctx.pattern, ctx.scale, ctx.dropout_p, ctx.seed = pattern, scale, dropout_p, seed
        ctx.set_materialize_grads(False)
        if need_weights:
            return out, probs
        ctx.mark_non_differentiable(lse)
        return out, lse

    @staticmethod
    def backward(ctx, grad_out, grad_probs):
        query, key, value, bias, gate, out, lse = ctx.saved_tensors
        pattern, scale, dropout_p = ctx.pattern, ctx.scale, ctx.dropout_p
        heads = query.size(1)
        if grad_out is None:
            grad_out = torch.zeros_like(out)
        scores = sddmm(pattern, query, key)
        probs = torch.exp(_logits(scores, bias, gate, scale) - lse.index_select(0, pattern.row))
        keep = dropout_scale(ctx.seed, probs.shape, dropout_p, probs) if dropout_p > 0 else None

        grad_value = spmm(pattern, probs * keep if keep is not None else probs, grad_out, transpose=True)
        grad_probs_total = sddmm(pattern, grad_out, value)
        if keep is not None:
            grad_probs_total = grad_probs_total * keep
        # rowsum(P ⊙ dP) over a target's edges equals dO_i · O_i, so no segment reduction is needed.
        row_dot = (grad_out * out).sum(-1)
        if grad_probs is not None:
            grad_probs_total = grad_probs_total + grad_probs
            row_dot = row_dot + torch.segment_reduce(probs * grad_probs, "sum", offsets=pattern.rowptr, axis=0)
        grad_logits = probs * (grad_probs_total - row_dot.index_select(0, pattern.row))

        grad_scores = grad_logits * scale
        grad_gate = None
        if gate is not None:
            if ctx.needs_input_grad[4]:
                grad_gate = _reduce_to(grad_scores * scores, gate.shape)
            grad_scores = grad_scores * gate.expand(-1, heads)
        grad_query = spmm(pattern, grad_scores, key) if ctx.needs_input_grad[0] else None
        grad_key = spmm(pattern, grad_scores, query, transpose=True) if ctx.needs_input_grad[1] else None
        grad_bias = _reduce_to(grad_logits, bias.shape) if bias is not None and ctx.needs_input_grad[3] else None
        return grad_query, grad_key, grad_value, grad_bias, grad_gate, None, None, None, None, None


def _logits(scores: Tensor, bias: Optional[Tensor], gate: Optional[Tensor], scale: float) -> Tensor:
    logits = scores * gate * scale if gate is not None else scores * scale
    return logits + bias if bias is not None else logits


def csr_attention(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    pattern: CSRPattern,
    bias: Optional[Tensor],
    gate: Optional[Tensor],
    scale: float,
    dropout_p: float,
    need_weights: bool,
) -> Tuple[Tensor, Optional[Tensor], Optional[Tensor]]:
    """Run the ``csr`` backend; per-edge inputs and outputs are in sorted edge order.

    Returns ``(out, probs, weights)``: the softmax ``probs [E, H]`` and the weights after
    dropout (the ones that multiplied the values) when ``need_weights``, else ``None``.
    The dropout mask is regenerated from the same seed, so both share it.
    """
    seed = int(torch.randint(0, 2**62, (1,)).item()) if dropout_p > 0 else 0
    with warnings.catch_warnings():
        # torch flags every sparse CSR construction as beta; the kernels used here are stable.
        warnings.filterwarnings("ignore", message=".*Sparse CSR tensor support is in beta.*")
        out, probs = CSRAttentionFunction.apply(
            query, key, value, bias, gate, pattern, scale, dropout_p, seed, need_weights
        )
    if not need_weights:
        return out, None, None
    weights = probs * dropout_scale(seed, probs.shape, dropout_p, probs) if dropout_p > 0 else probs
    return out, probs, weights
