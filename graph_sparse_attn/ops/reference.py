"""The ``reference`` backend: gather, score, segment-softmax, scatter — readable, kept as the oracle.

It materialises per-edge keys, values and messages (``[E, H, D]``) and relies on autograd,
so it is simple to trust and costly to run.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor


def reference_attention(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    edge_index: Tensor,
    bias: Optional[Tensor],
    gate: Optional[Tensor],
    scale: float,
    dropout_p: float,
) -> Tuple[Tensor, Tensor, Tensor]:
    """``out_i = Σ_j softmax_j(scale · (q_i·k_j) ⊙ g_ij + b_ij) v_j`` over edges ``j → i``.

    Args:
        query ``[N_dst, H, D]``, key ``[N_src, H, D]``, value ``[N_src, H, Dv]``,
        edge_index ``[2, E]`` (int64, validated), bias / gate ``[E, 1|H]`` or None.

    Returns:
        ``(out [N_dst, H, Dv], alpha [E, H], weights [E, H])``: the softmax and the weights
        after dropout.
    """
    src, dst = edge_index
    num_dst, heads = query.size(0), query.size(1)
    scores = (query[dst] * key[src]).sum(-1)
    logits = scores * gate * scale if gate is not None else scores * scale
    if bias is not None:
        logits = logits + bias

    index = dst.unsqueeze(-1).expand_as(logits)
    row_max = logits.new_full((num_dst, heads), float("-inf")).scatter_reduce(0, index, logits, "amax")
    row_max = torch.where(torch.isfinite(row_max), row_max, torch.zeros_like(row_max))
    exp = torch.exp(logits - row_max[dst])
    row_sum = logits.new_zeros(num_dst, heads).index_add(0, dst, exp)
    alpha = exp / torch.where(row_sum > 0, row_sum, 1.0)[dst]  # no edge with a finite logit: 0/1, not 0/0

    weights = F.dropout(alpha, p=dropout_p, training=True) if dropout_p > 0 else alpha
    messages = weights.unsqueeze(-1) * value[src]
    out = value.new_zeros(num_dst, heads, value.size(-1)).index_add(0, dst, messages)
    return out, alpha, weights
