"""The ``csr`` backend: sparse attention from sparse-matrix primitives, with a recomputing backward.

Only ``[E, H]`` edge scores and ``[N, H, D]`` node tensors are ever allocated; per-edge
messages ``[E, H, D]`` are never formed. Per head, scores come from a sampled dense-dense
product (SDDMM, ``torch.sparse.sampled_addmm``) and aggregation from a CSR @ dense product
(SpMM). Backward recomputes the probabilities from the saved row log-sum-exp instead of
keeping ``[E, H]`` intermediates alive between forward and backward:

    dV = Pᵀ dO,  dP = SDDMM(dO, V),  dS = P ⊙ (dP − rowsum(dO ⊙ O)),  dQ = dS K,  dK = dSᵀ Q
"""
from __future__ import annotations

import contextlib
import warnings
from typing import Iterator, Optional, Tuple

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
    chunk = max(1, _GATHER_CHUNK_ELEMENTS // max(1, a.size(1) * a.size(2)))
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
    """``[H, E]`` → ``[H, N_dst]`` sums over each target's incoming edges (all heads in one call)."""
    return torch.segment_reduce(values, "sum", offsets=pattern.rowptr.expand(values.size(0), -1), axis=1)


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
    row_max = torch.segment_reduce(logits, "max", offsets=pattern.rowptr.expand(logits.size(0), -1), axis=1)
    row_max = torch.where(torch.isfinite(row_max), row_max, torch.zeros_like(row_max))
    exp = logits.sub_(per_edge(row_max, pattern)).exp_()
    row_sum = segment_sum(exp, pattern)
    lse = torch.where(row_sum > 0, row_max + torch.log(row_sum), torch.full_like(row_sum, float("inf")))
    return exp, row_sum, lse


def sddmm_backward(pattern: CSRPattern, grad_scores: Tensor, a: Tensor, b: Tensor) -> Tuple[Tensor, Tensor]:
    """Adjoint of :func:`sddmm`: ``(da [N_dst, H, D], db [N_src, H, D])`` for ``grad_scores [H, E]``."""
    return spmm(pattern, grad_scores, b), spmm(pattern, grad_scores, a, transpose=True)


def dropout_scale(shape: Tuple[int, ...], p: float, like: Tensor, seed: Optional[int] = None) -> Tensor:
    """Inverted-dropout multipliers (0 or ``1/(1-p)``) of ``like``'s dtype and device: drawn from
    ``seed``, so a backward pass can regenerate them, or from the global RNG when it is ``None``."""
    generator = None
    if seed is not None:
        generator = torch.Generator(device=like.device)
        generator.manual_seed(seed)
    keep = torch.rand(shape, generator=generator, device=like.device, dtype=like.dtype) >= p
    return keep.to(like.dtype) / (1.0 - p)


def logits(scores: Tensor, bias: Optional[Tensor], gate: Optional[Tensor]) -> Tensor:
    """``scores ⊙ gate + bias`` (``[H, E]``); returns ``scores`` itself when both are None."""
    out = scores * gate if gate is not None else scores
    return out + bias if bias is not None else out


def forward(
    q: Tensor, k: Tensor, v: Tensor, pattern: CSRPattern, bias: Optional[Tensor], gate: Optional[Tensor], keep: Optional[Tensor]
) -> Tuple[Tensor, Tensor]:
    """Backend contract (see `ops.attention`): ``(out [N_dst, H, Dv], lse [H, N_dst])`` for scaled ``q``."""
    with _quiet_sparse():
        # `logits` returns a fresh tensor or the scores themselves, which are not needed again: safe to consume.
        exp, row_sum, lse = segment_exp_(logits(sddmm(pattern, q, k), bias, gate), pattern)
        # A row sum is >= 1 wherever a finite logit exists, so the clamp only turns 0/0 into 0.
        row_sum = row_sum.clamp_min(torch.finfo(row_sum.dtype).tiny)
        # Normalising the aggregated [N, H, Dv] output instead of the [H, E] weights saves a pass over edges.
        out = spmm(pattern, exp.mul_(keep) if keep is not None else exp, v) / row_sum.t().unsqueeze(-1)
    return out, lse


def backward(
    grad_out: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor, pattern: CSRPattern,
    bias: Optional[Tensor], gate: Optional[Tensor], keep: Optional[Tensor], need_dlogits: bool,
) -> Tuple[Tensor, Tensor, Tensor, Optional[Tensor]]:
    """Backend contract: ``(dq, dk, dv, dlogits [H, E] or None)``, probabilities recomputed from ``lse``."""
    with _quiet_sparse():
        # In place where safe: each in-place step saves one [H, E] buffer at the peak.
        probs = logits(sddmm(pattern, q, k), bias, gate).sub_(per_edge(lse, pattern)).exp_()
        grad_value = spmm(pattern, probs * keep if keep is not None else probs, grad_out, transpose=True)
        grad_logits = sddmm(pattern, grad_out, v)  # dP, turned into dS = P ⊙ (dP − rowsum(P ⊙ dP)) below
        if keep is not None:
            grad_logits.mul_(keep)
        # rowsum(P ⊙ dP) over a target's edges equals dO_i · O_i, so no segment reduction is needed.
        row_dot = (grad_out * out).sum(-1).t()
        grad_logits.sub_(per_edge(row_dot, pattern)).mul_(probs)
        del probs
        grad_scores = grad_logits * gate if gate is not None else grad_logits
        grad_query, grad_key = sddmm_backward(pattern, grad_scores, q, k)
    return grad_query, grad_key, grad_value, (grad_logits if need_dlogits else None)


@contextlib.contextmanager
def _quiet_sparse() -> Iterator[None]:
    # torch flags every sparse CSR construction as beta; the kernels used here are stable.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*Sparse CSR tensor support is in beta.*")
        yield
