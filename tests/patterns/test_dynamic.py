"""Dynamic patterns against dense torch.topk references and loop-based definitions."""
import math

import pytest
import torch

from graph_sparse_attn.patterns import dynamic
from graph_sparse_attn.patterns.dynamic import knn, lsh_buckets, lsh_knn, recall_at_k

METRICS = ["dot", "cosine", "l2"]


def batch_from_lengths(lengths):
    return torch.cat([torch.full((n,), g, dtype=torch.long) for g, n in enumerate(lengths)])


def dense_similarity(query, key, metric):
    """[N, M] similarity by its definition (l2 from explicit differences, not the expansion)."""
    if metric == "dot":
        return query @ key.T
    if metric == "cosine":
        return (query @ key.T) / (query.norm(dim=1)[:, None] * key.norm(dim=1)[None, :])
    return -((query[:, None, :] - key[None, :, :]) ** 2).sum(dim=2)


def reference_knn(query, key, k, metric, batch=None, key_batch=None, loop=True):
    """Sorted list of [j, i]: torch.topk over the dense similarity restricted to i's segment."""
    scores = dense_similarity(query, key, metric)
    allowed = torch.ones_like(scores, dtype=torch.bool)
    if batch is not None:
        allowed = batch[:, None] == key_batch[None, :]
    if not loop:
        allowed &= ~torch.eye(query.size(0), key.size(0), dtype=torch.bool)
    scores = scores.masked_fill(~allowed, float("-inf"))
    edges = []
    for i in range(query.size(0)):
        count = min(k, int(allowed[i].sum()))
        edges += [[j, i] for j in sorted(scores[i].topk(count).indices.tolist())]
    return edges


def as_pairs(edge_index):
    assert edge_index.dtype == torch.int64
    assert edge_index.dim() == 2 and edge_index.size(0) == 2
    return edge_index.T.tolist()


def assert_sorted_unique(edge_index):
    pairs = [(i, j) for j, i in as_pairs(edge_index)]
    assert pairs == sorted(set(pairs)), "edges must be sorted by (target, source) without duplicates"


def features(num, dim=6, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(num, dim, generator=generator, dtype=torch.float64)


# ----------------------------------------------------------------------------- knn


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("separate_key", [False, True])
@pytest.mark.parametrize("chunk_size", [1, 5, 64, 10_000])
def test_knn_matches_dense_topk(metric, separate_key, chunk_size):
    query = features(70, seed=1)
    key = features(45, seed=2) if separate_key else None
    expected = reference_knn(query, query if key is None else key, 7, metric)
    assert as_pairs(knn(query, key, 7, metric=metric, chunk_size=chunk_size)) == expected


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("chunk_size", [3, 16, 1000])
def test_knn_batched_uneven_segments(metric, chunk_size):
    # Segment 1 has fewer keys than k, segment 2 has queries but no keys, segment 3 no queries.
    batch = batch_from_lengths([5, 1, 20, 0, 13])
    key_batch = batch_from_lengths([7, 3, 0, 9, 30])
    query, key = features(len(batch), seed=3), features(len(key_batch), seed=4)
    expected = reference_knn(query, key, 8, metric, batch, key_batch)
    edge_index = knn(query, key, 8, batch=batch, key_batch=key_batch, metric=metric, chunk_size=chunk_size)
    assert as_pairs(edge_index) == expected


@pytest.mark.parametrize("metric", METRICS)
def test_knn_batched_self_keys(metric):
    batch = batch_from_lengths([4, 0, 11, 1, 25])
    query = features(len(batch), seed=5)
    expected = reference_knn(query, query, 6, metric, batch, batch)
    assert as_pairs(knn(query, k=6, batch=batch, metric=metric, chunk_size=9)) == expected


@pytest.mark.parametrize("k", [1, 3, 40, 150])
def test_knn_wide_key_ranges(k):
    # Wide rows take the grouped two-stage selection for small k, a plain topk for large k.
    query, key = features(30, seed=6), features(2003, seed=7)
    assert as_pairs(knn(query, key, k, chunk_size=8)) == reference_knn(query, key, k, "dot")
    batch, key_batch = batch_from_lengths([10, 20]), batch_from_lengths([1500, 503])
    expected = reference_knn(query, key, k, "l2", batch, key_batch)
    assert as_pairs(knn(query, key, k, batch=batch, key_batch=key_batch, metric="l2", chunk_size=16)) == expected


@pytest.mark.parametrize("separate_key", [False, True])
def test_knn_l2_is_exact_for_float32_features_with_a_large_offset(separate_key):
    # Segments far apart, each clustered tightly: the expansion 2 q.k - ||k||^2 of uncentred
    # float32 features cancels to noise here (0.2 % of self-neighbours found, stop 31).
    batch = batch_from_lengths([40, 60])
    offsets = torch.tensor([1000.0, -3000.0])[batch].unsqueeze(1)
    query = (offsets + 0.1 * features(100, seed=6)).float()
    key = (offsets + 0.1 * features(100, seed=7)).float() if separate_key else None
    expected = reference_knn(query.double(), (query if key is None else key).double(), 5, "l2", batch, batch)
    edge_index = knn(query, key, 5, batch=batch, key_batch=batch if separate_key else None, metric="l2")
    assert as_pairs(edge_index) == expected


@pytest.mark.parametrize("metric", METRICS)
def test_knn_without_loop_excludes_self_even_when_k_exceeds_the_segment(metric):
    # With k past a segment's size, topk reaches masked columns, the self column among them.
    batch = batch_from_lengths([2, 7])
    edge_index = knn(features(9, seed=8), None, 16, batch=batch, metric=metric, loop=False)
    assert not bool((edge_index[0] == edge_index[1]).any())
    assert edge_index.size(1) == 2 * 1 + 7 * 6  # every other node of its segment


def test_knn_identical_for_all_chunk_sizes():
    batch = batch_from_lengths([40, 3, 0, 90, 17, 50])
    query = features(len(batch), dim=8, seed=8).float()
    results = [knn(query, None, 9, batch=batch, metric="cosine", chunk_size=size) for size in (1, 7, 32, 100, 1000)]
    for result in results[1:]:
        assert torch.equal(result, results[0])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_knn_half_precision_scores_do_not_overflow(dtype):
    query = (features(64, dim=16, seed=11) * 300).to(dtype)  # |q|^2 ~ 1e6 > float16's 65504
    assert knn(query, None, 1, metric="l2").tolist() == knn(query.float(), None, 1, metric="l2").tolist()
    assert knn(query, None, 1, metric="l2")[0].tolist() == list(range(64))  # each query its own nearest key


@pytest.mark.parametrize("metric", METRICS)
def test_knn_huge_float32_features_keep_their_ranks(metric):
    query, key = [(features(40, dim=8, seed=s) * 1e19).float() for s in (12, 13)]  # q.k ~ 1e38 * 8: past float32 max
    batch = batch_from_lengths([25, 15])
    found = knn(query, key, 4, batch=batch, key_batch=batch, metric=metric)
    assert as_pairs(found) == reference_knn(query.double(), key.double(), 4, metric, batch, batch)


@pytest.mark.parametrize("metric", METRICS)
def test_knn_loop(metric):
    query, key = features(33, seed=9), features(33, seed=10)
    batch = batch_from_lengths([1, 12, 20])
    without_self = knn(query, None, 5, batch=batch, metric=metric, loop=False, chunk_size=4)
    assert as_pairs(without_self) == reference_knn(query, query, 5, metric, batch, batch, loop=False)
    assert not bool((without_self[0] == without_self[1]).any())
    separate = knn(query, key, 5, metric=metric, loop=False, chunk_size=4)
    assert as_pairs(separate) == reference_knn(query, key, 5, metric, loop=False)
    if metric != "dot":
        with_self = knn(query, None, 5, metric=metric)
        assert set(range(33)) <= {i for j, i in as_pairs(with_self) if i == j}


def test_knn_output_format():
    batch = batch_from_lengths([3, 9, 14])
    query = features(len(batch), seed=11).float().requires_grad_()
    edge_index = knn(query, None, 4, batch=batch)
    assert edge_index.dtype == torch.int64 and not edge_index.requires_grad
    assert_sorted_unique(edge_index)
    assert torch.bincount(edge_index[1]).tolist() == [3] * 3 + [4] * 23
    assert bool((batch[edge_index[0]] == batch[edge_index[1]]).all())


def test_knn_empty_inputs():
    assert knn(features(0), None, 3).shape == (2, 0)
    assert knn(features(4), features(0), 3).shape == (2, 0)
    batch, key_batch = torch.zeros(4, dtype=torch.long), torch.zeros(0, dtype=torch.long)
    assert knn(features(4), features(0), 3, batch=batch, key_batch=key_batch).shape == (2, 0)


def test_knn_bad_inputs():
    query = features(10)
    with pytest.raises(TypeError, match="loop must be a bool"):
        knn(query, None, 2, loop="no")
    with pytest.raises(ValueError, match="query"):
        knn(query[0], None, 2)
    with pytest.raises(TypeError, match="query"):
        knn(torch.ones(10, 6, dtype=torch.long), None, 2)
    with pytest.raises(ValueError, match="finite"):
        knn(query.clone().fill_(float("nan")), None, 2)
    with pytest.raises(TypeError, match="k"):
        knn(query)
    with pytest.raises(ValueError, match="k must be >= 1"):
        knn(query, None, 0)
    with pytest.raises(TypeError, match="k must be an int"):
        knn(query, None, 2.5)
    with pytest.raises(ValueError, match="metric"):
        knn(query, None, 2, metric="manhattan")
    with pytest.raises(ValueError, match="chunk_size"):
        knn(query, None, 2, chunk_size=0)
    with pytest.raises(ValueError, match="D=6"):
        knn(query, features(10, dim=5), 2)
    with pytest.raises(ValueError, match="batch must have shape"):
        knn(query, None, 2, batch=torch.zeros(9, dtype=torch.long))
    with pytest.raises(ValueError, match="key_batch must have shape"):
        knn(query, features(7), 2, batch=torch.zeros(10, dtype=torch.long), key_batch=torch.zeros(6, dtype=torch.long))
    with pytest.raises(ValueError, match="sorted"):
        knn(query, None, 2, batch=torch.tensor([1, 0] * 5))
    with pytest.raises(TypeError, match="batch"):
        knn(query, None, 2, batch=torch.zeros(10))
    with pytest.raises(ValueError, match="together"):
        knn(query, features(7), 2, batch=torch.zeros(10, dtype=torch.long))
    with pytest.raises(ValueError, match="loop=False"):
        knn(query, features(7), 2, loop=False)


# ----------------------------------------------------------------------------- LSH


def lsh_reference(query, k, buckets, chunk_size, batch, loop):
    """Sorted [j, i] of the documented LSH semantics, by loops over nodes."""
    num_nodes = query.size(0)
    segment = [0] * num_nodes if batch is None else batch.tolist()
    candidates = [set() for _ in range(num_nodes)]
    for hash_buckets in buckets.tolist():
        for seg in set(segment):
            members = sorted((hash_buckets[i], i) for i in range(num_nodes) if segment[i] == seg)
            chunks = [[i for _, i in members[a : a + chunk_size]] for a in range(0, len(members), chunk_size)]
            for c, chunk in enumerate(chunks):
                window = chunk + (chunks[c - 1] if c > 0 else [])
                for i in chunk:
                    candidates[i].update(window)
    edges = []
    for i in range(num_nodes):
        if not loop:
            candidates[i].discard(i)
        chosen = sorted(candidates[i])
        if k is not None:
            cosine = {j: float(query[i] @ query[j] / (query[i].norm() * query[j].norm())) for j in chosen}
            chosen = sorted(sorted(chosen, key=lambda j: -cosine[j])[:k])
        edges += [[j, i] for j in chosen]
    return edges


def test_lsh_buckets_definition():
    query = features(50, dim=5, seed=12)
    buckets = lsh_buckets(query, 6, num_hashes=3, generator=torch.Generator().manual_seed(3))
    rotations = torch.randn((3, 5, 3), generator=torch.Generator().manual_seed(3)).double()
    expected = torch.stack([torch.cat([query @ r, -(query @ r)], dim=1).argmax(dim=1) for r in rotations])
    assert buckets.dtype == torch.int64 and buckets.shape == (3, 50)
    assert torch.equal(buckets, expected)
    assert torch.equal(lsh_buckets(3.0 * query, 6, num_hashes=3, generator=torch.Generator().manual_seed(3)), buckets)


@pytest.mark.parametrize("k", [None, 1, 3])
@pytest.mark.parametrize("loop", [True, False])
def test_lsh_knn_matches_loop_reference(k, loop):
    batch = batch_from_lengths([9, 0, 1, 23, 6])
    query = features(len(batch), seed=13)
    options = dict(num_hashes=3, num_buckets=4, chunk_size=4, batch=batch, loop=loop)
    edge_index = lsh_knn(query, k, generator=torch.Generator().manual_seed(5), **options)
    buckets = lsh_buckets(query, 4, num_hashes=3, generator=torch.Generator().manual_seed(5))
    assert as_pairs(edge_index) == lsh_reference(query, k, buckets, 4, batch, loop)


def test_lsh_knn_reproducible_and_sorted():
    query = features(300, dim=8, seed=14).float()

    def run(seed):
        return lsh_knn(query, None, num_hashes=2, chunk_size=8, generator=torch.Generator().manual_seed(seed))

    first = run(0)
    assert torch.equal(first, run(0))
    assert not torch.equal(first, run(1))
    assert_sorted_unique(first)
    assert bool((first[0] == first[1]).sum() == 300)
    top = lsh_knn(query, 5, num_hashes=2, chunk_size=8, generator=torch.Generator().manual_seed(0))
    assert_sorted_unique(top)
    assert torch.bincount(top[1]).tolist() == [5] * 300
    assert set(map(tuple, as_pairs(top))) <= set(map(tuple, as_pairs(first)))


@pytest.mark.parametrize("k", [None, 3])
def test_lsh_blocking_does_not_change_the_result(monkeypatch, k):
    query = features(100, seed=18)

    def run():
        return lsh_knn(query, k, num_hashes=2, num_buckets=10, chunk_size=5, generator=torch.Generator().manual_seed(1))

    whole = run()
    monkeypatch.setattr(dynamic, "_MERGE_ROWS", 7)
    monkeypatch.setattr(dynamic, "_PROJECTION_BLOCK", 60)
    assert torch.equal(run(), whole)


def test_lsh_knn_batch_equals_separate_segments():
    lengths = [17, 0, 40, 5]
    batch = batch_from_lengths(lengths)
    query = features(len(batch), seed=15)
    options = dict(num_hashes=3, num_buckets=8, chunk_size=6)
    batched = lsh_knn(query, 4, batch=batch, generator=torch.Generator().manual_seed(7), **options)
    assert bool((batch[batched[0]] == batch[batched[1]]).all())
    pieces, offset = [], 0
    for length in lengths:
        part = lsh_knn(query[offset : offset + length], 4, generator=torch.Generator().manual_seed(7), **options)
        pieces.append(part + offset)
        offset += length
    assert torch.equal(batched, torch.cat(pieces, dim=1))


def test_lsh_knn_whole_segment_chunks_equal_exact_cosine():
    batch = batch_from_lengths([12, 30, 7])
    query = features(len(batch), seed=16)
    approx = lsh_knn(query, 5, num_hashes=1, chunk_size=30, batch=batch, generator=torch.Generator().manual_seed(0))
    assert torch.equal(approx, knn(query, None, 5, batch=batch, metric="cosine"))


def test_lsh_knn_recall_on_clusters():
    generator = torch.Generator().manual_seed(17)
    num_clusters, size, dim, k = 32, 16, 32, 8
    centres = torch.nn.functional.normalize(torch.randn(num_clusters, dim, generator=generator), dim=1)
    points = centres.repeat_interleave(size, dim=0) + 0.05 * torch.randn(num_clusters * size, dim, generator=generator)
    num_nodes = points.size(0)
    exact = knn(points, None, k, metric="cosine")
    approx = lsh_knn(points, k, num_hashes=8, chunk_size=32, generator=torch.Generator().manual_seed(0))
    # Features ignored (e.g. a broken bucketing) would recall about 2 * 32 / 512 = 0.125.
    assert recall_at_k(approx, exact, num_nodes) >= 0.9


def test_lsh_bad_inputs():
    query = features(10)
    with pytest.raises(TypeError, match="loop must be a bool"):
        lsh_knn(query, 2, loop="no")
    with pytest.raises(TypeError, match="generator must be a torch.Generator"):
        lsh_buckets(query, 2, generator=3)
    with pytest.raises(ValueError, match="even"):
        lsh_knn(query, 2, num_buckets=5)
    with pytest.raises(ValueError, match="num_buckets"):
        lsh_buckets(query, 0)
    with pytest.raises(ValueError, match="k must be >= 1"):
        lsh_knn(query, 0)
    with pytest.raises(ValueError, match="chunk_size"):
        lsh_knn(query, 2, chunk_size=0)
    with pytest.raises(ValueError, match="num_hashes"):
        lsh_knn(query, 2, num_hashes=0)
    with pytest.raises(ValueError, match="batch must have shape"):
        lsh_knn(query, 2, batch=torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="query"):
        lsh_knn(query[0], 2)
    assert lsh_knn(features(0), 2).shape == (2, 0)


# ----------------------------------------------------------------------------- recall


def test_recall_at_k():
    exact = torch.tensor([[0, 1, 2, 3], [1, 1, 2, 0]])
    approx = torch.tensor([[1, 3, 2, 0], [1, 0, 0, 2]])
    # exact pairs (j, i): (0,1) (1,1) (2,2) (3,0); approx has (1,1) and (3,0).
    assert math.isclose(recall_at_k(approx, exact, 4), 0.5)
    assert recall_at_k(exact, exact, 4) == 1.0
    assert recall_at_k(approx, torch.empty(2, 0, dtype=torch.long), 4) == 1.0
    with pytest.raises(ValueError, match="exact_edge_index"):
        recall_at_k(approx[:, :1], exact, 3)
    with pytest.raises(ValueError, match="approx_edge_index"):
        recall_at_k(approx[0], exact, 4)
    with pytest.raises(TypeError, match="approx_edge_index"):
        recall_at_k(approx.float(), exact, 4)


def test_tiny_zero_and_half_precision_rows_keep_their_cosine_neighbours():
    query = torch.randn(6, 3, generator=torch.Generator().manual_seed(0))
    scaled = query.clone()
    scaled[5] = 1e-14 * query[0]  # below normalize's 1e-12 floor: its cosine with query 0 is still 1
    assert knn(scaled, None, 1, metric="cosine", loop=False)[0, 0].item() == 5
    with_zero = torch.randn(8, 5, generator=torch.Generator().manual_seed(1))
    with_zero[3] = 0  # float16 normalises it to NaN, which topk ranked first
    found = lsh_knn(with_zero.half(), 3, num_hashes=1, chunk_size=8, generator=torch.Generator().manual_seed(0))
    assert torch.bincount(found[1]).tolist() == [3] * 8


def test_huge_segment_ids_and_featureless_rows_cost_nothing_extra():
    batch = torch.full((10,), 10**12)  # sizes follow the nodes, not the largest id
    assert torch.equal(knn(features(10), None, 2, batch=batch), knn(features(10), None, 2))
    assert torch.equal(lsh_knn(features(10).float(), 2, batch=batch, generator=torch.Generator().manual_seed(0)),
                       lsh_knn(features(10).float(), 2, generator=torch.Generator().manual_seed(0)))
    assert knn(torch.empty(5, 0), None, 2).shape == (2, 10)
