r"""Positional attention patterns over sequences: sliding windows, Sparse Transformer, LogSparse,
blocks, global tokens, random links, Longformer and BigBird.

Every builder returns an int64 ``edge_index [2, E]`` (row 0: source/key ``j``, row 1:
target/query ``i``) sorted by (target, source) without duplicate pairs. With a PyG ``batch``
vector ``[N]`` (sorted) the nodes form consecutive sequences: edges never cross two of them and
the position of node ``i`` restarts at each one, :math:`p_i = i - \mathrm{start}(i)`; every
definition below is in these positions, with :math:`L` the length of the sequence.
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from ._utils import (
    Device,
    Segments,
    check_flag,
    check_generator,
    check_size,
    grid_union,
    resolve_device,
    rows_to_edge_index,
    runs_to_edge_index,
    segments,
)

Indices = Union[int, Sequence[int], Tensor]


def sliding_window(
    num_nodes: int,
    window: int,
    *,
    dilation: int = 1,
    causal: bool = False,
    batch: Optional[Tensor] = None,
    device: Device = None,
) -> Tensor:
    r"""Local (optionally dilated) window: :math:`j \to i` iff

    .. math::
        |p_i - p_j| \le w \cdot d \quad\text{and}\quad d \mid (p_i - p_j),

    self included (``window=0`` gives self loops only); ``causal=True`` keeps :math:`p_j \le p_i`.

    Args:
        num_nodes: number of positions ``N``.
        window: ``w >= 0``, neighbours on each side.
        dilation: ``d >= 1``, spacing between attended positions.
        causal: attend to the past only.
        batch: ``[N]`` sorted sequence id of each node, or ``None`` for one sequence.
        device: where to build the pattern when ``batch`` is ``None``.

    Returns:
        ``[2, E]`` with ``E <= N (2w + 1)``.
    """
    num_nodes = check_size(num_nodes, "num_nodes")
    window = check_size(window, "window")
    dilation = check_size(dilation, "dilation", minimum=1)
    causal = check_flag(causal, "causal")
    seg = segments(num_nodes, batch, resolve_device(batch, device))
    first, count = _window_grid(seg, window, dilation, causal)
    return grid_union(first, count, dilation, None, num_nodes)


def strided(
    num_nodes: int, stride: int, *, causal: bool = True, batch: Optional[Tensor] = None, device: Device = None
) -> Tensor:
    r"""Strided pattern of the Sparse Transformer (Child et al., 2019), both heads combined:
    :math:`j \to i` iff

    .. math::
        (p_i - p_j) \bmod s = 0 \quad\text{or}\quad |p_i - p_j| < s,

    and, when ``causal``, :math:`p_j \le p_i` (the paper's autoregressive form). Each node
    attends to about :math:`2s + L/s` positions (:math:`s \approx \sqrt{L}` in the paper).

    Args:
        num_nodes: number of positions ``N``.
        stride: ``s >= 1``.
        causal: attend to the past only (``False``: the bidirectional version).
        batch: ``[N]`` sorted sequence id of each node, or ``None`` for one sequence.
        device: where to build the pattern when ``batch`` is ``None``.

    Returns:
        ``[2, E]``.
    """
    num_nodes = check_size(num_nodes, "num_nodes")
    stride = check_size(stride, "stride", minimum=1)
    causal = check_flag(causal, "causal")
    seg = segments(num_nodes, batch, resolve_device(batch, device))
    pos, length, start = seg.pos, seg.length, seg.start
    stride = min(stride, max(num_nodes, 1))  # strides past the longest sequence all mean "everything"; no int64 overflow
    local_first = (pos - stride + 1).clamp(min=0)
    local_last = pos if causal else torch.minimum(pos + stride - 1, length - 1)
    # Runs per target: earlier multiples of the stride (step s), the local band (step 1), later multiples.
    firsts = [start + pos % stride, start + local_first]
    counts = [pos // stride, local_last - local_first + 1]
    steps = [stride, 1]
    if not causal:
        firsts.append(start + pos + stride)
        counts.append((length - 1 - pos) // stride)
        steps.append(stride)
    return _runs_per_target(firsts, counts, steps)


def fixed(
    num_nodes: int,
    block: int,
    *,
    num_summary: int = 1,
    causal: bool = True,
    batch: Optional[Tensor] = None,
    device: Device = None,
) -> Tensor:
    r"""Fixed pattern of the Sparse Transformer (Child et al., 2019), both heads combined:
    :math:`j \to i` iff

    .. math::
        \lfloor p_j / l \rfloor = \lfloor p_i / l \rfloor
        \quad\text{or}\quad p_j \bmod l \ge l - c,

    i.e. ``i`` sees its own block of ``l`` positions and the last ``c`` "summary" positions of
    every block; ``causal=True`` keeps :math:`p_j \le p_i` (the paper's autoregressive form, where
    only summaries of earlier blocks are visible).

    Args:
        num_nodes: number of positions ``N``.
        block: block length ``l >= 1``.
        num_summary: ``0 <= c <= l`` summary positions per block.
        causal: attend to the past only (``False``: the bidirectional version).
        batch: ``[N]`` sorted sequence id of each node, or ``None`` for one sequence.
        device: where to build the pattern when ``batch`` is ``None``.

    Returns:
        ``[2, E]``.
    """
    num_nodes = check_size(num_nodes, "num_nodes")
    block = check_size(block, "block", minimum=1)
    num_summary = check_size(num_summary, "num_summary")
    causal = check_flag(causal, "causal")
    if num_summary > block:
        raise ValueError(f"num_summary must be <= block ({block}), got {num_summary}")
    seg = segments(num_nodes, batch, resolve_device(batch, device))
    pos, length, start = seg.pos, seg.length, seg.start
    block_id = pos // block
    block_start = block_id * block
    own = pos - block_start + 1 if causal else torch.minimum(length - block_start, torch.full_like(pos, block))
    if num_summary <= 1:
        # One summary per block: the summaries before and after the own block are runs of step l.
        firsts = [start + block - 1, start + block_start]
        counts = [block_id * num_summary, own]
        steps = [block, 1]
        if not causal:
            firsts.append(start + block_start + 2 * block - 1)
            counts.append((length // block - block_id - 1).clamp(min=0) * num_summary)
            steps.append(block)
        return _runs_per_target(firsts, counts, steps)
    # Several summaries per block: one run per visible block m (its summary chunk, or the whole
    # own block); the (m, target) pairs are enumerated as runs m = 0, 1, ... themselves.
    blocks_seen = block_id + 1 if causal else -(-length // block)
    block_m, target = runs_to_edge_index(
        torch.arange(num_nodes, device=pos.device), torch.zeros_like(pos), blocks_seen, 1
    )
    is_own = block_m == block_id[target]
    chunk_first = block_m * block + (block - num_summary)
    chunk_length = (torch.minimum(length[target], (block_m + 1) * block) - chunk_first).clamp(min=0)
    first = start[target] + torch.where(is_own, block_m * block, chunk_first)
    return runs_to_edge_index(target, first, torch.where(is_own, own[target], chunk_length), 1)


def log_sparse(num_nodes: int, *, causal: bool = True, batch: Optional[Tensor] = None, device: Device = None) -> Tensor:
    r"""LogSparse pattern (Li et al., 2019): :math:`j \to i` iff :math:`p_j = p_i` or

    .. math::
        p_j = p_i - 2^k \quad (k = 0, 1, 2, \dots),

    and also :math:`p_j = p_i + 2^k` when not ``causal``. ``O(N log L)`` edges.

    Args:
        num_nodes: number of positions ``N``.
        causal: attend to the past only.
        batch: ``[N]`` sorted sequence id of each node, or ``None`` for one sequence.
        device: where to build the pattern when ``batch`` is ``None``.

    Returns:
        ``[2, E]``.
    """
    num_nodes = check_size(num_nodes, "num_nodes")
    causal = check_flag(causal, "causal")
    seg = segments(num_nodes, batch, resolve_device(batch, device))
    longest = int(seg.length.max()) if num_nodes else 0
    powers = 2 ** torch.arange(max(longest - 1, 0).bit_length(), device=seg.pos.device)
    zero = torch.zeros(1, dtype=torch.long, device=powers.device)
    parts = [-powers.flip(0), zero] if causal else [-powers.flip(0), zero, powers]
    offsets = torch.cat(parts)
    reached = seg.pos.unsqueeze(1) + offsets
    valid = (reached >= 0) & (reached < seg.length.unsqueeze(1))
    return rows_to_edge_index(reached + seg.start.unsqueeze(1), valid)


def block_local(num_nodes: int, block_size: int, *, batch: Optional[Tensor] = None, device: Device = None) -> Tensor:
    r"""Full attention inside consecutive blocks: :math:`j \to i` iff
    :math:`\lfloor p_j / b \rfloor = \lfloor p_i / b \rfloor` (the last block of a sequence may be shorter).

    Args:
        num_nodes: number of positions ``N``.
        block_size: ``b >= 1``.
        batch: ``[N]`` sorted sequence id of each node, or ``None`` for one sequence.
        device: where to build the pattern when ``batch`` is ``None``.

    Returns:
        ``[2, E]`` with ``E <= N b``.
    """
    num_nodes = check_size(num_nodes, "num_nodes")
    block_size = check_size(block_size, "block_size", minimum=1)
    seg = segments(num_nodes, batch, resolve_device(batch, device))
    block_start = seg.pos - seg.pos % block_size
    count = torch.minimum(seg.length - block_start, torch.full_like(block_start, block_size))
    return grid_union(seg.start + block_start, count, 1, None, num_nodes)


def global_tokens(num_nodes: int, indices: Indices, *, batch: Optional[Tensor] = None, device: Device = None) -> Tensor:
    r"""Global tokens: :math:`j \to i` iff :math:`p_i \in G` or :math:`p_j \in G`.

    The positions ``G = indices`` are taken within every sequence; an index at or beyond a
    sequence's length is skipped for that sequence. Global tokens attend to every position of
    their sequence (themselves included) and every position attends to them.

    Args:
        num_nodes: number of positions ``N``.
        indices: non-negative positions ``G`` (int, sequence of ints or LongTensor; repeats ignored).
        batch: ``[N]`` sorted sequence id of each node, or ``None`` for one sequence.
        device: where to build the pattern when ``batch`` is ``None``.

    Returns:
        ``[2, E]`` with ``E <= 2 |G| N``.
    """
    num_nodes = check_size(num_nodes, "num_nodes")
    seg = segments(num_nodes, batch, resolve_device(batch, device))
    hubs = _global_positions(indices, seg.pos.device, "indices")
    is_global = _is_global(seg.pos, hubs)
    count = torch.where(is_global, seg.length, torch.zeros_like(seg.length))
    return grid_union(seg.start, count, 1, _global_sources(seg, hubs, num_nodes), num_nodes)


def random(
    num_nodes: int,
    num_random: int,
    *,
    generator: Optional[torch.Generator] = None,
    batch: Optional[Tensor] = None,
    device: Device = None,
) -> Tensor:
    r"""Random links: each target draws ``min(r, L)`` distinct sources uniformly from its sequence
    (itself possibly among them).

    Args:
        num_nodes: number of positions ``N``.
        num_random: ``r >= 0`` sources per target.
        generator: ``torch.Generator`` for reproducible draws (they are made on its device).
        batch: ``[N]`` sorted sequence id of each node, or ``None`` for one sequence.
        device: where to build the pattern when ``batch`` is ``None``.

    Returns:
        ``[2, E]`` with ``E = sum_i min(r, L_i)``.
    """
    num_nodes = check_size(num_nodes, "num_nodes")
    num_random = check_size(num_random, "num_random")
    seg = segments(num_nodes, batch, resolve_device(batch, device))
    sources = _sample_sources(seg, num_random, generator, num_nodes)
    return rows_to_edge_index(sources, sources < num_nodes)


def longformer(
    num_nodes: int,
    window: int,
    global_indices: Indices,
    *,
    dilation: int = 1,
    batch: Optional[Tensor] = None,
    device: Device = None,
) -> Tensor:
    r"""Longformer (Beltagy et al., 2020): ``union(sliding_window(window, dilation), global_tokens(global_indices))``.

    Args:
        num_nodes: number of positions ``N``.
        window: ``w >= 0`` neighbours on each side.
        global_indices: positions of the global tokens within each sequence (see `global_tokens`).
        dilation: ``d >= 1`` window dilation.
        batch: ``[N]`` sorted sequence id of each node, or ``None`` for one sequence.
        device: where to build the pattern when ``batch`` is ``None``.

    Returns:
        ``[2, E]``.
    """
    return _window_global_random(num_nodes, window, global_indices, 0, dilation, None, batch, device)


def bigbird(
    num_nodes: int,
    window: int,
    global_indices: Indices,
    num_random: int,
    *,
    generator: Optional[torch.Generator] = None,
    batch: Optional[Tensor] = None,
    device: Device = None,
) -> Tensor:
    r"""BigBird (Zaheer et al., 2020) at token level: ``union(sliding_window(window),
    global_tokens(global_indices), random(num_random))``.

    Args:
        num_nodes: number of positions ``N``.
        window: ``w >= 0`` neighbours on each side.
        global_indices: positions of the global tokens within each sequence (see `global_tokens`).
        num_random: ``r >= 0`` random sources per target (drawn as in `random`).
        generator: ``torch.Generator`` for reproducible draws.
        batch: ``[N]`` sorted sequence id of each node, or ``None`` for one sequence.
        device: where to build the pattern when ``batch`` is ``None``.

    Returns:
        ``[2, E]``.
    """
    return _window_global_random(num_nodes, window, global_indices, num_random, 1, generator, batch, device)


def _window_global_random(
    num_nodes: int,
    window: int,
    global_indices: Indices,
    num_random: int,
    dilation: int,
    generator: Optional[torch.Generator],
    batch: Optional[Tensor],
    device: Device,
) -> Tensor:
    num_nodes = check_size(num_nodes, "num_nodes")
    window = check_size(window, "window")
    num_random = check_size(num_random, "num_random")
    dilation = check_size(dilation, "dilation", minimum=1)
    seg = segments(num_nodes, batch, resolve_device(batch, device))
    hubs = _global_positions(global_indices, seg.pos.device, "global_indices")
    is_global = _is_global(seg.pos, hubs)
    window_first, window_count = _window_grid(seg, window, dilation, False)
    # A global token's grid is its whole sequence, which subsumes its window and random links.
    first = torch.where(is_global, seg.start, window_first)
    count = torch.where(is_global, seg.length, window_count)
    step: Union[int, Tensor] = 1 if dilation == 1 else torch.where(is_global, 1, dilation)
    extras = _global_sources(seg, hubs, num_nodes)
    if num_random:
        extras = torch.cat([extras, _sample_sources(seg, num_random, generator, num_nodes)], dim=1).sort(dim=1).values
    return grid_union(first, count, step, extras, num_nodes)


def _window_grid(seg: Segments, window: int, dilation: int, causal: bool) -> Tuple[Tensor, Tensor]:
    # (first source, number of sources) of each target's window grid, clipped to its sequence.
    before = torch.clamp(seg.pos // dilation, max=window)
    after = torch.zeros_like(before) if causal else torch.clamp((seg.length - 1 - seg.pos) // dilation, max=window)
    return seg.start + seg.pos - dilation * before, before + after + 1


def _runs_per_target(firsts: Sequence[Tensor], counts: Sequence[Tensor], steps: Sequence[int]) -> Tensor:
    # Targets 0..N-1, each with len(firsts) ordered runs; steps are per run column.
    first, count = torch.stack(list(firsts), dim=1), torch.stack(list(counts), dim=1)
    num_targets, runs = first.shape
    target = torch.arange(num_targets, device=first.device).repeat_interleave(runs)
    step: Union[int, Tensor] = steps[0]
    if len(set(steps)) > 1:
        step = torch.tensor(steps, device=first.device).repeat(num_targets)
    return runs_to_edge_index(target, first.flatten(), count.flatten(), step)


def _global_positions(indices: Indices, device: torch.device, name: str) -> Tensor:
    if isinstance(indices, Tensor):
        if indices.is_floating_point() or indices.is_complex() or indices.dtype == torch.bool:
            raise TypeError(f"{name} must hold integers, got {indices.dtype}")
        hubs = indices.to(device=device, dtype=torch.long)
    else:
        values = [indices] if not isinstance(indices, Sequence) else list(indices)
        hubs = torch.tensor([check_size(v, name) for v in values], dtype=torch.long, device=device)
    if hubs.dim() > 1:
        raise ValueError(f"{name} must be a 1-D list of positions, got shape {list(hubs.shape)}")
    hubs = hubs.reshape(-1)
    if hubs.numel() and int(hubs.min()) < 0:
        raise ValueError(f"{name} must be non-negative positions, got {int(hubs.min())}")
    return torch.unique(hubs)


def _is_global(pos: Tensor, hubs: Tensor) -> Tensor:
    if hubs.numel() == 0:
        return torch.zeros_like(pos, dtype=torch.bool)
    slot = torch.searchsorted(hubs, pos).clamp(max=hubs.numel() - 1)
    return hubs[slot] == pos


def _global_sources(seg: Segments, hubs: Tensor, sentinel: int) -> Tensor:
    # [N, |G|] global indices of the global tokens of each target's sequence, sentinel where missing.
    inside = hubs.unsqueeze(0) < seg.length.unsqueeze(1)
    return torch.where(inside, seg.start.unsqueeze(1) + hubs, sentinel)


def _sample_sources(
    seg: Segments, num_random: int, generator: Optional[torch.Generator], sentinel: int
) -> Tensor:
    r"""``[N, r]`` ascending distinct uniform sources per target from its sequence, ``sentinel``-padded.

    Robert Floyd's algorithm, run for all targets at once: for ``t = L - r .. L - 1`` draw
    ``v`` uniform in ``[0, t]`` and take ``t`` instead when ``v`` is already taken. It yields a
    uniform ``r``-subset with ``r`` draws and no rejection loop.
    """
    length = seg.length
    num_targets = length.numel()
    # r ≥ L takes a whole sequence: no [r, N] draws past the longest one (its cost grows as r² N).
    num_random = min(num_random, int(length.max()) if num_targets else 0)
    check_generator(generator)
    draw_device = generator.device if generator is not None else length.device
    # Draw-major [r, N] so that each draw is read, written and compared contiguously.
    uniform = torch.rand(num_random, num_targets, generator=generator, dtype=torch.float64, device=draw_device)
    uniform = uniform.to(length.device)
    chosen = torch.empty(num_random, num_targets, dtype=torch.long, device=length.device)
    for k in range(num_random):
        top = (length - num_random + k).clamp(min=0)
        value = torch.minimum((uniform[k] * (top + 1)).long(), top)
        if k:
            value = torch.where((chosen[:k] == value).any(dim=0), top, value)
        chosen[k] = value
    chosen = chosen.t()
    column = torch.arange(num_random, device=length.device)
    short = length.unsqueeze(1) <= num_random
    chosen = torch.where(short, column, chosen)
    sources = torch.where(column < length.unsqueeze(1), seg.start.unsqueeze(1) + chosen, sentinel)
    return sources.sort(dim=1).values
