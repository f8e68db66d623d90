"""Positional patterns against brute-force definitions written with plain loops."""
import itertools
import math
from collections import Counter

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from graph_sparse_attn.patterns.positional import (
    bigbird,
    block_local,
    fixed,
    global_tokens,
    log_sparse,
    longformer,
    random,
    sliding_window,
    strided,
)

# Segment lengths of the batches tested; 0 leaves a sequence id unused, None means no batch.
LAYOUTS = [None, [13], [5, 1, 9, 0, 3, 12]]
NO_BATCH_SIZES = [0, 1, 2, 17]


def batch_from_lengths(lengths):
    return torch.cat([torch.full((n,), g, dtype=torch.long) for g, n in enumerate(lengths)])


def cases():
    """(num_nodes, batch) pairs covering no batch, one sequence and uneven sequences."""
    out = [(n, None) for n in NO_BATCH_SIZES]
    out += [(sum(lengths), batch_from_lengths(lengths)) for lengths in LAYOUTS if lengths is not None]
    return out


def positions(num_nodes, batch):
    """Per node (segment id, position, segment length), by loops."""
    ids = [0] * num_nodes if batch is None else batch.tolist()
    out = []
    for i in range(num_nodes):
        start = ids.index(ids[i])
        length = ids.count(ids[i])
        out.append((ids[i], i - start, length))
    return out


def reference(num_nodes, batch, rule):
    """Sorted list of [j, i] with j, i in the same segment and rule(p_i, p_j, L) true."""
    seg = positions(num_nodes, batch)
    edges = []
    for i in range(num_nodes):
        for j in range(num_nodes):
            if seg[i][0] == seg[j][0] and rule(seg[i][1], seg[j][1], seg[i][2]):
                edges.append([j, i])
    return edges


def assert_pattern(edge_index, expected):
    assert edge_index.dtype == torch.int64
    assert edge_index.dim() == 2 and edge_index.size(0) == 2
    assert edge_index.t().tolist() == expected  # same edges, sorted by (target, source), no repeats


def is_power_of_two(x):
    return x > 0 and x & (x - 1) == 0


@pytest.mark.parametrize("num_nodes,batch", cases())
@pytest.mark.parametrize(
    "window,dilation,is_causal", [(0, 1, False), (1, 1, False), (2, 1, True), (2, 3, False), (3, 2, True), (40, 1, False)]
)
def test_sliding_window_matches_definition(num_nodes, batch, window, dilation, is_causal):
    def rule(pi, pj, length):
        return abs(pi - pj) <= window * dilation and (pi - pj) % dilation == 0 and (not is_causal or pj <= pi)

    out = sliding_window(num_nodes, window, dilation=dilation, causal=is_causal, batch=batch)
    assert_pattern(out, reference(num_nodes, batch, rule))


@pytest.mark.parametrize("num_nodes,batch", cases())
@pytest.mark.parametrize("stride,is_causal", [(1, True), (3, True), (3, False), (4, False), (20, True), (20, False),
                                              (2**63 - 1, False)])  # pos + stride once overflowed int64
def test_strided_matches_definition(num_nodes, batch, stride, is_causal):
    def rule(pi, pj, length):
        return ((pi - pj) % stride == 0 or abs(pi - pj) < stride) and (not is_causal or pj <= pi)

    assert_pattern(strided(num_nodes, stride, causal=is_causal, batch=batch), reference(num_nodes, batch, rule))


@pytest.mark.parametrize("num_nodes,batch", cases())
@pytest.mark.parametrize(
    "block,num_summary,is_causal", [(1, 1, True), (3, 1, True), (4, 2, False), (4, 2, True), (5, 0, False), (3, 3, False), (4, 1, False)]
)
def test_fixed_matches_definition(num_nodes, batch, block, num_summary, is_causal):
    def rule(pi, pj, length):
        same_block = pj // block == pi // block
        summary = pj % block >= block - num_summary
        return (same_block or summary) and (not is_causal or pj <= pi)

    out = fixed(num_nodes, block, num_summary=num_summary, causal=is_causal, batch=batch)
    assert_pattern(out, reference(num_nodes, batch, rule))


@pytest.mark.parametrize("num_nodes,batch", cases())
@pytest.mark.parametrize("is_causal", [True, False])
def test_log_sparse_matches_definition(num_nodes, batch, is_causal):
    def rule(pi, pj, length):
        return pi == pj or is_power_of_two(pi - pj) or (not is_causal and is_power_of_two(pj - pi))

    assert_pattern(log_sparse(num_nodes, causal=is_causal, batch=batch), reference(num_nodes, batch, rule))


@pytest.mark.parametrize("num_nodes,batch", cases())
@pytest.mark.parametrize("block_size", [1, 3, 4, 50])
def test_block_local_matches_definition(num_nodes, batch, block_size):
    def rule(pi, pj, length):
        return pi // block_size == pj // block_size

    assert_pattern(block_local(num_nodes, block_size, batch=batch), reference(num_nodes, batch, rule))


@pytest.mark.parametrize("num_nodes,batch", cases())
@pytest.mark.parametrize("indices", [[0], [2, 0, 2], [4, 11], [], 1, torch.tensor([3, 100])])
def test_global_tokens_matches_definition(num_nodes, batch, indices):
    hubs = set(indices.tolist() if isinstance(indices, torch.Tensor) else [indices] if isinstance(indices, int) else indices)

    def rule(pi, pj, length):
        return pi in hubs or pj in hubs

    assert_pattern(global_tokens(num_nodes, indices, batch=batch), reference(num_nodes, batch, rule))


@pytest.mark.parametrize("num_nodes,batch", cases())
@pytest.mark.parametrize("window,hubs,dilation", [(1, [0], 1), (2, [0, 4], 2), (0, [3], 1), (3, [1, 2, 7], 3), (2, [], 1)])
def test_longformer_is_window_plus_global(num_nodes, batch, window, hubs, dilation):
    def rule(pi, pj, length):
        in_window = abs(pi - pj) <= window * dilation and (pi - pj) % dilation == 0
        return in_window or pi in hubs or pj in hubs

    out = longformer(num_nodes, window, hubs, dilation=dilation, batch=batch)
    assert_pattern(out, reference(num_nodes, batch, rule))


@pytest.mark.parametrize("num_nodes,batch", cases())
@pytest.mark.parametrize("window,hubs,num_random", [(1, [0], 2), (0, [2, 5], 3), (2, [], 4), (1, [1], 0)])
def test_bigbird_is_union_of_window_global_and_the_same_random_draws(num_nodes, batch, window, hubs, num_random):
    def rule(pi, pj, length):
        return abs(pi - pj) <= window or pi in hubs or pj in hubs

    expected = set(map(tuple, reference(num_nodes, batch, rule)))
    draws = random(num_nodes, num_random, generator=torch.Generator().manual_seed(5), batch=batch)
    expected |= set(map(tuple, draws.t().tolist()))
    out = bigbird(num_nodes, window, hubs, num_random, generator=torch.Generator().manual_seed(5), batch=batch)
    assert_pattern(out, [list(e) for e in sorted(expected, key=lambda e: (e[1], e[0]))])


@pytest.mark.parametrize("num_nodes,batch", cases())
@pytest.mark.parametrize("num_random", [0, 1, 3, 20, 2**40])  # 2**40: whole sequences, without 2**40 draws per token
def test_random_draws_distinct_sources_from_the_own_segment(num_nodes, batch, num_random):
    out = random(num_nodes, num_random, generator=torch.Generator().manual_seed(0), batch=batch)
    seg = positions(num_nodes, batch)
    assert out.dtype == torch.int64
    by_target = {i: [] for i in range(num_nodes)}
    for j, i in out.t().tolist():
        by_target[i].append(j)
    assert sum(len(v) for v in by_target.values()) == out.size(1)
    for i, sources in by_target.items():
        assert sources == sorted(set(sources))  # ascending, distinct
        assert len(sources) == min(num_random, seg[i][2])
        assert all(seg[j][0] == seg[i][0] for j in sources)
    assert out[1].tolist() == sorted(out[1].tolist())


def test_random_is_reproducible_and_seed_dependent():
    a = random(200, 4, generator=torch.Generator().manual_seed(1))
    b = random(200, 4, generator=torch.Generator().manual_seed(1))
    c = random(200, 4, generator=torch.Generator().manual_seed(2))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_random_subsets_are_uniform():
    # 3000 sequences of length 6, 2 sources per token: each of the 15 subsets is equally likely.
    length, num_random, sequences = 6, 2, 3000
    batch = torch.arange(sequences).repeat_interleave(length)
    out = random(batch.numel(), num_random, generator=torch.Generator().manual_seed(0), batch=batch)
    src = (out[0] % length).view(-1, num_random).tolist()
    counts = Counter(tuple(s) for s in src)
    assert set(counts) == set(itertools.combinations(range(length), num_random))
    draws = sequences * length
    expected = draws / len(counts)
    chi2 = sum((c - expected) ** 2 / expected for c in counts.values())
    assert chi2 < 45  # 14 degrees of freedom: p < 1e-4 for a uniform sampler


def test_patterns_accept_int32_batch_and_device():
    batch = torch.tensor([0, 0, 0, 1, 1], dtype=torch.int32)
    assert torch.equal(sliding_window(5, 1, batch=batch), sliding_window(5, 1, batch=batch.long()))
    assert sliding_window(5, 1, device="cpu").device.type == "cpu"
    with pytest.raises(ValueError, match="device"):
        sliding_window(5, 1, batch=batch, device="meta")


def test_sliding_window_size_formula():
    n, w = 1000, 7
    assert sliding_window(n, w).size(1) == n * (2 * w + 1) - w * (w + 1)
    assert sliding_window(n, w, causal=True).size(1) == n * (w + 1) - w * (w + 1) // 2


BUILDERS = {
    "sliding_window": lambda n, **kw: sliding_window(n, 2, **kw),
    "strided": lambda n, **kw: strided(n, 2, **kw),
    "fixed": lambda n, **kw: fixed(n, 2, **kw),
    "log_sparse": lambda n, **kw: log_sparse(n, **kw),
    "block_local": lambda n, **kw: block_local(n, 2, **kw),
    "global_tokens": lambda n, **kw: global_tokens(n, [0], **kw),
    "random": lambda n, **kw: random(n, 2, **kw),
    "longformer": lambda n, **kw: longformer(n, 2, [0], **kw),
    "bigbird": lambda n, **kw: bigbird(n, 2, [0], 2, **kw),
}


@pytest.mark.parametrize("name", BUILDERS)
def test_bad_batch_and_num_nodes_raise(name):
    build = BUILDERS[name]
    with pytest.raises(ValueError, match="num_nodes"):
        build(-1)
    with pytest.raises(TypeError, match="num_nodes"):
        build(4.0)
    with pytest.raises(ValueError, match="sorted"):
        build(4, batch=torch.tensor([0, 1, 0, 1]))
    with pytest.raises(ValueError, match="batch must have shape"):
        build(4, batch=torch.tensor([0, 0, 1]))
    with pytest.raises(ValueError, match="batch must have shape"):
        build(4, batch=torch.zeros(2, 2, dtype=torch.long))
    with pytest.raises(TypeError, match="batch"):
        build(4, batch=torch.zeros(4))
    with pytest.raises(ValueError, match="non-negative"):
        build(4, batch=torch.tensor([-1, 0, 0, 0]))


@pytest.mark.parametrize(
    "call,error,match",
    [
        (lambda: sliding_window(5, -1), ValueError, "window"),
        (lambda: sliding_window(5, 1, dilation=0), ValueError, "dilation"),
        (lambda: sliding_window(5, 1.5), TypeError, "window"),
        (lambda: strided(5, 0), ValueError, "stride"),
        (lambda: fixed(5, 0), ValueError, "block"),
        (lambda: fixed(5, 2, num_summary=3), ValueError, "num_summary"),
        (lambda: fixed(5, 2, num_summary=-1), ValueError, "num_summary"),
        (lambda: block_local(5, 0), ValueError, "block_size"),
        (lambda: global_tokens(5, [-1]), ValueError, "indices"),
        (lambda: global_tokens(5, torch.tensor([0.0])), TypeError, "indices"),
        (lambda: global_tokens(5, [[0, 1]]), TypeError, "indices"),
        (lambda: random(5, -2), ValueError, "num_random"),
        (lambda: longformer(5, 1, [-3]), ValueError, "global_indices"),
        (lambda: longformer(5, 1, [0], dilation=0), ValueError, "dilation"),
        (lambda: bigbird(5, 1, [0], -1), ValueError, "num_random"),
        (lambda: random(5, 2, generator=3), TypeError, "generator must be a torch.Generator"),
    ],
)
def test_bad_parameters_raise(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_log_sparse_has_logarithmic_degree():
    n = 1 << 12
    out = log_sparse(n)
    assert out.size(1) <= n * (math.log2(n) + 1)
    assert int(torch.bincount(out[1]).max()) == int(math.log2(n)) + 1


@settings(max_examples=60, deadline=None)
@given(
    lengths=st.lists(st.integers(0, 12), min_size=1, max_size=5),
    window=st.integers(0, 4),
    dilation=st.integers(1, 3),
    hubs=st.lists(st.integers(0, 13), max_size=3),
    sequence_ids=st.integers(1, 1000),
)
def test_longformer_matches_definition_on_random_batches(lengths, window, dilation, hubs, sequence_ids):
    # Sequence ids may skip values (sequence_ids scales them), as long as they are sorted.
    batch = batch_from_lengths(lengths) * sequence_ids

    def rule(pi, pj, length):
        in_window = abs(pi - pj) <= window * dilation and (pi - pj) % dilation == 0
        return in_window or pi in hubs or pj in hubs

    out = longformer(sum(lengths), window, hubs, dilation=dilation, batch=batch)
    assert_pattern(out, reference(sum(lengths), batch, rule))


@pytest.mark.parametrize("build", [lambda c: sliding_window(4, 1, causal=c), lambda c: strided(4, 2, causal=c),
                                   lambda c: fixed(4, 2, causal=c), lambda c: log_sparse(4, causal=c)])
def test_causal_must_be_a_bool(build):
    with pytest.raises(TypeError, match="causal must be a bool"):
        build("false")  # a truthy string: silently causal before
    with pytest.raises(ValueError, match="must be < 2\\*\\*63"):
        sliding_window(5, 2**70)
