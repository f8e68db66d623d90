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
    """Edge scores ``s[h, e] = a[row[e], h] · b[col[e], h]``, head-major, in sorted edge order.

    Args:
        a: ``[N_dst, H, D]``; b: ``[N_src, H, D]``. Returns ``[H, E]``.
    """
    if pattern.has_duplicates:
        return _sddmm_gather(pattern, a, b)
    # Zeroed: in place, sampled_addmm scales the old values by beta=0, and NaN * 0 is NaN.
    out = a.new_zeros(a.size(1), pattern.num_edges)
    for h in range(a.size(1)):
        # Writing into the pattern's own values (out=) skips the copy of indices and values
        # that an out-of-place sampled_addmm makes.
        scores = _csr(pattern.rowptr, pattern.col, out[h], (pattern.num_dst, pattern.num_src))
        result = torch.sparse.sampled_addmm(scores, a[:, h].contiguous(), b[:, h].contiguous().t(), beta=0.0, out=scores)
        if result.values().data_ptr() != out[h].data_ptr():
            out[h] = result.values()
    return out


_GATHER_CHUNK_ELEMENTS = 1 << 22


def _sddmm_gather(pattern: CSRPattern, a: Tensor, b: Tensor) -> Tensor:
    # sampled_addmm is defined on a sparsity *set*; repeated (i, j) pairs fall outside its
    # contract, so those patterns gather in bounded chunks (never a full [E, H, D] tensor).
    out = a.new_empty(a.size(1), pattern.num_edges)
    chunk = max(1, _GATHER_CHUNK_ELEMENTS // (a.size(1) * a.size(2)))
    for start in range(0, pattern.num_edges, chunk):
        rows = pattern.row[start : start + chunk]
        cols = pattern.col[start : start + chunk]
        out[:, start : start + chunk] = torch.linalg.vecdot(a.index_select(0, rows), b.index_select(0, cols)).t()
    return out


def spmm(pattern: CSRPattern, weights: Tensor, x: Tensor, transpose: bool = False) -> Tensor:
    """Weighted aggregation ``out[i, h] = Σ_e weights[h, e] x[col[e], h]`` over rows of the pattern.

    With ``transpose=True`` it aggregates over columns instead
    (``out[j, h] = Σ_e weights[h, e] x[row[e], h]``), using the by-source layout.

    Args:
        weights: ``[H, E]`` in sorted edge order; x: ``[N_src, H, D]`` (``[N_dst, H, D]`` when
            transposed). Returns ``[N_dst, H, D]`` (``[N_src, H, D]`` when transposed).
    """
    if transpose:
        ptr, idx, size = pattern.colptr, pattern.row_t, (pattern.num_src, pattern.num_dst)
        weights = weights.index_select(1, pattern.perm_t)
    else:
        ptr, idx, size = pattern.rowptr, pattern.col, (pattern.num_dst, pattern.num_src)
    out = x.new_empty(size[0], weights.size(0), x.size(-1))
    for h in range(weights.size(0)):
        out[:, h] = _csr(ptr, idx, weights[h], size) @ x[:, h].contiguous()
    return out


def segment_sum(values: Tensor, pattern: CSRPattern) -> Tensor:
    """``[H, E]`` → ``[H, N_dst]`` sums over each target's incoming edges."""
    return torch.stack([torch.segment_reduce(v, "sum", offsets=pattern.rowptr) for v in values])


def per_edge(node_values: Tensor, pattern: CSRPattern) -> Tensor:
    """Broadcast ``[H, N_dst]`` target values to ``[H, E]`` edges."""
    return node_values.index_select(1, pattern.row)


def segment_exp_(logits: Tensor, pattern: CSRPattern) -> Tuple[Tensor, Tensor, Tensor]:
    """Unnormalised, max-shifted softmax terms of ``logits [H, E]`` over each target's edges.

    Works in place: ``logits`` is overwritten with the result (one ``[H, E]`` buffer fewer).
    Returns ``(exp [H, E], row_sum [H, N_dst], lse [H, N_dst])`` with ``softmax = exp / row_sum``
    per edge. Targets without edges (or whose logits are all ``-inf``) get ``row_sum = 0`` and
    ``lse = +inf``, so that recomputing ``exp(logit − lse)`` gives exact zeros.
    """
    row_max = torch.stack([torch.segment_reduce(v, "max", offsets=pattern.rowptr) for v in logits])
    row_max = torch.where(torch.isfinite(row_max), row_max, torch.zeros_like(row_max))
    exp = logits.sub_(per_edge(row_max, pattern)).exp_()
    row_sum = segment_sum(exp, pattern)
    lse = torch.where(row_sum > 0, row_max + torch.log(row_sum), torch.full_like(row_sum, float("inf")))
    return exp, row_sum, lse


def dropout_scale(seed: int, shape: Tuple[int, ...], p: float, like: Tensor) -> Tensor:
    """Inverted-dropout multipliers (0 or ``1/(1-p)``) drawn from ``seed``, so backward can regenerate them."""
    generator = torch.Generator(device=like.device)
    generator.manual_seed(seed)
    keep = torch.rand(shape, generator=generator, device=like.device, dtype=like.dtype) >= p
    return keep.to(like.dtype) / (1.0 - p)


def _reduce_to(grad: Tensor, shape: torch.Size) -> Tensor:
    return grad.sum(dim=0, keepdim=True) if shape[0] == 1 and grad.size(0) != 1 else grad


class CSRAttentionFunction(torch.autograd.Function):
    """Autograd function of the ``csr`` backend (all per-edge tensors in sorted edge order).

    Inputs: ``query [N_dst, H, D]``, ``key [N_src, H, D]``, ``value [N_src, H, Dv]``,
    ``bias [1|H, E]`` or None, ``gate [1|H, E]`` or None (multiplies ``q·k`` before scaling),
    the ``CSRPattern``, ``scale``, dropout probability, dropout seed, and whether to also
    return the (pre-dropout, differentiable) probabilities ``[H, E]``.
    """

    @staticmethod
    def forward(ctx, query, key, value, bias, gate, pattern, scale, dropout_p, seed, need_weights):
        # Folding the scale into the queries costs [N, H, D] work instead of [H, E].
        scaled_query = query * scale
        # _logits returns a fresh tensor or `scores` itself, which is not needed again: safe to consume.
        exp, row_sum, lse = segment_exp_(_logits(sddmm(pattern, scaled_query, key), bias, gate), pattern)
        # A row sum is >= 1 wherever a finite logit exists, so the clamp only turns 0/0 into 0.
        row_sum = row_sum.clamp_min(torch.finfo(row_sum.dtype).tiny)
        kept = exp * dropout_scale(seed, exp.shape, dropout_p, exp) if dropout_p > 0 else exp
        # Normalising the aggregated [N, H, Dv] output instead of the [H, E] weights saves a pass over edges.
        out = spmm(pattern, kept, value) / row_sum.t().unsqueeze(-1)
        ctx.save_for_backward(scaled_query, key, value, bias, gate, out, lse)
        ctx.pattern, ctx.scale, ctx.dropout_p, ctx.seed = pattern, scale, dropout_p, seed
        ctx.set_materialize_grads(False)
        if need_weights:
            return out, exp / per_edge(row_sum, pattern)
        ctx.mark_non_differentiable(lse)
        return out, lse

    @staticmethod
    def backward(ctx, grad_out, grad_probs):
        scaled_query, key, value, bias, gate, out, lse = ctx.saved_tensors
        pattern, dropout_p = ctx.pattern, ctx.dropout_p
        if grad_out is None:
            grad_out = torch.zeros_like(out)
        scores = sddmm(pattern, scaled_query, key)
        # In place where safe: `_logits` is fresh, or `scores` itself, which is only read again with a gate
        # (and then `_logits` is fresh). Each in-place step saves one [H, E] buffer at the peak.
        probs = _logits(scores, bias, gate).sub_(per_edge(lse, pattern)).exp_()
        keep = dropout_scale(ctx.seed, probs.shape, dropout_p, probs) if dropout_p > 0 else None

        grad_value = spmm(pattern, probs * keep if keep is not None else probs, grad_out, transpose=True)
        grad_logits = sddmm(pattern, grad_out, value)  # dP, turned into dS = P ⊙ (dP − rowsum(P ⊙ dP)) below
        if keep is not None:
            grad_logits.mul_(keep)
            del keep
        # rowsum(P ⊙ dP) over a target's edges equals dO_i · O_i, so no segment reduction is needed.
        row_dot = (grad_out * out).sum(-1).t()
        if grad_probs is not None:
            grad_logits.add_(grad_probs)
            row_dot = row_dot + segment_sum(probs * grad_probs, pattern)
        grad_logits.sub_(per_edge(row_dot, pattern)).mul_(probs)
        del probs

        grad_gate = None
        grad_scores = grad_logits
        if gate is not None:
            if ctx.needs_input_grad[4]:
                grad_gate = _reduce_to(grad_logits * scores, gate.shape)
            grad_scores = grad_logits * gate
        grad_query = spmm(pattern, grad_scores, key) * ctx.scale if ctx.needs_input_grad[0] else None
        grad_key = spmm(pattern, grad_scores, scaled_query, transpose=True) if ctx.needs_input_grad[1] else None
        grad_bias = _reduce_to(grad_logits, bias.shape) if bias is not None and ctx.needs_input_grad[3] else None
        return grad_query, grad_key, grad_value, grad_bias, grad_gate, None, None, None, None, None


def _logits(scores: Tensor, bias: Optional[Tensor], gate: Optional[Tensor]) -> Tensor:
    logits = scores * gate if gate is not None else scores
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
    """Run the ``csr`` backend; per-edge inputs and outputs are ``[E, 1|H]`` in sorted edge order.

    Returns ``(out, probs, weights)``: the softmax ``probs [E, H]`` and the weights after
    dropout (the ones that multiplied the values) when ``need_weights``, else ``None``.
    The dropout mask is regenerated from the same seed, so both share it.
    """
    bias, gate = (None if t is None else t.t().contiguous() for t in (bias, gate))
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
    return out, probs.t(), weights.t()
