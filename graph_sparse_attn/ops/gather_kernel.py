"""The ``gather`` backend: all heads at once from per-edge gathers and segment reductions.

For small patterns the cost of attention is the number of kernel launches, not arithmetic: the
``csr`` backend's sparse-matrix calls run head by head, the ``compiled`` backend's per bucket.
This backend issues a fixed, small number of vectorised calls per pass by gathering the
endpoints of every edge (``[E, H, D]`` temporaries, which is why `ops.dispatch` only picks it
below ``GATHER_MAX_ELEMENTS``) and reducing over each target's edges with ``segment_reduce``
on the sorted layout. Backward recomputes the probabilities from ``lse``; dK/dV are reduced
over the by-source layout (``perm_t``, ``colptr``), so every reduction runs in a fixed order
and results are bitwise deterministic.

    forward:   l_e = (q_i · k_j) g_e + b_e,  lse_i = logsumexp_{e→i} l_e,  o_i = Σ_{e→i} exp(l_e − lse_i) m_e v_j
    backward:  p = exp(l − lse),  dS = p ⊙ (m (dO_i · v_j) − dO_i · O_i),
               dQ_i = Σ_{e→i} dS g k_j,  dK_j = Σ_{e: j→} dS g q_i,  dV_j = Σ_{e: j→} p m dO_i
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor

from . import csr_kernel
from .pattern import CSRPattern


def available() -> bool:
    """Always: plain tensor operations."""
    return True


def _segment_sum(values: Tensor, ptr: Tensor) -> Tensor:
    """``[E, ...]`` → ``[N, ...]`` sums over the runs ``[ptr[n], ptr[n+1])`` (empty runs give 0)."""
    return torch.segment_reduce(values, "sum", offsets=ptr, axis=0)


def sddmm(pattern: CSRPattern, a: Tensor, b: Tensor) -> Tensor:
    """Edge scores ``s[h, e] = a[row[e], h] · b[col[e], h]``: ``[H, E]`` in sorted edge order."""
    return torch.linalg.vecdot(a.index_select(0, pattern.row.long()), b.index_select(0, pattern.col.long())).t()


def sddmm_backward(pattern: CSRPattern, grad_scores: Tensor, a: Tensor, b: Tensor) -> Tuple[Tensor, Tensor]:
    """Adjoint of :func:`sddmm`: ``(da [N_dst, H, D], db [N_src, H, D])`` for ``grad_scores [H, E]``."""
    row, col, grad = pattern.row.long(), pattern.col.long(), grad_scores.t().unsqueeze(-1)
    grad_a = _segment_sum(grad * b.index_select(0, col), pattern.rowptr)
    grad_b = _segment_sum((grad * a.index_select(0, row)).index_select(0, pattern.perm_t.long()), pattern.colptr)
    return grad_a, grad_b


def forward(
    q: Tensor, k: Tensor, v: Tensor, pattern: CSRPattern, bias: Optional[Tensor], gate: Optional[Tensor], keep: Optional[Tensor]
) -> Tuple[Tensor, Tensor]:
    """Backend contract (see `ops.dispatch`): ``(out [N_dst, H, Dv], lse [H, N_dst])`` for scaled ``q``."""
    row, col = pattern.row.long(), pattern.col.long()
    logits = csr_kernel.logits(sddmm(pattern, q, k), bias, gate).t()  # [E, H]
    row_max = torch.segment_reduce(logits, "max", offsets=pattern.rowptr, axis=0)  # -inf for empty rows
    row_max = torch.where(torch.isfinite(row_max), row_max, torch.zeros_like(row_max))
    exp = torch.exp(logits - row_max.index_select(0, row))
    row_sum = _segment_sum(exp, pattern.rowptr)
    lse = torch.where(row_sum > 0, row_max + torch.log(row_sum), torch.full_like(row_sum, float("inf")))
    weights = exp * keep.t() if keep is not None else exp
    out = _segment_sum(weights.unsqueeze(-1) * v.index_select(0, col), pattern.rowptr)
    # Normalising the [N, H, Dv] output instead of the [E, H] weights saves a pass over edges.
    out = out / row_sum.clamp_min(torch.finfo(row_sum.dtype).tiny).unsqueeze(-1)
    return out, lse.t()


def backward(
    grad_out: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor, pattern: CSRPattern,
    bias: Optional[Tensor], gate: Optional[Tensor], keep: Optional[Tensor], need_dlogits: bool,
) -> Tuple[Tensor, Tensor, Tensor, Optional[Tensor]]:
    """Backend contract: ``(dq, dk, dv, dlogits [H, E] or None)``, probabilities recomputed from ``lse``."""
    row, col = pattern.row.long(), pattern.col.long()
    # lse = +inf on targets without a finite logit: exp gives exact zeros there.
    probs = torch.exp(csr_kernel.logits(sddmm(pattern, q, k), bias, gate).t() - lse.t().index_select(0, row))
    grad_out_edges = grad_out.index_select(0, row)  # [E, H, Dv]
    grad_probs = torch.linalg.vecdot(grad_out_edges, v.index_select(0, col))
    kept = probs
    if keep is not None:
        grad_probs, kept = grad_probs * keep.t(), probs * keep.t()
    # rowsum(P ⊙ dP) over a target's edges equals dO_i · O_i, so no segment reduction is needed.
    row_dot = torch.linalg.vecdot(grad_out, out)  # [N_dst, H]
    grad_logits = probs * (grad_probs - row_dot.index_select(0, row))
    grad_scores = grad_logits * gate.t() if gate is not None else grad_logits
    grad_query, grad_key = sddmm_backward(pattern, grad_scores.t(), q, k)
    # Values: reduced in by-source order, like the keys.
    grad_value = _segment_sum((kept.unsqueeze(-1) * grad_out_edges).index_select(0, pattern.perm_t.long()), pattern.colptr)
    return grad_query, grad_key, grad_value, (grad_logits.t() if need_dlogits else None)


def attention_with_edge_values(
    q: Tensor, k: Tensor, v: Tensor, pattern: CSRPattern, edge_values: Tensor,
    bias: Optional[Tensor], gate: Optional[Tensor], keep: Optional[Tensor],
) -> Tuple[Tensor, Tensor]:
    """Attention whose keys and values carry per-edge additions, differentiated by autograd.

    ``logit_e = (q_i · (k_j + ev_e)) g_e + b_e``, ``out_i = Σ_{e→i} softmax_e m_e (v_j + ev_e)`` for
    scaled ``q [N_dst, H, D]``, ``edge_values [E, H, D]`` in sorted order and the contract's
    ``bias``/``gate``/``keep``. Returns ``(out [N_dst, H, D], probs [H, E])``. One pass serves
    both the output and the probabilities, which is what small patterns with edge features
    need (their per-edge terms are materialised anyway).
    """
    row, col = pattern.row.long(), pattern.col.long()
    logits = torch.linalg.vecdot(q.index_select(0, row), k.index_select(0, col) + edge_values)  # [E, H]
    if gate is not None:
        logits = logits * gate.t()
    if bias is not None:
        logits = logits + bias.t()
    # The shift cancels in the softmax, so it needs no gradient.
    row_max = torch.segment_reduce(logits.detach(), "max", offsets=pattern.rowptr, axis=0)
    row_max = torch.where(torch.isfinite(row_max), row_max, torch.zeros_like(row_max))
    exp = torch.exp(logits - row_max.index_select(0, row))
    row_sum = _segment_sum(exp, pattern.rowptr).clamp_min(torch.finfo(exp.dtype).tiny)
    probs = exp / row_sum.index_select(0, row)
    weights = probs * keep.t() if keep is not None else probs
    out = _segment_sum(weights.unsqueeze(-1) * (v.index_select(0, col) + edge_values), pattern.rowptr)
    return out, probs.t()
