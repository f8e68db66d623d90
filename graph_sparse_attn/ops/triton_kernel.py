"""The ``triton`` backend: FlashAttention-style sparse attention kernels for the GPU.

Forward runs one program per (target row, block of heads) and streams the row's edges in
chunks of ``BLOCK_E`` with an online softmax, so only ``out [N_dst, H, Dv]`` and
``lse [H, N_dst]`` are written. Backward recomputes the probabilities from ``lse``:

    P_e = exp(logit_e − lse_i),   dP_e = keep_e (dO_i · v_j),   δ_i = dO_i · O_i
    dlogit_e = P_e (dP_e − δ_i),  dscore_e = dlogit_e · gate_e
    dQ_i = Σ_{e into i} dscore_e k_j          (pass over rows, CSR)
    dK_j = Σ_{e out of j} dscore_e q_i,  dV_j = Σ_{e out of j} P_e keep_e dO_i   (pass over sources)

Each output row is owned by one program, so there are no atomics and results are
deterministic. Per-edge tensors (``bias``, ``gate``, ``keep``, ``dlogits``) are head-major
``[H, E]`` (``[1, E]`` broadcasts over heads) in the pattern's sorted edge order.

``triton`` is an optional dependency (``pip install graph-sparse-attn[gpu]``). Kernels run on
CUDA tensors, or on CPU tensors when ``TRITON_INTERPRET=1`` was set before ``triton`` was
imported (Triton's interpreter; used by the CPU test suite). float32 and float64 are supported.
"""
from __future__ import annotations

import os
from typing import Optional, Tuple

import torch
from torch import Tensor

from .pattern import CSRPattern

try:
    import triton
    import triton.language as tl
except ImportError:  # the backend is optional; `available()` reports it
    triton = None


def available() -> bool:
    """Whether ``triton`` can be imported (the backend may still need a CUDA device, see `runs_on`)."""
    return triton is not None


def runs_on(device: torch.device) -> bool:
    """Whether the kernels can run on ``device``: CUDA, or CPU under Triton's interpreter."""
    return available() and (device.type == "cuda" or os.environ.get("TRITON_INTERPRET") == "1")


# Largest number of elements in one [BLOCK_E, BLOCK_H, BLOCK_D] tile, so the gathered keys and
# values of a chunk stay in registers. ptxas for sm_90 (H=4, D=16, float32, all options on):
# 4096-element tiles take 231-254 registers a thread (2 programs per SM), 2048-element tiles with
# 4 warps 119-167 (3 per SM), 1024 with 2 warps 116-144 (7 per SM), none spilling. Smaller tiles
# keep more rows in flight to hide the latency of the gathers (not yet timed on a GPU).
_TILE_ELEMENTS = 2048


if triton is not None:

    @triton.jit
    def _logits(
        scores, offs_e, offs_h, mask, gate_ptr, gate_stride, bias_ptr, bias_stride,
        HAS_GATE: tl.constexpr, HAS_BIAS: tl.constexpr,
    ):
        # scores [BE, BH]; per-edge tensors live at [h * stride + e] (stride 0: one row for all heads).
        gate = scores  # placeholder of the right shape when there is no gate (never read then)
        if HAS_GATE:
            gate = tl.load(gate_ptr + offs_h[None, :] * gate_stride + offs_e[:, None], mask=mask, other=0.0)
            scores = scores * gate
        if HAS_BIAS:
            scores += tl.load(bias_ptr + offs_h[None, :] * bias_stride + offs_e[:, None], mask=mask, other=0.0)
        return tl.where(mask, scores, float("-inf")), gate

    @triton.jit
    def _forward_kernel(
        q_ptr, k_ptr, v_ptr, out_ptr, lse_ptr,
        rowptr_ptr, col_ptr, gate_ptr, bias_ptr, keep_ptr,
        num_dst, num_edges, heads, dim, value_dim, gate_stride, bias_stride,
        HAS_GATE: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_KEEP: tl.constexpr,
        BLOCK_E: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
        DTYPE: tl.constexpr,
    ):
        row = tl.program_id(0).to(tl.int64)
        # int64: offsets such as h * E + e overflow int32 on large patterns.
        offs_h = (tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)).to(tl.int64)
        offs_d = tl.arange(0, BLOCK_D)
        offs_dv = tl.arange(0, BLOCK_DV)
        mask_h = offs_h < heads
        mask_hd = mask_h[:, None] & (offs_d < dim)[None, :]
        mask_hdv = mask_h[:, None] & (offs_dv < value_dim)[None, :]
        # Tensors are contiguous [N, H, D]: element (n, h, d) is at (n * H + h) * D + d.
        q = tl.load(q_ptr + (row * heads + offs_h[:, None]) * dim + offs_d[None, :], mask=mask_hd, other=0.0)

        start = tl.load(rowptr_ptr + row).to(tl.int64)
        end = tl.load(rowptr_ptr + row + 1).to(tl.int64)
        running_max = tl.full([BLOCK_H], float("-inf"), DTYPE)
        row_sum = tl.zeros([BLOCK_H], DTYPE)
        acc = tl.zeros([BLOCK_H, BLOCK_DV], DTYPE)
        for e0 in range(start, end, BLOCK_E):
            offs_e = e0 + tl.arange(0, BLOCK_E)
            mask_e = offs_e < end
            cols = tl.load(col_ptr + offs_e, mask=mask_e, other=0).to(tl.int64)
            node_h = cols[:, None] * heads + offs_h[None, :]  # [BE, BH]
            k = tl.load(k_ptr + node_h[:, :, None] * dim + offs_d[None, None, :],
                        mask=mask_e[:, None, None] & mask_hd[None, :, :], other=0.0)
            mask_eh = mask_e[:, None] & mask_h[None, :]
            logits, _ = _logits(tl.sum(k * q[None, :, :], axis=2), offs_e, offs_h, mask_eh,
                                gate_ptr, gate_stride, bias_ptr, bias_stride, HAS_GATE, HAS_BIAS)
            new_max = tl.maximum(running_max, tl.max(logits, axis=0))
            # A row whose logits so far are all -inf shifts by 0, so exp gives exact zeros, not NaN.
            shift = tl.where(new_max == float("-inf"), 0.0, new_max)
            rescale = tl.exp(running_max - shift)
            probs = tl.exp(logits - shift[None, :])
            row_sum = row_sum * rescale + tl.sum(probs, axis=0)
            if HAS_KEEP:
                probs *= tl.load(keep_ptr + offs_h[None, :] * num_edges + offs_e[:, None], mask=mask_eh, other=0.0)
            v = tl.load(v_ptr + node_h[:, :, None] * value_dim + offs_dv[None, None, :],
                        mask=mask_e[:, None, None] & mask_hdv[None, :, :], other=0.0)
            acc = acc * rescale[:, None] + tl.sum(probs[:, :, None] * v, axis=0)
            running_max = new_max

        has_mass = row_sum > 0
        safe_sum = tl.where(has_mass, row_sum, 1.0)
        shift = tl.where(running_max == float("-inf"), 0.0, running_max)
        lse = tl.where(has_mass, shift + tl.log(safe_sum), float("inf"))
        tl.store(lse_ptr + offs_h * num_dst + row, lse, mask=mask_h)
        tl.store(out_ptr + (row * heads + offs_h[:, None]) * value_dim + offs_dv[None, :],
                 acc / safe_sum[:, None], mask=mask_hdv)

    @triton.jit
    def _backward_rows_kernel(
        q_ptr, k_ptr, v_ptr, grad_out_ptr, delta_ptr, lse_ptr, dq_ptr, dlogits_ptr,
        rowptr_ptr, col_ptr, gate_ptr, bias_ptr, keep_ptr,
        num_dst, num_edges, heads, dim, value_dim, gate_stride, bias_stride,
        HAS_GATE: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_KEEP: tl.constexpr, NEED_DLOGITS: tl.constexpr,
        BLOCK_E: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
        DTYPE: tl.constexpr,
    ):
        row = tl.program_id(0).to(tl.int64)
        offs_h = (tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)).to(tl.int64)
        offs_d = tl.arange(0, BLOCK_D)
        offs_dv = tl.arange(0, BLOCK_DV)
        mask_h = offs_h < heads
        mask_hd = mask_h[:, None] & (offs_d < dim)[None, :]
        mask_hdv = mask_h[:, None] & (offs_dv < value_dim)[None, :]
        q = tl.load(q_ptr + (row * heads + offs_h[:, None]) * dim + offs_d[None, :], mask=mask_hd, other=0.0)
        grad_out = tl.load(grad_out_ptr + (row * heads + offs_h[:, None]) * value_dim + offs_dv[None, :],
                           mask=mask_hdv, other=0.0)
        delta = tl.load(delta_ptr + row * heads + offs_h, mask=mask_h, other=0.0)
        lse = tl.load(lse_ptr + offs_h * num_dst + row, mask=mask_h, other=float("inf"))

        start = tl.load(rowptr_ptr + row).to(tl.int64)
        end = tl.load(rowptr_ptr + row + 1).to(tl.int64)
        dq = tl.zeros([BLOCK_H, BLOCK_D], DTYPE)
        for e0 in range(start, end, BLOCK_E):
            offs_e = e0 + tl.arange(0, BLOCK_E)
            mask_e = offs_e < end
            mask_eh = mask_e[:, None] & mask_h[None, :]
            cols = tl.load(col_ptr + offs_e, mask=mask_e, other=0).to(tl.int64)
            node_h = cols[:, None] * heads + offs_h[None, :]
            k = tl.load(k_ptr + node_h[:, :, None] * dim + offs_d[None, None, :],
                        mask=mask_e[:, None, None] & mask_hd[None, :, :], other=0.0)
            logits, gate = _logits(tl.sum(k * q[None, :, :], axis=2), offs_e, offs_h, mask_eh,
                                   gate_ptr, gate_stride, bias_ptr, bias_stride, HAS_GATE, HAS_BIAS)
            # lse is +inf for a target without mass, so these probabilities are exact zeros there.
            probs = tl.exp(logits - lse[None, :])
            v = tl.load(v_ptr + node_h[:, :, None] * value_dim + offs_dv[None, None, :],
                        mask=mask_e[:, None, None] & mask_hdv[None, :, :], other=0.0)
            grad_probs = tl.sum(v * grad_out[None, :, :], axis=2)
            if HAS_KEEP:
                grad_probs *= tl.load(keep_ptr + offs_h[None, :] * num_edges + offs_e[:, None], mask=mask_eh, other=0.0)
            grad_logits = probs * (grad_probs - delta[None, :])
            if NEED_DLOGITS:
                tl.store(dlogits_ptr + offs_h[None, :] * num_edges + offs_e[:, None], grad_logits, mask=mask_eh)
            if HAS_GATE:
                grad_logits = grad_logits * gate
            dq += tl.sum(grad_logits[:, :, None] * k, axis=0)
        tl.store(dq_ptr + (row * heads + offs_h[:, None]) * dim + offs_d[None, :], dq, mask=mask_hd)

    @triton.jit
    def _backward_sources_kernel(
        q_ptr, k_ptr, v_ptr, grad_out_ptr, delta_ptr, lse_ptr, dk_ptr, dv_ptr,
        colptr_ptr, row_t_ptr, perm_t_ptr, gate_ptr, bias_ptr, keep_ptr,
        num_dst, num_edges, heads, dim, value_dim, gate_stride, bias_stride,
        HAS_GATE: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_KEEP: tl.constexpr,
        BLOCK_E: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
        DTYPE: tl.constexpr,
    ):
        src = tl.program_id(0).to(tl.int64)
        offs_h = (tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)).to(tl.int64)
        offs_d = tl.arange(0, BLOCK_D)
        offs_dv = tl.arange(0, BLOCK_DV)
        mask_h = offs_h < heads
        mask_hd = mask_h[:, None] & (offs_d < dim)[None, :]
        mask_hdv = mask_h[:, None] & (offs_dv < value_dim)[None, :]
        k = tl.load(k_ptr + (src * heads + offs_h[:, None]) * dim + offs_d[None, :], mask=mask_hd, other=0.0)
        v = tl.load(v_ptr + (src * heads + offs_h[:, None]) * value_dim + offs_dv[None, :], mask=mask_hdv, other=0.0)

        start = tl.load(colptr_ptr + src).to(tl.int64)
        end = tl.load(colptr_ptr + src + 1).to(tl.int64)
        dk = tl.zeros([BLOCK_H, BLOCK_D], DTYPE)
        dv = tl.zeros([BLOCK_H, BLOCK_DV], DTYPE)
        for t0 in range(start, end, BLOCK_E):
            offs_t = t0 + tl.arange(0, BLOCK_E)
            mask_e = offs_t < end
            mask_eh = mask_e[:, None] & mask_h[None, :]
            rows = tl.load(row_t_ptr + offs_t, mask=mask_e, other=0).to(tl.int64)
            # Sorted-edge position of each edge: where its bias, gate and keep live.
            offs_e = tl.load(perm_t_ptr + offs_t, mask=mask_e, other=0).to(tl.int64)
            node_h = rows[:, None] * heads + offs_h[None, :]
            q = tl.load(q_ptr + node_h[:, :, None] * dim + offs_d[None, None, :],
                        mask=mask_e[:, None, None] & mask_hd[None, :, :], other=0.0)
            logits, gate = _logits(tl.sum(q * k[None, :, :], axis=2), offs_e, offs_h, mask_eh,
                                   gate_ptr, gate_stride, bias_ptr, bias_stride, HAS_GATE, HAS_BIAS)
            lse = tl.load(lse_ptr + offs_h[None, :] * num_dst + rows[:, None], mask=mask_eh, other=float("inf"))
            probs = tl.exp(logits - lse)
            grad_out = tl.load(grad_out_ptr + node_h[:, :, None] * value_dim + offs_dv[None, None, :],
                               mask=mask_e[:, None, None] & mask_hdv[None, :, :], other=0.0)
            grad_probs = tl.sum(grad_out * v[None, :, :], axis=2)
            kept = probs
            if HAS_KEEP:
                keep = tl.load(keep_ptr + offs_h[None, :] * num_edges + offs_e[:, None], mask=mask_eh, other=0.0)
                kept = probs * keep
                grad_probs *= keep
            dv += tl.sum(kept[:, :, None] * grad_out, axis=0)
            delta = tl.load(delta_ptr + node_h, mask=mask_eh, other=0.0)
            grad_scores = probs * (grad_probs - delta)
            if HAS_GATE:
                grad_scores = grad_scores * gate
            dk += tl.sum(grad_scores[:, :, None] * q, axis=0)
        tl.store(dk_ptr + (src * heads + offs_h[:, None]) * dim + offs_d[None, :], dk, mask=mask_hd)
        tl.store(dv_ptr + (src * heads + offs_h[:, None]) * value_dim + offs_dv[None, :], dv, mask=mask_hdv)


def _require_triton(q: Tensor) -> None:
    if triton is None:
        raise RuntimeError("backend='triton' needs the optional `triton` package: pip install graph-sparse-attn[gpu]")
    if not runs_on(q.device):
        raise ValueError(
            f"backend='triton' runs on CUDA tensors, got {q.device} "
            "(set TRITON_INTERPRET=1 before importing triton to run its interpreter on CPU)"
        )
    if q.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"backend='triton' computes in float32 or float64, got {q.dtype}")


def _next_pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


def _blocks(num_edges: int, num_nodes: int, heads: int, dim: int, value_dim: int) -> dict:
    """Tile sizes: all heads of a node in one program when they fit, chunks sized to the mean degree."""
    block_d, block_dv = _next_pow2(dim), _next_pow2(value_dim)
    block_h = min(_next_pow2(heads), max(1, _TILE_ELEMENTS // (16 * max(block_d, block_dv))))
    mean_degree = -(-num_edges // max(num_nodes, 1))
    block_e = min(max(_next_pow2(mean_degree), 16), 32)
    block_e = max(1, min(block_e, _TILE_ELEMENTS // (block_h * max(block_d, block_dv))))
    num_warps = 4 if block_e * block_h * max(block_d, block_dv) >= 2048 else 2
    return dict(BLOCK_E=block_e, BLOCK_H=block_h, BLOCK_D=block_d, BLOCK_DV=block_dv, num_warps=num_warps)


def _edge_args(q: Tensor, bias: Optional[Tensor], gate: Optional[Tensor], keep: Optional[Tensor]) -> dict:
    """Kernel pointers, head strides and flags for the optional per-edge tensors."""
    def stride(t: Optional[Tensor]) -> int:
        return 0 if t is None or t.size(0) == 1 else t.stride(0)

    return dict(
        gate_ptr=q if gate is None else gate, bias_ptr=q if bias is None else bias, keep_ptr=q if keep is None else keep,
        gate_stride=stride(gate), bias_stride=stride(bias),
        HAS_GATE=gate is not None, HAS_BIAS=bias is not None, HAS_KEEP=keep is not None,
        DTYPE=tl.float64 if q.dtype == torch.float64 else tl.float32,
    )


def _contiguous(*tensors: Optional[Tensor]) -> Tuple[Optional[Tensor], ...]:
    return tuple(None if t is None else t.contiguous() for t in tensors)


def forward(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    pattern: CSRPattern,
    bias: Optional[Tensor],
    gate: Optional[Tensor],
    keep: Optional[Tensor],
) -> Tuple[Tensor, Tensor]:
    """``out_i = Σ_e softmax_e(logit) keep_e v_col[e]`` and ``lse [H, N_dst]`` of the logits.

    Args:
        q: ``[N_dst, H, D]`` (already scaled); k: ``[N_src, H, D]``; v: ``[N_src, H, Dv]``.
        pattern: the sorted :class:`CSRPattern`.
        bias, gate: ``[1|H, E]`` or None, ``logit_e = (q_i · k_j) * gate_e + bias_e``.
        keep: ``[H, E]`` inverted-dropout multipliers or None.

    Returns:
        ``(out [N_dst, H, Dv], lse [H, N_dst])``; a target without edges gets ``out = 0`` and
        ``lse = +inf``.
    """
    _require_triton(q)
    q, k, v, bias, gate, keep = _contiguous(q, k, v, bias, gate, keep)
    num_dst, heads, dim = q.shape
    value_dim = v.size(-1)
    out = q.new_zeros(num_dst, heads, value_dim)
    lse = q.new_full((heads, num_dst), float("inf"))
    if num_dst == 0 or heads == 0:
        return out, lse
    blocks = _blocks(pattern.num_edges, num_dst, heads, dim, value_dim)
    grid = (num_dst, triton.cdiv(heads, blocks["BLOCK_H"]))
    _forward_kernel[grid](
        q, k, v, out, lse, pattern.rowptr, pattern.col,
        num_dst=num_dst, num_edges=pattern.num_edges, heads=heads, dim=dim, value_dim=value_dim,
        **_edge_args(q, bias, gate, keep), **blocks,
    )
    return out, lse


def backward(
    grad_out: Tensor,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    out: Tensor,
    lse: Tensor,
    pattern: CSRPattern,
    bias: Optional[Tensor],
    gate: Optional[Tensor],
    keep: Optional[Tensor],
    need_dlogits: bool,
) -> Tuple[Tensor, Tensor, Tensor, Optional[Tensor]]:
    """Gradients of :func:`forward` from the saved ``out`` and ``lse`` (probabilities recomputed).

    Returns ``(dq [N_dst, H, D], dk [N_src, H, D], dv [N_src, H, Dv], dlogits [H, E] or None)``;
    ``dq``/``dk`` include the chain through the gate, ``dlogits`` is w.r.t. ``logit_e``.
    """
    _require_triton(q)
    grad_out, q, k, v, lse, bias, gate, keep = _contiguous(grad_out, q, k, v, lse, bias, gate, keep)
    num_dst, heads, dim = q.shape
    num_src, value_dim = k.size(0), v.size(-1)
    num_edges = pattern.num_edges
    dq, dk, dv = torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)
    dlogits = q.new_zeros(heads, num_edges) if need_dlogits else None
    if heads == 0:
        return dq, dk, dv, dlogits
    # δ_i = dO_i · O_i = rowsum(P ⊙ dP) (FlashAttention identity; holds with dropout for the dropped-out O).
    delta = (grad_out * out).sum(-1).contiguous()  # [N_dst, H]
    edge_args = _edge_args(q, bias, gate, keep)
    common = dict(num_dst=num_dst, num_edges=num_edges, heads=heads, dim=dim, value_dim=value_dim)
    if num_dst > 0:
        blocks = _blocks(num_edges, num_dst, heads, dim, value_dim)
        _backward_rows_kernel[(num_dst, triton.cdiv(heads, blocks["BLOCK_H"]))](
            q, k, v, grad_out, delta, lse, dq, q if dlogits is None else dlogits,
            pattern.rowptr, pattern.col, NEED_DLOGITS=need_dlogits, **common, **edge_args, **blocks,
        )
    if num_src > 0:
        blocks = _blocks(num_edges, num_src, heads, dim, value_dim)
        _backward_sources_kernel[(num_src, triton.cdiv(heads, blocks["BLOCK_H"]))](
            q, k, v, grad_out, delta, lse, dk, dv,
            pattern.colptr, pattern.row_t, pattern.perm_t, **common, **edge_args, **blocks,
        )
    return dq, dk, dv, dlogits
