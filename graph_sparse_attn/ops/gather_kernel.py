"""The ``gather`` backend: one gathered pass over the edges, differentiated by autograd.

For small patterns the cost of attention is the number of calls, not arithmetic: the ``csr``
backend's sparse-matrix calls run head by head, the ``compiled`` backend's per degree bucket, and
both recompute the probabilities in backward. This backend gathers the endpoints of every edge,
all heads at once, and lets autograd keep what backward needs. Its ``[E, H, D]`` temporaries live
until backward, which is why `ops.dispatch` picks it only for small patterns (``GATHER_MAX_ELEMENTS``,
or ``GATHER_SPARSE_MAX_ELEMENTS`` at low mean in-degree):

    l_e = s (q_i · (k_j + ev_e)) g_e + b_e,   p_e = exp(l_e − max_i) / Σ_{e'→i} exp(l_e' − max_i),
    o_i = Σ_{e→i} p_e m_e (v_j + ev_e)

for every edge ``e = j → i``, with scale ``s`` and optional edge values ``ev``, gate ``g``, bias ``b`` and dropout
multipliers ``m``. Edges may come in any order, so on CPU no `CSRPattern` is needed: sums over a
target's edges are an ``index_add_`` in edge order, serial per target and hence bitwise
deterministic (and about 2x faster than ``segment_reduce`` there). On GPUs, where ``index_add_``
accumulates with atomics, the forward sums run ``segment_reduce`` over edges sorted by target
(``rowptr``); the adjoints of the gathers are still ``index_add_`` there, so use ``triton`` or
``csr`` on CUDA where bitwise reproducible gradients matter.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor


def available() -> bool:
    """Always: plain tensor operations."""
    return True


def _sum_by_target(values: Tensor, dst: Tensor, num_dst: int, rowptr: Optional[Tensor]) -> Tensor:
    """``[E, ...]`` → ``[N_dst, ...]`` sums over each target's edges (0 for a target without any)."""
    if values.device.type == "cpu":
        # In place on fresh zeros: the out-of-place form would copy them first.
        return values.new_zeros(num_dst, *values.shape[1:]).index_add_(0, dst, values)
    if rowptr is None:
        raise ValueError("the gather backend needs edges sorted by target (rowptr) off CPU")
    return torch.segment_reduce(values, "sum", offsets=rowptr, axis=0)


def attention(
    q: Tensor, k: Tensor, v: Tensor, src: Tensor, dst: Tensor, num_dst: int, scale: float = 1.0, *,
    edge_values: Optional[Tensor] = None, bias: Optional[Tensor] = None, gate: Optional[Tensor] = None,
    keep: Optional[Tensor] = None, rowptr: Optional[Tensor] = None,
) -> Tuple[Tensor, Tensor]:
    """Attention of each target over its edges in one gathered pass (formula in the module docstring).

    Args:
        q: ``[N_dst, H, D]``; k: ``[N_src, H, D]``; v: ``[N_src, H, Dv]``.
        src, dst: ``[E]`` int64 source ``j`` and target ``i`` of each edge, in any order (sorted
            by target off CPU, see ``rowptr``). Every per-edge tensor below follows this order.
        num_dst: ``N_dst``.
        scale: ``s``, applied to the ``[E, H]`` scores (fewer elements than ``q`` on sparse graphs).
        edge_values: ``[E, H, D]`` added to each edge's key and value (needs ``Dv == D``).
        bias: ``[E, 1|H]`` added to the logits; gate: ``[E, 1|H]`` multiplying the scores.
        keep: ``[E, H]`` dropout multipliers of the probabilities.
        rowptr: ``[N_dst + 1]`` offsets of each target's edges when they are sorted by target;
            required off CPU.

    Returns:
        ``(out [N_dst, H, Dv], probs [E, H])``, ``probs`` before dropout; both differentiable.
    """
    keys, values = k.index_select(0, src), v.index_select(0, src)
    if edge_values is not None:
        keys, values = keys + edge_values, values + edge_values
    logits = torch.linalg.vecdot(q.index_select(0, dst), keys) * scale  # [E, H]
    if gate is not None:
        logits = logits * gate
    if bias is not None:
        logits = logits + bias
    # The shift cancels in the softmax, so it needs no gradient; amax does not depend on the order.
    # Clamping a -inf maximum (a target whose logits are all -inf) to the lowest finite value
    # makes those logits' exp 0 rather than exp(nan).
    row_max = logits.new_full((num_dst, logits.size(1)), float("-inf")).scatter_reduce_(
        0, dst.unsqueeze(-1).expand_as(logits), logits.detach(), "amax").clamp_min_(torch.finfo(logits.dtype).min)
    exp = torch.exp(logits - row_max.index_select(0, dst))
    # Targets without a finite logit have a zero sum: dividing by 1 instead turns their 0/0 into 0
    # (a clamp to the smallest float would, in backward, scale their gradient by 1/tiny into inf, then NaN).
    row_sum = _sum_by_target(exp, dst, num_dst, rowptr)
    row_sum = torch.where(row_sum > 0, row_sum, 1.0)
    probs = exp / row_sum.index_select(0, dst)
    weights = probs * keep if keep is not None else probs
    out = _sum_by_target(weights.unsqueeze(-1) * values, dst, num_dst, rowptr)
    return out, probs
