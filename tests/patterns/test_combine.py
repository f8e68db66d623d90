"""Set operations and conversions against Python sets and loops."""
import networkx as nx
import numpy as np
import pytest
import torch

from graph_sparse_attn.patterns.combine import (
    causal,
    from_dense_mask,
    from_networkx,
    intersection,
    sort_and_dedup,
    to_dense_mask,
    to_networkx,
    union,
)


def random_edges(num_edges, num_src, num_dst, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.stack([torch.randint(0, num_src, (num_edges,), generator=g), torch.randint(0, num_dst, (num_edges,), generator=g)])


def sorted_pairs(pairs):
    """[[j, i], ...] sorted by (target i, source j), without repeats."""
    return [list(p) for p in sorted(set(map(tuple, pairs)), key=lambda p: (p[1], p[0]))]


@pytest.mark.parametrize("num_edges,num_src,num_dst", [(0, 3, 3), (1, 1, 1), (50, 7, 7), (200, 5, 11), (300, 13, 4)])
def test_sort_and_dedup_matches_sorted_set(num_edges, num_src, num_dst):
    edges = random_edges(num_edges, num_src, num_dst, seed=num_edges)
    out = sort_and_dedup(edges, (num_src, num_dst))
    assert out.dtype == torch.int64
    assert out.t().tolist() == sorted_pairs(edges.t().tolist())
    assert torch.equal(sort_and_dedup(out, (num_src, num_dst)), out)  # already coalesced: unchanged
    assert torch.equal(sort_and_dedup(edges), sort_and_dedup(edges, (num_src, num_dst)))  # inferred sizes
    if num_src == num_dst:
        assert torch.equal(sort_and_dedup(edges.int(), num_src), out)


def test_sort_and_dedup_drops_repeats_of_sorted_input():
    assert sort_and_dedup(torch.tensor([[0, 0, 1], [1, 1, 1]]), 2).t().tolist() == [[0, 1], [1, 1]]


def test_sizes_whose_pair_keys_overflow_int64_are_refused():
    from graph_sparse_attn.ops import CSRPattern
    from graph_sparse_attn.patterns import k_hop

    huge = 2**32  # 2**64 node pairs: the (target, source) keys would wrap around and reorder the pairs
    edges = torch.tensor([[huge, 0], [1, huge]])
    for call in (lambda: sort_and_dedup(edges), lambda: intersection(edges, edges), lambda: k_hop(edges, 2, huge + 1),
                 lambda: CSRPattern.from_edge_index(edges, huge + 1)):
        with pytest.raises(ValueError, match="more node pairs than int64 can number"):
            call()
    assert sort_and_dedup(torch.tensor([[5, 0], [2**24, 3]]), 2**31).t().tolist() == [[0, 3], [5, 2**24]]  # 2**62 pairs still fit


def test_union_and_intersection_match_sets():
    a, b, c = (random_edges(60, 9, 9, seed) for seed in (1, 2, 3))
    sets = [set(map(tuple, e.t().tolist())) for e in (a, b, c)]
    assert union(a, b, c).t().tolist() == sorted_pairs(sets[0] | sets[1] | sets[2])
    assert union(a).t().tolist() == sorted_pairs(sets[0])
    assert union(a, b, num_nodes=9).t().tolist() == sorted_pairs(sets[0] | sets[1])
    assert intersection(a, b).t().tolist() == sorted_pairs(sets[0] & sets[1])
    assert intersection(a, a[:, :0]).size(1) == 0
    small = torch.tensor([[0, 12], [1, 3]])  # indices beyond a's range: sizes are inferred from both
    assert intersection(a, small).t().tolist() == sorted_pairs(sets[0] & {(0, 1), (12, 3)})


def test_causal_keeps_edges_from_the_past_in_order():
    edges = random_edges(100, 10, 10, seed=4)
    expected = [[j, i] for j, i in edges.t().tolist() if j <= i]
    assert causal(edges).t().tolist() == expected


def test_dense_mask_round_trip_and_orientation():
    edges = random_edges(40, 6, 8, seed=5)
    mask = to_dense_mask(edges, (6, 8))
    assert mask.shape == (8, 6) and mask.dtype == torch.bool
    expected = torch.zeros(8, 6, dtype=torch.bool)
    for j, i in edges.t().tolist():
        expected[i][j] = True
    assert torch.equal(mask, expected)
    assert from_dense_mask(mask).t().tolist() == sorted_pairs(edges.t().tolist())
    square = to_dense_mask(torch.tensor([[0], [2]]), 3)
    assert square.shape == (3, 3) and square[2, 0] and square.sum() == 1


def test_networkx_round_trip_and_direction():
    edges = random_edges(30, 8, 8, seed=6)
    graph = to_networkx(edges, 10)
    assert isinstance(graph, nx.DiGraph) and graph.number_of_nodes() == 10
    assert set(graph.edges) == set(map(tuple, edges.t().tolist()))  # (source j, target i)
    assert from_networkx(graph).t().tolist() == sorted_pairs(edges.t().tolist())


def test_from_networkx_undirected_and_relabelled():
    path = nx.path_graph(["a", "b", "c"])
    assert from_networkx(path).t().tolist() == [[1, 0], [0, 1], [2, 1], [1, 2]]
    shuffled = nx.DiGraph()
    shuffled.add_nodes_from([2, 0, 1])
    shuffled.add_edge(2, 0)
    assert from_networkx(shuffled).t().tolist() == [[2, 0]]  # integer labels 0..n-1 are kept
    assert from_networkx(nx.empty_graph(3)).shape == (2, 0)


def test_from_networkx_keeps_numpy_integer_labels():
    graph = nx.DiGraph()
    graph.add_edges_from(np.array([[2, 0], [0, 1]]))  # nodes are numpy integers, inserted 2, 0, 1
    assert from_networkx(graph).t().tolist() == [[2, 0], [0, 1]]


@pytest.mark.parametrize(
    "call,error,match",
    [
        (lambda: sort_and_dedup(torch.tensor([[0, 5], [1, 1]]), 3), ValueError, "sources"),
        (lambda: sort_and_dedup(torch.tensor([[0, 1], [1, 4]]), 3), ValueError, "targets"),
        (lambda: sort_and_dedup(torch.tensor([[0, -1], [1, 1]]), 3), ValueError, "negative"),
        (lambda: sort_and_dedup(torch.zeros(3, 2, dtype=torch.long), 3), ValueError, r"\[2, E\]"),
        (lambda: sort_and_dedup(torch.zeros(2, 2), 3), TypeError, "dtype"),
        (lambda: sort_and_dedup(torch.zeros(2, 2, dtype=torch.long), -1), ValueError, "num_nodes"),
        (lambda: sort_and_dedup(torch.zeros(2, 2, dtype=torch.long), (3, 3, 3)), ValueError, "num_nodes"),
        (lambda: union(), ValueError, "at least one"),
        (lambda: union(torch.zeros(2, 1, dtype=torch.long), torch.zeros(1, 2, dtype=torch.long)), ValueError, r"edge_indices\[1\]"),
        (lambda: intersection([[0], [0]], torch.zeros(2, 1, dtype=torch.long)), TypeError, "a must"),
        (lambda: causal(torch.zeros(2, 2)), TypeError, "dtype"),
        (lambda: to_dense_mask(torch.tensor([[3], [0]]), 3), ValueError, "sources"),
        (lambda: from_dense_mask(torch.zeros(3, 3)), TypeError, "bool"),
        (lambda: from_dense_mask(torch.zeros(3, dtype=torch.bool)), ValueError, "shape"),
        (lambda: to_networkx(torch.tensor([[0], [4]]), 3), ValueError, "targets"),
        (lambda: from_networkx([(0, 1)]), TypeError, "networkx"),
    ],
)
def test_bad_input_raises(call, error, match):
    with pytest.raises(error, match=match):
        call()
