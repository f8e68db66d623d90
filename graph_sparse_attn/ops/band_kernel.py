"""The ``band`` backend: windows as dense masked attention over query blocks.

Sliding windows (one sequence or a batch of them, causal, dilated, with Longformer's global
tokens) put most edges near the diagonal. There, per-edge kernels pay a gather per edge, while
dense attention over a block of ``B`` queries and the ``B + 2w`` keys around it runs as matrix
products. This backend splits a pattern three ways:

* **the band**, edges with ``|i - j| <= w``: each block of queries attends to a strided view of the
  keys ``[cB - w, cB + B + w)``, with the slots that are not edges masked;
* **a few far sources per block** (a global token's column): appended to the block's keys as
  extra slots, again masked per query;
* **heavy rows**, queries with many far edges (a global token's own row): attended alone by the
  ``csr`` kernels over all their edges, and written over the block result.

The blocks go to PyTorch's fused ``scaled_dot_product_attention`` (FlashAttention-style on CPU:
forward and backward keep only ``[N, H]`` softmax statistics). It computes ``N (B + 2w + G)``
scores per head instead of ``E``, so it pays only where the band is well filled: `band_layout`
says whether it is. Repeated pairs outside heavy rows are refused (a mask slot holds one edge);
per-edge bias, gates, dropout and returned weights are not supported.
"""
from __future__ import annotations

from typing import NamedTuple, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from .fused import fused_attention
from .pattern import CSRPattern

# Queries per block: 128 took 0.30 s forward+backward on a ±64 window at N = 65,536 (4 heads × 16,
# 2-core CPU) against 0.43 s at 64 and 0.35 s at 256; narrower bands take smaller blocks so that
# the masked share of each block's keys stays bounded.
MAX_BLOCK = 128
MIN_BLOCK = 32
# The widest band taken (2w + 1 key slots per query); wider bands are not windows.
MAX_BAND = 1025
# An offset j - i belongs to the band when at least this share of the queries has an edge at it.
DENSE_OFFSET_SHARE = 0.25
# Edges sampled to find the dense offsets (all of them below this many).
OFFSET_SAMPLE = 1 << 18
# A query with more far edges (|i - j| > w) than this is a heavy row; a block takes at most
# MAX_EXTRA far sources of its light rows as extra key slots.
MAX_FAR_PER_ROW = 4
MAX_EXTRA = 16
# The share of the layout's N (B + 2w + G) slots that must be edges ("auto"), and the most of E
# that heavy rows may hold.
MIN_FILL = 0.4
MAX_HEAVY_SHARE = 0.25
# Queries per kernel call: the layout keeps a mask per chunk of blocks (none of its own where every
# block of the chunk has the pattern's common mask, as inside a plain window), and backward's
# gradient blocks exist for one chunk at a time.
CHUNK_QUERIES = 1 << 13


class BandLayout(NamedTuple):
    """What `attention` needs for ``num_blocks`` blocks of ``block`` queries with half-width ``w``.

    ``masks`` holds one additive mask (0 on edges, -inf off them) per chunk of ``chunk`` blocks:
    ``[nc, 1, B, B + 2w + G]``, or ``[1, 1, B, B + 2w + G]`` shared by every block of the chunk.
    ``extra [nb, G]`` are the far sources appended to each block's keys (``None`` when ``G = 0``);
    ``heavy_rows [R]`` are the heavy rows and ``heavy`` their edges as a pattern from the ``N``
    sources to those ``R`` targets (``None`` when ``R = 0``).
    """

    masks: Tuple[Tensor, ...]
    block: int
    num_blocks: int
    chunk: int
    half_width: int
    extra: Optional[Tensor]
    heavy_rows: Tensor
    heavy: Optional[CSRPattern]


def block_size(half_width: int) -> int:
    """Queries per block for a band of half-width ``w``."""
    return min(MAX_BLOCK, max(MIN_BLOCK, 2 * half_width))


def _dense_half_width(offset: Tensor, num_nodes: int) -> Tuple[int, float]:
    """``(w, in_band)``: the largest ``|j - i|`` among the offsets ``t`` that at least ``DENSE_OFFSET_SHARE``
    of the queries that can have an edge at ``t`` have one at (0 when none is), and the estimated
    number of edges with ``|j - i| <= w``; both from a fixed random sample of the edges.

    ``N - |t|`` queries can have offset ``t``, counted as at least ``N / 2`` so that a few edges at
    offsets near ``±N`` never make a band: a window as wide as its sequence is still a band.
    """
    limit = (MAX_BAND - 1) // 2
    sample = offset
    if offset.numel() > OFFSET_SAMPLE:
        picks = torch.randint(offset.numel(), (OFFSET_SAMPLE,), generator=torch.Generator().manual_seed(0))
        sample = offset[picks.to(offset.device)]
    counts = torch.bincount(sample.clamp(-limit - 1, limit + 1) + limit + 1, minlength=2 * limit + 3)[1:-1]
    counts = counts * (offset.numel() / sample.numel())
    offsets = torch.arange(-limit, limit + 1, device=offset.device)
    possible = (num_nodes - offsets.abs()).clamp_min(num_nodes / 2)
    dense = offsets[counts >= DENSE_OFFSET_SHARE * possible]
    half_width = int(dense.abs().max()) if dense.numel() else 0
    return half_width, float(counts[limit - half_width: limit + half_width + 1].sum())


def is_band(edge_index: Tensor, num_nodes: int) -> bool:
    """Whether ``"auto"`` would run the square pattern ``edge_index [2, E]`` on ``band`` (given no
    per-edge bias, gate, values, dropout or returned weights): `band_layout` accepts it."""
    return band_layout(edge_index[0], edge_index[1], num_nodes) is not None


def band_layout(src: Tensor, dst: Tensor, num_nodes: int, min_fill: float = MIN_FILL) -> Optional[BandLayout]:
    """The layout of edges ``src[e] → dst[e]`` (int64 or int32) among ``num_nodes`` nodes, or ``None`` when the
    pattern is not a window: its dense offsets span more than ``MAX_BAND`` slots, a block would need
    more than ``MAX_EXTRA`` far sources, heavy rows hold more than ``MAX_HEAVY_SHARE`` of the edges,
    a pair repeats outside heavy rows, or edges fill less than ``min_fill`` of the layout's slots.

    Row ``r`` of block ``c`` is query ``i = cB + r``; its key slot ``s < B + 2w`` is source
    ``j = cB - w + s`` and slot ``B + 2w + g`` is source ``extra[c, g]``.
    """
    num_edges = src.numel()
    if num_edges == 0 or num_nodes == 0:
        return None
    offset = src - dst
    half_width, in_band = _dense_half_width(offset, num_nodes)
    band, block = 2 * half_width + 1, block_size(half_width)
    num_blocks = -(-num_nodes // block)
    width = block + 2 * half_width
    # Leave early (after the sample alone) when the band clearly holds too few edges, e.g. on random graphs.
    if in_band < 0.5 * min_fill * num_nodes * width:
        return None

    # Passes over all E edges are the cost here: far edges (usually few) are picked out once, and the
    # offset is shifted in place to t = j - i + w (no copy of E int64s), a band edge's slot in its row.
    shifted = offset.add_(half_width)
    far = (shifted < 0).logical_or_(shifted > 2 * half_width)
    far_idx = far.nonzero().flatten()
    far_src, far_dst = src[far_idx].long(), dst[far_idx].long()
    heavy_row = torch.bincount(far_dst, minlength=num_nodes) > MAX_FAR_PER_ROW
    heavy_edge = heavy_row[dst] if bool(heavy_row.any()) else None
    num_heavy = 0 if heavy_edge is None else int(heavy_edge.sum())
    if num_heavy > MAX_HEAVY_SHARE * num_edges:
        return None
    if heavy_edge is not None:
        light = ~heavy_edge[far_idx]
        far_src, far_dst = far_src[light], far_dst[light]

    # Far sources of each block's light rows, as (block, source) pairs: their rank within the block is the slot.
    pairs, slot_of_edge = torch.unique((far_dst // block) * num_nodes + far_src, return_inverse=True)
    pair_block = pairs // num_nodes
    per_block = torch.bincount(pair_block, minlength=num_blocks)
    num_extra = int(per_block.max()) if pairs.numel() else 0
    slots = width + num_extra
    if num_extra > MAX_EXTRA or (num_edges - num_heavy) < min_fill * num_nodes * slots:
        return None
    # One flag per (query, offset) of the band, at dst (2w + 1) + offset + w, and one far pair per (query,
    # source): a repeated pair would collide. Edges that are not light band edges go to a spare last flag.
    excluded = far if heavy_edge is None else far | heavy_edge
    num_band = num_edges - (far_idx.numel() if heavy_edge is None else int(torch.count_nonzero(excluded)))
    spare = num_blocks * block * band
    # Keys up to `spare` in the indices' own dtype (int32 from a `CSRPattern` halves these passes) where they fit.
    band_key = (shifted if spare < torch.iinfo(shifted.dtype).max else shifted.long()).add_(dst, alpha=band)
    if num_band < num_edges:
        band_key.masked_fill_(excluded, spare)
    flags = torch.zeros(spare + 1, dtype=torch.bool, device=src.device).index_put_((band_key,), torch.ones((), dtype=torch.bool))[:spare]
    if int(torch.count_nonzero(flags)) != num_band or \
            torch.unique(far_dst * num_nodes + far_src).numel() != far_src.numel():
        return None

    extra = extra_flags = None
    if num_extra:
        rank = torch.arange(pairs.numel(), device=src.device) - (torch.cumsum(per_block, 0) - per_block)[pair_block]
        extra = torch.zeros(num_blocks, num_extra, dtype=torch.long, device=src.device)
        extra[pair_block, rank] = pairs % num_nodes
        extra_flags = torch.zeros(num_blocks * block, num_extra, dtype=torch.bool, device=src.device)
        extra_flags[far_dst, rank[slot_of_edge]] = True
    chunk = max(1, CHUNK_QUERIES // block)
    masks = _chunk_masks(flags.view(num_blocks, block, band), extra_flags, slots, chunk)

    heavy_rows = heavy_row.nonzero().flatten()
    heavy = None
    if heavy_edge is not None:
        local = torch.full((num_nodes,), -1, dtype=torch.long, device=src.device)
        local[heavy_rows] = torch.arange(heavy_rows.numel(), device=src.device)
        heavy_edges = torch.stack([src[heavy_edge].long(), local[dst[heavy_edge]]])
        heavy = CSRPattern._from_valid_edge_index(heavy_edges, num_nodes, heavy_rows.numel())
    return BandLayout(masks, block, num_blocks, chunk, half_width, extra, heavy_rows, heavy)


def _chunk_masks(flags: Tensor, extra_flags: Optional[Tensor], slots: int, chunk: int) -> Tuple[Tensor, ...]:
    """Masks ``[nc, 1, B, S]`` per chunk of ``chunk`` blocks from the band's edge flags ``[nb, B, 2w + 1]``
    (row ``r``, offset ``t``) and the extra slots' ``[nb B, G]``; a chunk whose blocks all have the
    middle block's flags shares that block's mask, ``[1, 1, B, S]``."""
    num_blocks, block, band = flags.shape
    width = block + band - 1
    extra_flags = flags.new_zeros(num_blocks * block, 0) if extra_flags is None else extra_flags
    extra_flags = extra_flags.view(num_blocks, block, -1)

    def build(first: int, last: int) -> Tensor:
        mask = torch.full((last - first, block, slots), float("-inf"), device=flags.device)
        # Band slot s of row r holds offset t = s - r: row r's 2w + 1 offsets start at slot r.
        mask.as_strided((last - first, block, band), (block * slots, slots + 1, 1)).masked_fill_(flags[first:last], 0.0)
        mask[:, :, width:].masked_fill_(extra_flags[first:last], 0.0)
        return mask.unsqueeze(1)

    middle = num_blocks // 2
    common = build(middle, middle + 1)
    masks = []
    for first in range(0, num_blocks, chunk):
        last = min(first + chunk, num_blocks)
        # Flags are 1 byte a slot against the float mask's 4: compare those, build only masks that differ.
        same = bool((flags[first:last] == flags[middle]).all()) and bool((extra_flags[first:last] == extra_flags[middle]).all())
        masks.append(common if same else build(first, last))
    return tuple(masks)


def _padded(q: Tensor, k: Tensor, v: Tensor, layout: BandLayout) -> Tuple[Tensor, Tensor, Tensor]:
    """``q`` padded to ``nb B`` rows; ``k`` and ``v`` padded by ``w`` rows before and enough after that
    block ``c``'s keys are rows ``[cB, cB + B + 2w)``."""
    w, padded = layout.half_width, layout.num_blocks * layout.block
    k_pad, v_pad = (F.pad(t, (0, 0, 0, 0, w, padded - q.size(0) + w)) for t in (k, v))
    return F.pad(q, (0, 0, 0, 0, 0, padded - q.size(0))), k_pad, v_pad


def _chunk_blocks(padded: Tuple[Tensor, Tensor, Tensor], k: Tensor, v: Tensor, layout: BandLayout,
                  first: int, last: int) -> Tuple[Tensor, Tensor, Tensor]:
    """Blocks ``first`` to ``last`` (one chunk, ``nc`` blocks): queries ``[nc, H, B, D]`` and keys
    and values ``[nc, H, B + 2w + G, D]``, strided views of the band around each block, then its far sources."""
    q_pad, k_pad, v_pad = padded
    block, w = layout.block, layout.half_width
    keys = slice(first * block, last * block + 2 * w)
    k_blocks, v_blocks = (t[keys].unfold(0, block + 2 * w, block).permute(0, 1, 3, 2) for t in (k_pad, v_pad))
    if layout.extra is not None:
        extra = layout.extra[first:last]
        k_blocks, v_blocks = (torch.cat([blocks, t[extra].transpose(1, 2)], dim=2) for blocks, t in ((k_blocks, k), (v_blocks, v)))
    q_blocks = q_pad[first * block: last * block].view(last - first, block, q_pad.size(1), -1).transpose(1, 2)
    return q_blocks, k_blocks, v_blocks


def _chunks(layout: BandLayout):
    """``(first block, last block + 1, mask)`` of each chunk."""
    for first, mask in zip(range(0, layout.num_blocks, layout.chunk), layout.masks):
        yield first, min(first + layout.chunk, layout.num_blocks), mask


def _add_key_grad(total: Tensor, grad: Tensor, layout: BandLayout, first: int) -> None:
    """Add one chunk's key (or value) gradient ``[nc, H, B + 2w + G, D]`` into ``total``, the gradient
    of the padded keys ``[nb B + 2w, H, D]``; the far slots go to ``total[w + extra]``."""
    block, w = layout.block, layout.half_width
    width, rows = block + 2 * w, grad.size(0) * block + 2 * w
    # Overlapping windows add up where they overlap (what autograd does for `unfold`).
    total[first * block: first * block + rows] += torch.ops.aten.unfold_backward(
        grad[:, :, :width].permute(0, 1, 3, 2), [rows, grad.size(1), grad.size(3)], 0, width, block)
    if layout.extra is not None:
        extra = layout.extra[first: first + grad.size(0)].flatten() + w
        total.index_add_(0, extra, grad[:, :, width:].transpose(1, 2).reshape(-1, grad.size(1), grad.size(3)))


class _BandAttention(torch.autograd.Function):
    """Fused blocked attention on CPU, one chunk of blocks per call of PyTorch's flash kernels. It keeps
    only ``q``, ``k``, ``v``, the output and its ``[nb, H, B]`` log-sum-exp for backward and rebuilds
    each chunk's blocks there: autograd through the blocks would keep the key and value blocks with
    far sources (copies) and every chunk's gradient blocks at once."""

    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, v: Tensor, layout: BandLayout, scale: float) -> Tensor:
        padded = _padded(q, k, v, layout)
        outs, lses = [], []
        for first, last, mask in _chunks(layout):
            out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
                *_chunk_blocks(padded, k, v, layout, first, last), 0.0, False, attn_mask=mask.to(q.dtype), scale=scale)
            outs.append(out)
            lses.append(lse)
        out, lse = torch.cat(outs), torch.cat(lses)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.layout, ctx.scale = layout, scale
        return out

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        q, k, v, out, lse = ctx.saved_tensors
        layout = ctx.layout
        padded = _padded(q, k, v, layout)
        grad_q = torch.empty_like(padded[0])
        grad_k, grad_v = torch.zeros_like(padded[1]), torch.zeros_like(padded[2])
        block, w = layout.block, layout.half_width
        for first, last, mask in _chunks(layout):
            chunk_q, chunk_k, chunk_v = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward(
                grad_out[first:last].contiguous(), *_chunk_blocks(padded, k, v, layout, first, last), out[first:last],
                lse[first:last], 0.0, False, attn_mask=mask.to(q.dtype), scale=ctx.scale)
            grad_q[first * block: last * block] = chunk_q.transpose(1, 2).reshape(-1, q.size(1), q.size(2))
            _add_key_grad(grad_k, chunk_k, layout, first)
            _add_key_grad(grad_v, chunk_v, layout, first)
        num_nodes = q.size(0)
        return grad_q[:num_nodes], grad_k[w: w + num_nodes], grad_v[w: w + num_nodes], None, None


def _blocked_sdpa(q: Tensor, k: Tensor, v: Tensor, layout: BandLayout, scale: float) -> Tensor:
    """The same blocks through ``F.scaled_dot_product_attention`` and autograd: PyTorch's fused kernels
    for devices other than the CPU. Returns ``[nb, H, B, Dv]``."""
    padded = _padded(q, k, v, layout)
    return torch.cat([F.scaled_dot_product_attention(*_chunk_blocks(padded, k, v, layout, first, last), attn_mask=mask.to(q.dtype),
                                                     scale=scale) for first, last, mask in _chunks(layout)])


def attention(q: Tensor, k: Tensor, v: Tensor, layout: BandLayout, scale: float) -> Tensor:
    """``softmax_j(s q_i · k_j) v_j`` over the edges of ``layout`` (from `band_layout`).

    Args:
        q ``[N, H, D]``, k ``[N, H, D]``, v ``[N, H, Dv]``; scale ``s``.

    Returns:
        ``[N, H, Dv]``, differentiable in ``q``, ``k`` and ``v``; zeros for a query without edges.
    """
    num_nodes, heads, _ = q.shape
    blocked = _BandAttention.apply if q.device.type == "cpu" else _blocked_sdpa
    value_dim, width = v.size(-1), max(q.size(-1), v.size(-1))
    # PyTorch's fused kernel takes one head size: zero columns change neither q·k nor the output's own columns.
    out = blocked(*(F.pad(t, (0, width - t.size(-1))) for t in (q, k, v)), layout, scale)
    out = out.transpose(1, 2).reshape(-1, heads, width)[:num_nodes, :, :value_dim]
    if layout.heavy is not None:
        # Heavy rows have no slot in the blocks (their outputs there are zeros): attend them alone, on
        # the csr kernels, which keep O(E_h H) for backward (a global row's edges span its sequence).
        heavy, _ = fused_attention("csr", q[layout.heavy_rows] * scale, k, v, layout.heavy, None, None, 0.0, None)
        out = out.index_copy(0, layout.heavy_rows, heavy)
    return out
