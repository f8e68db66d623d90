"""`sparse_attention`: scaled dot-product attention restricted to the edges of a pattern."""
from __future__ import annotations

import math
from typing import Optional, Tuple, Union

import torch
from torch import Tensor

from .csr_kernel import csr_attention
from .pattern import CSRPattern, check_edge_index
from .reference import reference_attention

BACKENDS = ("auto", "csr", "reference")
GATE_MODES = ("scale", "log")
_LOW_PRECISION = (torch.float16, torch.bfloat16)


def sparse_attention(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    edge_index: Union[Tensor, CSRPattern],
    *,
    edge_bias: Optional[Tensor] = None,
    edge_gate: Optional[Tensor] = None,
    gate_mode: str = "scale",
    scale: Optional[float] = None,
    dropout: float = 0.0,
    training: bool = True,
    return_attention: bool = False,
    backend: str = "auto",
) -> Union[Tensor, Tuple[Tensor, Tensor]]:
    r"""Multi-head attention of each target over its incoming edges.

    .. math::
        \alpha_{ij} = \mathrm{softmax}_{j \in \mathcal{N}(i)}\big(s\,\mathbf{q}_i^\top\mathbf{k}_j + b_{ij}\big),
        \qquad \mathbf{o}_i = \sum_{j \in \mathcal{N}(i)} \alpha_{ij} \mathbf{v}_j

    per head, where :math:`\mathcal{N}(i)` are the sources of the edges ``j → i`` and
    :math:`s` is ``scale``. It equals dense attention with the boolean mask of the pattern
    wherever a target has an edge; a target without edges outputs zeros.

    Edge gates :math:`g_{ij} \in [0, 1]` make a pattern learnable:
    ``gate_mode="scale"`` uses :math:`s\,(\mathbf{q}_i^\top\mathbf{k}_j)\,g_{ij} + b_{ij}`
    (the classic :math:`\mathrm{softmax}(QK^\top \odot \sigma(P)/\sqrt{d})`), and
    ``gate_mode="log"`` uses :math:`s\,\mathbf{q}_i^\top\mathbf{k}_j + \log g_{ij} + b_{ij}`,
    which multiplies each edge's unnormalised weight by :math:`g_{ij}`, so a gate near 0
    removes the edge (exactly 0 is treated as the smallest positive float).

    Args:
        query: ``[N_dst, H, D]``.
        key: ``[N_src, H, D]``.
        value: ``[N_src, H, Dv]``.
        edge_index: ``LongTensor [2, E]`` (row 0 source ``j``, row 1 target ``i``, any order,
            repeated pairs are separate edges) or a prebuilt :class:`CSRPattern`.
        edge_bias: ``[E]`` or ``[E, H]`` added to the logits.
        edge_gate: ``[E]`` or ``[E, H]`` with values in ``[0, 1]``.
        gate_mode: ``"scale"`` or ``"log"`` (see above).
        scale: logit scale, default ``1 / sqrt(D)``.
        dropout: probability of dropping an attention weight (only when ``training``).
        training: apply dropout.
        return_attention: also return ``alpha [E, H]`` (before dropout) in the caller's edge order.
        backend: ``"csr"`` (memory-lean, hand-written backward), ``"reference"``
            (gather/scatter oracle) or ``"auto"`` (``"csr"``).

    Returns:
        ``out [N_dst, H, Dv]`` in the dtype of ``query``, or ``(out, alpha)``.
        float16/bfloat16 inputs are computed in float32 and cast back.
    """
    out, alpha, _ = attention_with_weights(
        query, key, value, edge_index,
        edge_bias=edge_bias, edge_gate=edge_gate, gate_mode=gate_mode, scale=scale,
        dropout=dropout, training=training, need_weights=return_attention, backend=backend,
    )
    return (out, alpha) if return_attention else out


def attention_with_weights(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    edge_index: Union[Tensor, CSRPattern],
    *,
    edge_bias: Optional[Tensor] = None,
    edge_gate: Optional[Tensor] = None,
    gate_mode: str = "scale",
    scale: Optional[float] = None,
    dropout: float = 0.0,
    training: bool = True,
    need_weights: bool = True,
    backend: str = "auto",
) -> Tuple[Tensor, Optional[Tensor], Optional[Tensor]]:
    """`sparse_attention` returning ``(out, alpha, weights)``, all in the caller's edge order.

    ``alpha [E, H]`` is the softmax and ``weights [E, H]`` the same after dropout (the factors
    that multiplied the values; equal to ``alpha`` without dropout), both differentiable, or
    ``None`` unless ``need_weights``. Layers that aggregate extra per-edge values use
    ``weights`` so that those values see the same dropout mask.
    """
    _check_qkv(query, key, value)
    num_dst, heads, head_dim = query.shape
    num_src = key.size(0)
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if gate_mode not in GATE_MODES:
        raise ValueError(f"gate_mode must be one of {GATE_MODES}, got {gate_mode!r}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")
    if scale is None:
        scale = 1.0 / math.sqrt(head_dim)
    elif not isinstance(scale, (int, float)) or not math.isfinite(scale):
        raise TypeError(f"scale must be a finite float or None, got {scale!r}")

    pattern: Optional[CSRPattern] = None
    if isinstance(edge_index, CSRPattern):
        _check_pattern(edge_index, num_src, num_dst, query.device)
        pattern = edge_index
    elif backend == "reference":
        edge_index = check_edge_index(edge_index, num_src, num_dst)
    else:
        pattern = CSRPattern.from_edge_index(edge_index, (num_src, num_dst))
    num_edges = pattern.num_edges if pattern is not None else edge_index.size(1)

    compute_dtype = torch.float32 if query.dtype in _LOW_PRECISION else query.dtype
    bias = _edge_tensor(edge_bias, "edge_bias", num_edges, heads, query.device, compute_dtype)
    gate = _edge_tensor(edge_gate, "edge_gate", num_edges, heads, query.device, compute_dtype)
    if gate is not None:
        if not bool(((gate >= 0) & (gate <= 1)).all()):
            raise ValueError("edge_gate values must lie in [0, 1] (and not be NaN)")
        if gate_mode == "log":
            log_gate = torch.log(gate.clamp_min(torch.finfo(compute_dtype).tiny))
            bias = log_gate if bias is None else bias + log_gate
            gate = None

    q, k, v = (t.to(compute_dtype) for t in (query, key, value))
    dropout_p = float(dropout) if training else 0.0
    if backend == "reference":
        pairs = pattern.edge_index if pattern is not None else edge_index
        out, alpha, weights = reference_attention(q, k, v, pairs, bias, gate, float(scale), dropout_p)
    else:
        out, alpha, weights = csr_attention(
            q, k, v, pattern, pattern.caller_to_sorted(bias), pattern.caller_to_sorted(gate),
            float(scale), dropout_p, need_weights,
        )
        if need_weights:
            alpha = pattern.sorted_to_caller(alpha)
            weights = pattern.sorted_to_caller(weights) if dropout_p > 0 else alpha
    if not need_weights:
        return out.to(query.dtype), None, None
    return out.to(query.dtype), alpha.to(query.dtype), weights.to(query.dtype)



def _check_qkv(query: Tensor, key: Tensor, value: Tensor) -> None:
    for name, t in (("query", query), ("key", key), ("value", value)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a Tensor, got {type(t).__name__}")
        if not t.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor, got {t.dtype}")
        if t.dim() != 3:
            raise ValueError(f"{name} must have shape [N, H, D], got {list(t.shape)}")
    if not (query.dtype == key.dtype == value.dtype):
        raise TypeError(f"query, key and value must share a dtype, got {query.dtype}, {key.dtype}, {value.dtype}")
    if not (query.device == key.device == value.device):
        raise ValueError(f"query, key and value must be on one device, got {query.device}, {key.device}, {value.device}")
    if key.size(0) != value.size(0):
        raise ValueError(f"key and value must have the same number of source nodes, got {key.size(0)} and {value.size(0)}")
    if not (query.size(1) == key.size(1) == value.size(1)):
        raise ValueError(f"query, key and value must have the same number of heads, got {query.size(1)}, {key.size(1)}, {value.size(1)}")
    if query.size(2) != key.size(2):
        raise ValueError(f"query and key must have the same head dim, got {query.size(2)} and {key.size(2)}")


def _check_pattern(pattern: CSRPattern, num_src: int, num_dst: int, device: torch.device) -> None:
    if (pattern.num_src, pattern.num_dst) != (num_src, num_dst):
        raise ValueError(
            f"edge_index (CSRPattern) is built for {pattern.num_src} sources and {pattern.num_dst} targets, "
            f"but key has {num_src} and query has {num_dst} nodes"
        )
    if pattern.device != device:
        raise ValueError(f"edge_index (CSRPattern) is on {pattern.device} but query is on {device}; use pattern.to(device)")


def _edge_tensor(
    t: Optional[Tensor], name: str, num_edges: int, heads: int, device: torch.device, dtype: torch.dtype
) -> Optional[Tensor]:
    """Validate a per-edge ``[E]`` / ``[E, H]`` tensor and return it as ``[E, 1|H]`` in ``dtype``."""
    if t is None:
        return None
    if not isinstance(t, Tensor) or not t.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor of shape [E] or [E, H]")
    if t.shape not in (torch.Size([num_edges]), torch.Size([num_edges, heads]), torch.Size([num_edges, 1])):
        raise ValueError(f"{name} must have shape [E]=[{num_edges}] or [E, H]=[{num_edges}, {heads}], got {list(t.shape)}")
    if t.device != device:
        raise ValueError(f"{name} is on {t.device} but query is on {device}")
    return (t.unsqueeze(-1) if t.dim() == 1 else t).to(dtype)
