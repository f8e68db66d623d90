r"""Dynamic attention patterns computed from the features themselves: exact k-nearest neighbours
and Reformer-style locality-sensitive hashing (LSH) for scale.

Every builder returns an int64 ``edge_index [2, E]`` (row 0: source/key ``j``, row 1:
target/query ``i``) sorted by (target, source) without duplicate pairs. With PyG ``batch``
vectors (sorted segment ids) edges never join two segments. The selection is computed under
:func:`torch.no_grad`: it is a discrete choice, not differentiated; gradients of an attention
layer flow through the attention weights on the selected edges.
"""
from __future__ import annotations

import math
from typing import List, NamedTuple, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from ._utils import check_batch, check_flag, check_generator, check_size

METRICS = ("dot", "cosine", "l2")

# Columns per group in the two-stage top-k of `_top_columns`; 16 measured fastest on CPU.
_GROUP = 16

# Upper bound on the elements of one ``[rows, num_buckets / 2]`` projection block in `lsh_buckets`.
_PROJECTION_BLOCK = 1 << 22

# Nodes per block when merging the LSH candidates of all hash rounds.
_MERGE_ROWS = 8192


def _check_features(features: Tensor, name: str) -> Tensor:
    """Validate a finite floating-point feature matrix ``[N, D]``."""
    if not isinstance(features, Tensor):
        raise TypeError(f"{name} must be a floating-point Tensor [N, D], got {type(features).__name__}")
    if not features.is_floating_point():
        raise TypeError(f"{name} must have a floating-point dtype, got {features.dtype}")
    if features.dim() != 2:
        raise ValueError(f"{name} must have shape [N, D], got {list(features.shape)}")
    if not bool(torch.isfinite(features).all()):
        raise ValueError(f"{name} must be finite (it contains NaN or inf)")
    return features


def _segment_key_ranges(
    batch: Optional[Tensor], key_counts: Optional[Tensor], num_queries: int, num_keys: int, device: torch.device
) -> Tuple[Tensor, Tensor]:
    """Per query ``[N]``: the half-open range ``[lo, hi)`` of key indices in its segment.

    Sorted batch vectors place each segment's keys in one contiguous range.
    """
    if batch is None:
        return (
            torch.zeros(num_queries, dtype=torch.long, device=device),
            torch.full((num_queries,), num_keys, dtype=torch.long, device=device),
        )
    key_ptr = torch.cat([key_counts.new_zeros(1), torch.cumsum(key_counts, 0)])
    return key_ptr[batch], key_ptr[batch + 1]


def _centre_on_key_means(query: Tensor, key: Tensor, batch: Optional[Tensor], key_batch: Optional[Tensor],
                         key_counts: Optional[Tensor]) -> Tuple[Tensor, Tensor]:
    """Queries and keys shifted by the mean of their segment's keys (``key is query`` is kept).

    ``-||q - k||^2`` does not change when a segment's queries and keys shift alike, but its
    expansion ``2 q.k - ||k||^2`` cancels catastrophically when features share a large offset:
    float32 features at 1000 ± 0.1 found 0.2 % of their true nearest neighbours uncentred."""
    shared = key is query
    if key_batch is None:
        query_centre = key_centre = key.mean(0, keepdim=True)  # knn has returned early on no keys
    else:
        sums = key.new_zeros(key_counts.numel(), key.size(1)).index_add_(0, key_batch, key)
        means = sums / key_counts.clamp(min=1).unsqueeze(1).to(key.dtype)
        query_centre, key_centre = means[batch], means[key_batch]
    query = query - query_centre
    return query, query if shared else key - key_centre


def _within_score_range(query: Tensor, key: Tensor) -> Tuple[Tensor, Tensor]:
    """Queries and keys divided by their largest magnitude where their scores could overflow
    (``key is query`` is kept); otherwise unchanged. Every score of a metric is then scaled by
    the same positive factor, so ranks do not change; float32 scores overflow to ties from
    feature magnitudes of about ``1e18``."""
    if query.numel() == 0 or key.numel() == 0:  # no features (D = 0): every score is 0
        return query, key
    largest = float(torch.maximum(query.abs().amax(), key.abs().amax()))
    if 4 * query.size(1) * largest**2 <= torch.finfo(query.dtype).max:  # |2 q.k - ||k||^2| <= 4 D largest^2
        return query, key
    shared = key is query
    query = query / largest
    return query, query if shared else key / largest


def _unit_rows(features: Tensor) -> Tensor:
    """Rows scaled to unit norm, in float32 at least. Each row is first divided by its largest
    magnitude (zero rows stay zero): ``F.normalize`` alone divides rows with norms below its
    ``1e-12`` floor by the floor, not their norm, and in float16 that floor is 0 (NaN rows)."""
    features = features.to(torch.promote_types(features.dtype, torch.float32))
    largest = features.abs().amax(dim=1, keepdim=True) if features.size(1) else features.new_ones(features.size(0), 1)
    return F.normalize(features / largest.clamp_min(torch.finfo(features.dtype).tiny), dim=1)


def _top_columns(scores: Tensor, k: int) -> Tensor:
    """Column indices ``[rows, min(k, width)]`` of the largest entries of each row of ``scores``.

    ``width`` must be a multiple of ``_GROUP``. Wide rows use an exact two-stage selection that
    avoids a full-width ``topk``: split the columns into ``G = width / _GROUP`` groups
    (column ``c`` in group ``c mod G``, so the group maxima are an elementwise max of contiguous
    slices), keep the ``k`` groups with the largest maxima and run ``topk`` on their members only.
    A column outside those groups is beaten by ``k`` group maxima, i.e. by ``k`` distinct
    entries, so it cannot be in the top ``k`` (ties aside).
    """
    rows, width = scores.shape
    k = min(k, width)
    groups = width // _GROUP
    if groups <= 2 * k:
        return scores.topk(k, dim=1, sorted=False).indices
    group_max = scores.view(rows, _GROUP, groups).amax(dim=1)
    best_groups = group_max.topk(k, dim=1, sorted=False).indices
    members = torch.arange(_GROUP, device=scores.device) * groups
    candidates = (best_groups.unsqueeze(2) + members).view(rows, k * _GROUP)
    best = scores.gather(1, candidates).topk(k, dim=1, sorted=False).indices
    return candidates.gather(1, best)


def _sorted_rows_to_edges(source: Tensor, valid: Tensor, first_target: int, sentinel: int) -> Tuple[Tensor, Tensor]:
    """Flatten per-target candidate rows ``[rows, c]`` into (source, target) sorted by (target, source)."""
    source = torch.where(valid, source, sentinel).sort(dim=1).values
    target = torch.arange(first_target, first_target + source.size(0), device=source.device)
    keep = source < sentinel
    return source[keep], target.unsqueeze(1).expand_as(source)[keep]


@torch.no_grad()
def knn(
    query: Tensor,
    key: Optional[Tensor] = None,
    k: Optional[int] = None,
    *,
    batch: Optional[Tensor] = None,
    key_batch: Optional[Tensor] = None,
    metric: str = "dot",
    chunk_size: int = 1024,
    loop: bool = True,
) -> Tensor:
    r"""Exact k-nearest-neighbour pattern: :math:`j \to i` iff key :math:`j` is among the
    :math:`k` keys of :math:`i`'s segment most similar to query :math:`i`, with similarity

    .. math::
        s(\mathbf{q}_i, \mathbf{k}_j) =
        \begin{cases}
        \mathbf{q}_i^\top \mathbf{k}_j & \texttt{"dot"} \\
        \mathbf{q}_i^\top \mathbf{k}_j / (\lVert\mathbf{q}_i\rVert \lVert\mathbf{k}_j\rVert) & \texttt{"cosine"} \\
        -\lVert\mathbf{q}_i - \mathbf{k}_j\rVert^2 & \texttt{"l2"}
        \end{cases}

    A query whose segment holds fewer than :math:`k` keys attends to all of them. With
    ``key=None`` the queries are their own keys, so each query is a candidate for itself (the
    nearest one for ``"cosine"`` and ``"l2"``); ``loop=False`` excludes the pair :math:`j = i`.
    Ties between equal similarities are broken arbitrarily.

    The queries are processed ``chunk_size`` rows at a time against the contiguous key range of
    the segments present in the chunk, so memory is
    :math:`O(\text{chunk\_size} \cdot \text{range})` (at most ``chunk_size * M`` scores), never
    :math:`N \times M`.

    Args:
        query: ``[N, D]`` query features.
        key: ``[M, D]`` key features, or ``None`` to use ``query``.
        k: ``>= 1`` keys per query (required).
        batch: ``[N]`` sorted segment id of each query, or ``None`` for one segment.
        key_batch: ``[M]`` sorted segment id of each key; required with ``key`` and ``batch``,
            and taken from ``batch`` when ``key`` is ``None``.
        metric: ``"dot"``, ``"cosine"`` or ``"l2"``.
        chunk_size: ``>= 1`` queries scored at once.
        loop: keep the pair :math:`j = i` as a candidate; ``False`` needs ``M == N``
            (queries and keys describing the same nodes).

    Returns:
        ``[2, E]`` with ``E = sum_i min(k, c_i)``, ``c_i`` the number of keys in ``i``'s
        segment (not counting ``i`` itself with ``loop=False``).
    """
    query = _check_features(query, "query")
    if k is None:
        raise TypeError("k is required: knn(query, key=None, k=...)")
    k = check_size(k, "k", minimum=1)
    chunk_size = check_size(chunk_size, "chunk_size", minimum=1)
    check_flag(loop, "loop")
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    device = query.device
    if key is None:
        if key_batch is not None:
            raise ValueError("key_batch needs a separate key; with key=None the keys share batch")
        key, key_batch = query, batch
    else:
        key = _check_features(key, "key")
        if key.size(1) != query.size(1):
            raise ValueError(f"key must have shape [M, D] with D={query.size(1)} like query, got {list(key.shape)}")
        if key.device != device:
            raise ValueError(f"key is on {key.device} but query is on {device}")
        if (batch is None) != (key_batch is None):
            raise ValueError("batch and key_batch must be given together when key is given")
    num_queries, num_keys = query.size(0), key.size(0)
    if not loop and num_keys != num_queries:
        raise ValueError(
            f"loop=False needs as many keys as queries (the same nodes), got M={num_keys}, N={num_queries}"
        )
    if batch is not None:
        batch = check_batch(batch, num_queries, "batch", device)
        key_batch = check_batch(key_batch, num_keys, "key_batch", device)
    if num_queries == 0 or num_keys == 0:
        return torch.empty(2, 0, dtype=torch.long, device=device)
    key_counts = None  # [S] keys of each segment a query or a key names
    if batch is not None:  # numbered densely, so per-segment sizes follow the nodes, not the largest id
        segments, dense = torch.unique(torch.cat([batch, key_batch]), return_inverse=True)
        batch, key_batch = dense[:num_queries], dense[num_queries:]
        key_counts = torch.bincount(key_batch, minlength=segments.numel())

    shared = key is query
    # Scores in float32 at least: 2 q.k - ||k||^2 overflows float16 from feature norms of about 256.
    dtype = torch.promote_types(torch.promote_types(query.dtype, key.dtype), torch.float32)
    query, key = query.to(dtype), key.to(dtype)
    if metric == "l2":
        query, key = _centre_on_key_means(query, key, batch, key_batch, key_counts)
    if metric == "cosine":
        query = _unit_rows(query)
        key = query if shared else _unit_rows(key)
    else:
        query, key = _within_score_range(query, key)
    # Padding rows let every chunk read a key window whose width is a multiple of _GROUP.
    padded_key = torch.cat([key, key.new_zeros(_GROUP - 1, key.size(1))])
    # -||q - k||^2 = 2 q.k - ||k||^2 - ||q||^2; the last term is constant per query, so it is dropped.
    key_bias = -padded_key.square().sum(dim=1) if metric == "l2" else None

    key_lo, key_hi = _segment_key_ranges(batch, key_counts, num_queries, num_keys, device)
    starts = torch.arange(0, num_queries, chunk_size, device=device)
    lasts = (starts + chunk_size).clamp(max=num_queries) - 1
    bounds = torch.stack([key_lo[starts], key_hi[lasts], key_lo[lasts], key_hi[starts]], dim=1).tolist()
    widths = [math.ceil((hi - lo) / _GROUP) * _GROUP for lo, hi, _, _ in bounds]
    # One buffer for all chunks: a fresh allocation per chunk would page-fault it in again.
    buffer = query.new_empty(max(min(chunk_size, num_queries) * max(widths), 1))

    sources: List[Tensor] = []
    targets: List[Tensor] = []
    for start, (lo, hi, last_lo, first_hi), width in zip(starts.tolist(), bounds, widths):
        if width == 0:
            continue
        end = min(start + chunk_size, num_queries)
        scores = buffer[: (end - start) * width].view(end - start, width)
        keys_t = padded_key[lo : lo + width].T
        if key_bias is None:
            torch.mm(query[start:end], keys_t, out=scores)
        else:
            torch.addmm(key_bias[lo : lo + width], query[start:end], keys_t, alpha=2, out=scores)
        row_lo, row_hi = key_lo[start:end, None] - lo, key_hi[start:end, None] - lo
        # A chunk inside one segment only needs its padding columns masked.
        if last_lo == lo and first_hi == hi:
            scores[:, hi - lo :] = float("-inf")
        else:
            columns = torch.arange(width, device=device)
            scores.masked_fill_((columns < row_lo) | (columns >= row_hi), float("-inf"))
        self_column = torch.arange(start, end, device=device) - lo
        if not loop:
            inside = (self_column >= 0) & (self_column < width)
            scores[inside.nonzero().squeeze(1), self_column[inside]] = float("-inf")
        columns = _top_columns(scores, k)
        valid = (columns >= row_lo) & (columns < row_hi)
        if not loop:
            valid &= columns != self_column.unsqueeze(1)
        source, target = _sorted_rows_to_edges(columns + lo, valid, start, num_keys)
        sources.append(source)
        targets.append(target)
    if not sources:
        return torch.empty(2, 0, dtype=torch.long, device=device)
    return torch.stack([torch.cat(sources), torch.cat(targets)])


@torch.no_grad()
def lsh_buckets(
    query: Tensor, num_buckets: int, *, num_hashes: int = 1, generator: Optional[torch.Generator] = None
) -> Tensor:
    r"""Angular LSH buckets of Reformer (Kitaev et al., 2020): for each of ``num_hashes``
    independent random rotations :math:`R \in \mathbb{R}^{D \times b/2}` with standard normal
    entries,

    .. math::
        h(\mathbf{x}) = \arg\max\,[\mathbf{x} R \,;\, -\mathbf{x} R] \in \{0, \dots, b - 1\}.

    Vectors at a small angle share a bucket with high probability; the bucket does not depend on
    :math:`\lVert\mathbf{x}\rVert`.

    Args:
        query: ``[N, D]`` features.
        num_buckets: ``b``, even, ``>= 2``.
        num_hashes: ``>= 1`` independent rotations.
        generator: source of the rotations (on ``query``'s device) for reproducibility; they
            are drawn as one float32 ``[num_hashes, D, b / 2]`` normal tensor.

    Returns:
        ``[num_hashes, N]`` int64 bucket ids.
    """
    query = _check_features(query, "query")
    num_buckets = check_size(num_buckets, "num_buckets", minimum=2)
    if num_buckets % 2:
        raise ValueError(f"num_buckets must be even (buckets come in ±rotation pairs), got {num_buckets}")
    num_hashes = check_size(num_hashes, "num_hashes", minimum=1)
    check_generator(generator)
    half = num_buckets // 2
    rotations = torch.randn(
        (num_hashes, query.size(1), half), generator=generator, dtype=torch.float32, device=query.device
    ).to(query.dtype)
    buckets = torch.empty(num_hashes, query.size(0), dtype=torch.long, device=query.device)
    rows_per_block = max(1, _PROJECTION_BLOCK // half)
    for hash_index in range(num_hashes):
        for start in range(0, query.size(0), rows_per_block):
            projected = query[start : start + rows_per_block] @ rotations[hash_index]
            largest, argmax = projected.max(dim=1)
            smallest, argmin = projected.min(dim=1)
            # argmax over [xR; -xR] without building it; ties go to the first half like argmax would.
            rows = slice(start, start + rows_per_block)
            buckets[hash_index, rows] = torch.where(largest >= -smallest, argmax, argmin + half)
    return buckets


@torch.no_grad()
def lsh_knn(
    query: Tensor,
    k: Optional[int],
    *,
    num_hashes: int = 4,
    num_buckets: Optional[int] = None,
    chunk_size: int = 64,
    batch: Optional[Tensor] = None,
    generator: Optional[torch.Generator] = None,
    loop: bool = True,
) -> Tensor:
    r"""Approximate cosine kNN with Reformer's shared-QK LSH attention pattern.

    For each hash round (an independent rotation of :func:`lsh_buckets`):

    1. sort the nodes of each segment by (bucket, position) — stable, so equal buckets keep
       their order;
    2. split each segment's sorted order into consecutive chunks of ``chunk_size`` (the last
       one may be shorter; chunks restart at every segment);
    3. the candidates of a query are the members of its own chunk and of the previous chunk of
       the same segment (look-one-back; the first chunk of a segment has no previous one).

    The candidate set is the union over the rounds, self included (``loop=False`` removes it).
    With ``k=None`` every candidate pair is an edge; otherwise each query keeps the ``k``
    candidates with the largest cosine similarity
    :math:`\mathbf{x}_i^\top\mathbf{x}_j / (\lVert\mathbf{x}_i\rVert\lVert\mathbf{x}_j\rVert)`
    (all of them when it has fewer): a query whose candidates contain its true ``k`` nearest
    neighbours gets exactly its edges of :func:`knn` with ``metric="cosine"`` (ties aside).
    Cost per round: :math:`O(N D (\text{num\_buckets} / 2 + 2\,\text{chunk\_size}))` time
    and :math:`O(N \cdot \text{chunk\_size})` memory, plus the merged candidates,
    ``num_hashes * min(k, 2 * chunk_size)`` per node.

    Args:
        query: ``[N, D]`` shared query/key features.
        k: ``>= 1`` keys per query, or ``None`` to keep all candidates.
        num_hashes: ``>= 1`` hash rounds.
        num_buckets: even ``>= 2``; ``None`` picks Reformer's
            :math:`2 \lceil L_{\max} / \text{chunk\_size} \rceil` (``L_max``: longest segment),
            an average bucket of half a chunk.
        chunk_size: ``>= 1`` sorted positions per chunk.
        batch: ``[N]`` sorted segment id of each node, or ``None`` for one segment.
        generator: source of the random rotations (on ``query``'s device); the same seed
            gives the same pattern.
        loop: keep the pair :math:`j = i`.

    Returns:
        ``[2, E]`` with at most ``min(k, num_hashes * 2 * chunk_size)`` edges per query.
    """
    query = _check_features(query, "query")
    if k is not None:
        k = check_size(k, "k", minimum=1)
    num_hashes = check_size(num_hashes, "num_hashes", minimum=1)
    chunk_size = check_size(chunk_size, "chunk_size", minimum=1)
    check_flag(loop, "loop")
    num_nodes, device = query.size(0), query.device
    if batch is not None:
        batch = check_batch(batch, num_nodes, "batch", device)
    if num_nodes == 0:
        return torch.empty(2, 0, dtype=torch.long, device=device)
    if batch is None:
        segment, counts = torch.zeros(num_nodes, dtype=torch.long, device=device), torch.tensor([num_nodes], device=device)
    else:  # numbered densely: sizes follow the nodes, not the largest id
        _, segment, counts = torch.unique_consecutive(batch, return_inverse=True, return_counts=True)
    if num_buckets is None:
        num_buckets = 2 * math.ceil(int(counts.max()) / chunk_size)
    buckets = lsh_buckets(query, num_buckets, num_hashes=num_hashes, generator=generator)

    layout = _ChunkLayout.of(segment, counts, chunk_size)
    unit = _unit_rows(query)
    per_round = 2 * chunk_size if k is None else min(k, 2 * chunk_size)
    sources = torch.empty(num_nodes, num_hashes * per_round, dtype=torch.long, device=device)
    scores = unit.new_empty(num_nodes, num_hashes * per_round)
    for round_index, hash_buckets in enumerate(buckets):
        order = torch.sort(segment * num_buckets + hash_buckets, stable=True).indices
        columns = slice(round_index * per_round, (round_index + 1) * per_round)
        sources[:, columns], scores[:, columns] = _round_candidates(unit, order, layout, k, loop)
    return _merge_candidates(sources, scores, k)


class _ChunkLayout(NamedTuple):
    """Where the sorted nodes of every segment sit in one ``[num_chunks, chunk_size]`` grid.

    Each segment is padded to whole chunks. Sorting within segments keeps every segment in
    place, so the grid slot of sorted rank ``r`` (``slot_of_rank [N]``) is the same in every
    hash round; ``has_previous [num_chunks]`` tells whether a chunk's predecessor is in its segment.
    """

    slot_of_rank: Tensor
    has_previous: Tensor
    chunk_size: int

    @staticmethod
    def of(segment: Tensor, counts: Tensor, chunk_size: int) -> "_ChunkLayout":
        padded_counts = -torch.div(-counts, chunk_size, rounding_mode="floor") * chunk_size
        shift = (torch.cumsum(padded_counts, 0) - padded_counts) - (torch.cumsum(counts, 0) - counts)
        slot_of_rank = torch.arange(segment.numel(), device=segment.device) + shift[segment]
        num_chunks = int(padded_counts.sum()) // chunk_size
        chunk_segment = torch.full((num_chunks,), -1, dtype=torch.long, device=segment.device)
        chunk_segment[slot_of_rank // chunk_size] = segment
        same_as_previous = chunk_segment[1:] == chunk_segment[:-1]
        has_previous = torch.cat([same_as_previous.new_zeros(1), same_as_previous])
        return _ChunkLayout(slot_of_rank, has_previous, chunk_size)


def _round_candidates(
    unit: Tensor, order: Tensor, layout: _ChunkLayout, k: Optional[int], loop: bool
) -> Tuple[Tensor, Tensor]:
    """One hash round: per node ``[N, c]`` candidate sources and their cosine scores.

    ``unit [N, D]`` are the normalised features and ``order [N]`` the nodes sorted by
    (segment, bucket, position). Masked candidates (padding, the missing previous chunk, self
    with ``loop=False``) score ``-inf``; with ``k`` only each node's ``k`` best are returned.
    """
    num_chunks, chunk_size = layout.has_previous.numel(), layout.chunk_size
    num_slots = num_chunks * chunk_size
    node_at_slot = torch.full((num_slots,), -1, dtype=torch.long, device=unit.device)
    node_at_slot[layout.slot_of_rank] = order
    slot_of_node = torch.empty_like(order)
    slot_of_node[order] = layout.slot_of_rank
    features = unit.new_zeros(num_slots, unit.size(1))
    features[layout.slot_of_rank] = unit[order]

    chunk_nodes = node_at_slot.view(num_chunks, chunk_size)
    chunk_features = features.view(num_chunks, chunk_size, -1)
    previous_nodes = torch.where(layout.has_previous.unsqueeze(1), chunk_nodes.roll(1, dims=0), -1)
    key_nodes = torch.cat([previous_nodes, chunk_nodes], dim=1)
    key_features = torch.cat([chunk_features.roll(1, dims=0), chunk_features], dim=1)
    scores = torch.bmm(chunk_features, key_features.transpose(1, 2))
    invalid = (key_nodes == -1).unsqueeze(1)
    if not loop:
        invalid = invalid | (key_nodes.unsqueeze(1) == chunk_nodes.unsqueeze(2))
    scores.masked_fill_(invalid, float("-inf"))
    sources = key_nodes.unsqueeze(1).expand_as(scores)
    if k is not None:
        scores, best = scores.topk(min(k, scores.size(2)), dim=2, sorted=False)
        sources = sources.gather(2, best)
    return sources.reshape(num_slots, -1)[slot_of_node], scores.reshape(num_slots, -1)[slot_of_node]


def _merge_candidates(sources: Tensor, scores: Tensor, k: Optional[int]) -> Tensor:
    """Union of the per-node candidates ``sources [N, c]`` (``-inf`` score: masked), keeping
    the ``k`` best distinct sources when ``k`` is given; rows are processed in blocks of
    ``_MERGE_ROWS`` to bound the temporaries.
    """
    num_nodes = sources.size(0)
    edges: List[Tuple[Tensor, Tensor]] = []
    for start in range(0, num_nodes, _MERGE_ROWS):
        block_scores = scores[start : start + _MERGE_ROWS]
        # Masked candidates are exactly the -inf scores: cosine similarities are finite.
        block_sources = torch.where(block_scores == float("-inf"), num_nodes, sources[start : start + _MERGE_ROWS])
        block_sources, order = block_sources.sort(dim=1)
        keep = block_sources < num_nodes
        keep[:, 1:] &= block_sources[:, 1:] != block_sources[:, :-1]
        if k is not None:
            block_scores = block_scores.gather(1, order).masked_fill_(~keep, float("-inf"))
            block_scores, best = block_scores.topk(min(k, block_scores.size(1)), dim=1, sorted=False)
            block_sources, keep = block_sources.gather(1, best), block_scores > float("-inf")
        edges.append(_sorted_rows_to_edges(block_sources, keep, start, num_nodes))
    return torch.stack([torch.cat([source for source, _ in edges]), torch.cat([target for _, target in edges])])


def recall_at_k(approx_edge_index: Tensor, exact_edge_index: Tensor, num_nodes: int) -> float:
    """Fraction of the edges of ``exact_edge_index`` that also appear in ``approx_edge_index``.

    Used as recall@k of an approximate kNN pattern (e.g. :func:`lsh_knn`) against the exact one
    (:func:`knn`); an empty exact pattern has recall ``1.0``.

    Args:
        approx_edge_index: ``[2, E_a]`` approximate pattern.
        exact_edge_index: ``[2, E_e]`` reference pattern.
        num_nodes: number of nodes; every index must be in ``[0, num_nodes)``.

    Returns:
        ``|exact ∩ approx| / |exact|`` as a Python float.
    """
    num_nodes = check_size(num_nodes, "num_nodes", minimum=0)
    keys = []
    for edge_index, name in ((approx_edge_index, "approx_edge_index"), (exact_edge_index, "exact_edge_index")):
        if not isinstance(edge_index, Tensor) or edge_index.dtype not in (torch.int64, torch.int32):
            raise TypeError(f"{name} must be an integer (int64) Tensor [2, E]")
        if edge_index.dim() != 2 or edge_index.size(0) != 2:
            raise ValueError(f"{name} must have shape [2, E], got {list(edge_index.shape)}")
        if edge_index.numel() and (int(edge_index.min()) < 0 or int(edge_index.max()) >= num_nodes):
            raise ValueError(f"{name} has indices outside [0, num_nodes={num_nodes})")
        edge_index = edge_index.long()
        keys.append(edge_index[1] * num_nodes + edge_index[0])
    approx_keys, exact_keys = keys
    if exact_keys.numel() == 0:
        return 1.0
    return float(torch.isin(exact_keys, approx_keys.to(exact_keys.device)).float().mean())
