"""Structural patterns against dense matrix powers, loops over nodes, and graph properties."""
import networkx as nx
import pytest
import torch

from graph_sparse_attn.patterns.structural import VirtualNodes, add_virtual_nodes, expander, expander_from_permutations, graph_edges, k_hop


def batch_from_lengths(lengths):
    return torch.cat([torch.full((n,), g, dtype=torch.long) for g, n in enumerate(lengths)])


def random_graph(num_nodes, num_edges, seed, undirected=False):
    g = torch.Generator().manual_seed(seed)
    edges = torch.randint(0, max(num_nodes, 1), (2, num_edges), generator=g)
    return torch.cat([edges, edges.flip(0)], dim=1) if undirected else edges


def dense_edges(matrix):
    """[[j, i], ...] of a 0/1 list matrix[i][j], sorted by (i, j)."""
    return [[j, i] for i, row in enumerate(matrix) for j, v in enumerate(row) if v]


def matmul(a, b):
    n = len(a)
    return [[int(any(a[i][m] and b[m][j] for m in range(n))) for j in range(n)] for i in range(n)]


@pytest.mark.parametrize("num_nodes,num_edges,undirected", [(1, 0, False), (6, 5, False), (9, 12, True), (12, 10, False), (10, 30, True)])
@pytest.mark.parametrize("k", [0, 1, 2, 3, 5])
@pytest.mark.parametrize("self_loops", [True, False])
def test_k_hop_matches_dense_matrix_powers(num_nodes, num_edges, undirected, k, self_loops):
    edges = random_graph(num_nodes, num_edges, seed=num_nodes + num_edges, undirected=undirected)
    adjacency = [[0] * num_nodes for _ in range(num_nodes)]
    for j, i in edges.t().tolist():
        adjacency[i][j] = 1
    reach = [[int(self_loops and i == j) for j in range(num_nodes)] for i in range(num_nodes)]
    power = [[int(i == j) for j in range(num_nodes)] for i in range(num_nodes)]
    for _ in range(k):
        power = matmul(adjacency, power)
        reach = [[r | p for r, p in zip(rr, pr)] for rr, pr in zip(reach, power)]
    out = k_hop(edges, k, num_nodes, self_loops=self_loops)
    assert out.dtype == torch.int64
    assert out.t().tolist() == dense_edges(reach)


def test_k_hop_on_a_long_path_stays_sparse():
    n, k = 5000, 3
    path = torch.stack([torch.arange(n - 1), torch.arange(1, n)])
    path = torch.cat([path, path.flip(0)], dim=1)
    out = k_hop(path, k, n)
    expected_count = sum(min(i, k) + min(n - 1 - i, k) + 1 for i in range(n))
    assert out.size(1) == expected_count
    assert ((out[1] - out[0]).abs() <= k).all()


@pytest.mark.parametrize("self_loops", [False, True])
def test_graph_edges_is_sorted_dedup_copy(self_loops):
    edges = random_graph(7, 30, seed=3)
    pairs = set(map(tuple, edges.t().tolist())) | ({(i, i) for i in range(7)} if self_loops else set())
    expected = [list(p) for p in sorted(pairs, key=lambda p: (p[1], p[0]))]
    assert graph_edges(edges, 7, self_loops=self_loops).t().tolist() == expected


@pytest.mark.parametrize("lengths", [None, [40], [1, 2, 3, 0, 17, 30]])
@pytest.mark.parametrize("degree", [0, 2, 4, 8])
def test_expander_is_symmetric_loop_free_within_graphs(lengths, degree):
    num_nodes = 50 if lengths is None else sum(lengths)
    batch = None if lengths is None else batch_from_lengths(lengths)
    out = expander(num_nodes, degree, generator=torch.Generator().manual_seed(0), batch=batch)
    assert out.dtype == torch.int64
    pairs = out.t().tolist()
    pairs = [tuple(p) for p in pairs]
    assert pairs == sorted(set(pairs), key=lambda p: (p[1], p[0]))
    assert set(pairs) == {(i, j) for j, i in pairs}  # symmetric
    assert all(j != i for j, i in pairs)
    graph_of = [0] * num_nodes if batch is None else batch.tolist()
    assert all(graph_of[j] == graph_of[i] for j, i in pairs)
    assert int(torch.bincount(out[1], minlength=num_nodes).max()) <= degree


def test_expander_has_near_full_degree_and_a_spectral_gap():
    n, degree = 300, 8
    out = expander(n, degree, generator=torch.Generator().manual_seed(1))
    in_degree = torch.bincount(out[1], minlength=n).double()
    assert in_degree.mean() > 0.95 * degree
    adjacency = torch.zeros(n, n, dtype=torch.float64)
    adjacency[out[1], out[0]] = 1.0
    inv_sqrt = in_degree.rsqrt()
    eigenvalues = torch.linalg.eigvalsh(inv_sqrt[:, None] * adjacency * inv_sqrt[None, :])
    assert eigenvalues[-1] == pytest.approx(1.0)
    assert max(abs(eigenvalues[0]), eigenvalues[-2]) < 0.85  # random 8-regular: ~2 sqrt(7) / 8 = 0.66
    assert nx.is_connected(nx.Graph(out.t().tolist()))


def test_expander_is_reproducible():
    a = expander(100, 4, generator=torch.Generator().manual_seed(3))
    b = expander(100, 4, generator=torch.Generator().manual_seed(3))
    c = expander(100, 4, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.parametrize("lengths", [None, [3], [2, 0, 4, 1]])
@pytest.mark.parametrize("num_virtual", [0, 1, 2])
@pytest.mark.parametrize("with_edges", [False, True])
def test_add_virtual_nodes_matches_loops(lengths, num_virtual, with_edges):
    num_nodes = 5 if lengths is None else sum(lengths)
    batch = None if lengths is None else batch_from_lengths(lengths)
    graph_of = [0] * num_nodes if batch is None else batch.tolist()
    num_graphs = 1 if batch is None else len(lengths)
    edges = random_graph(num_nodes, 9, seed=2) if with_edges else None
    out = add_virtual_nodes(num_nodes, num_virtual, edge_index=edges, batch=batch)
    assert isinstance(out, VirtualNodes)
    total = num_nodes + num_graphs * num_virtual
    assert out.num_nodes == total
    expected_batch = graph_of + [g for g in range(num_graphs) for _ in range(num_virtual)]
    assert out.batch.tolist() == expected_batch
    pairs = set() if edges is None else set(map(tuple, edges.t().tolist()))
    for node in range(num_nodes):
        for v in range(num_virtual):
            virtual = num_nodes + graph_of[node] * num_virtual + v
            pairs |= {(node, virtual), (virtual, node)}
    expected = [list(p) for p in sorted(pairs, key=lambda p: (p[1], p[0]))]
    assert out.edge_index.dtype == torch.int64
    assert out.edge_index.t().tolist() == expected


@pytest.mark.parametrize(
    "call,error,match",
    [
        (lambda: k_hop(torch.tensor([[0], [5]]), 2, 3), ValueError, "targets"),
        (lambda: k_hop(torch.tensor([[0], [1]]), -1, 3), ValueError, "k must"),
        (lambda: k_hop(torch.tensor([[0.0], [1.0]]), 1, 3), TypeError, "dtype"),
        (lambda: graph_edges(torch.tensor([[0], [1]]), -2), ValueError, "num_nodes"),
        (lambda: expander(10, 3), ValueError, "even"),
        (lambda: expander(-1, 2), ValueError, "num_nodes"),
        (lambda: expander(4, 2, batch=torch.tensor([1, 0, 0, 0])), ValueError, "sorted"),
        (lambda: expander(4, 2, batch=torch.tensor([0, 0, 0])), ValueError, "batch must have shape"),
        (lambda: add_virtual_nodes(3, -1), ValueError, "num_virtual"),
        (lambda: add_virtual_nodes(3, 1, edge_index=torch.tensor([[3], [0]])), ValueError, "sources"),
        (lambda: add_virtual_nodes(3, 1, batch=torch.tensor([0, 1])), ValueError, "batch must have shape"),
        (lambda: add_virtual_nodes(3, 1, edge_index=[[0], [1]]), TypeError, "edge_index must be a Tensor"),
        (lambda: expander(4, 2, generator="x"), TypeError, "generator must be a torch.Generator"),
        (lambda: k_hop(torch.tensor([[0], [1]]), 2, 3, self_loops="no"), TypeError, "self_loops must be a bool"),
        (lambda: graph_edges(torch.tensor([[0], [1]]), 3, self_loops="no"), TypeError, "self_loops must be a bool"),
        (lambda: expander_from_permutations([torch.tensor([3, 3, 3, 3])], 4), ValueError, "permutations must each hold"),
        (lambda: expander_from_permutations([torch.tensor([0, 1, 2, -1])], 4), ValueError, "permutations must each hold"),
        (lambda: expander_from_permutations([torch.tensor([0, 1, 2, 7])], 4), ValueError, "permutations must each hold"),
    ],
)
def test_bad_input_raises(call, error, match):
    with pytest.raises(error, match=match):
        call()
