"""Benchmark builders' pieces that need no dataset: metrics and positional encodings."""
import pytest
import torch
from torch_geometric.data import Data

from graph_sparse_attn.data.benchmarks import _pe_spec, _with_pe, accuracy, positional_encoding


def path_graph(n):
    line = torch.stack([torch.arange(n - 1), torch.arange(1, n)])
    return Data(x=torch.zeros(n, 1), edge_index=torch.cat([line, line.flip(0)], 1), num_nodes=n)


def test_accuracy_is_the_fraction_of_correct_argmaxes():
    logits = torch.tensor([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7], [0.6, 0.4]])  # argmaxes 1, 0, 1, 0
    assert accuracy(logits, torch.tensor([1, 1, 0, 0])) == pytest.approx(2 / 4)
    assert accuracy(logits, torch.tensor([1, 0, 1, 0])) == 1.0
    with pytest.raises(ValueError, match="target \\[B\\]"):  # [B, 1] broadcast to a [B, B] comparison
        accuracy(logits, torch.tensor([[1], [0], [1], [0]]))


def test_laplacian_encoding_of_a_directed_edge_list_is_that_of_the_graph_both_ways():
    line = torch.stack([torch.arange(5), torch.arange(1, 6)])
    one_way = positional_encoding("lap", 3)(Data(edge_index=line, num_nodes=6)).pe
    both_ways = positional_encoding("lap", 3)(path_graph(6)).pe
    torch.testing.assert_close(one_way.abs(), both_ways.abs())  # eigenvectors up to sign


def test_rwse_is_the_diagonal_of_random_walk_powers():
    data = path_graph(5)
    pe = positional_encoding("rwse", 4)(data).pe
    adjacency = torch.zeros(5, 5)
    adjacency[data.edge_index[1], data.edge_index[0]] = 1
    walk = adjacency / adjacency.sum(1, keepdim=True)
    expected = torch.stack([torch.linalg.matrix_power(walk, k).diagonal() for k in range(1, 5)], dim=1)
    torch.testing.assert_close(pe, expected)
    assert not hasattr(data, "pe"), "the input graph is left as it was"


def test_laplacian_eigenvectors_are_padded_for_small_graphs():
    big, small = positional_encoding("lap", 3)(path_graph(6)), positional_encoding("lap", 3)(path_graph(2))
    assert big.pe.shape == (6, 3) and small.pe.shape == (2, 3) and small.pe.dtype == torch.float32
    assert torch.equal(small.pe[:, 1:], torch.zeros(2, 2))
    # each column is an eigenvector of the normalised Laplacian I - D^-1/2 A D^-1/2 of the path
    adjacency = torch.zeros(6, 6, dtype=torch.float64)
    adjacency[path_graph(6).edge_index[1], path_graph(6).edge_index[0]] = 1
    scale = adjacency.sum(1).rsqrt()
    laplacian = torch.eye(6, dtype=torch.float64) - scale[:, None] * adjacency * scale[None, :]
    vectors = big.pe.double()
    ratios = (laplacian @ vectors) / vectors
    assert torch.allclose(ratios, ratios[:1].expand_as(ratios), atol=1e-4)  # L v = λ v, column by column
    assert torch.allclose(vectors.norm(dim=0), torch.ones(3, dtype=torch.float64), atol=1e-5)
    # ... and they are the 3 of smallest eigenvalue after the trivial one (λ = 0, eigenvector ∝ √deg), in order
    eigenvalues = (vectors * (laplacian @ vectors)).sum(0)
    torch.testing.assert_close(eigenvalues, torch.linalg.eigvalsh(laplacian)[1:4], atol=1e-4, rtol=0)


def test_encoding_a_dataset_is_seeded_and_leaves_the_global_rng_alone():
    graphs = [path_graph(n) for n in (4, 7, 9)]
    state = torch.get_rng_state()
    first, again = _with_pe(graphs, ("lap", 2), seed=1), _with_pe(graphs, ("lap", 2), seed=1)
    assert torch.equal(torch.get_rng_state(), state)
    assert all(torch.equal(a.pe, b.pe) for a, b in zip(first, again))
    subset = first[torch.tensor([2, 0])]  # indexed like a PyG dataset, by a split's index tensor
    assert [data.num_nodes for data in subset] == [9, 4] and torch.equal(subset[1].pe, first[0].pe)


def test_laplacian_encoding_of_large_graphs_repeats_under_its_seed():
    # From 100 nodes PyG's solver is ARPACK, whose own random start flipped eigenvector signs
    # between two calls with the same seed.
    graphs = [path_graph(150), path_graph(120)]
    first, again = _with_pe(graphs, ("lap", 4), seed=0), _with_pe(graphs, ("lap", 4), seed=0)
    assert all(torch.equal(a.pe, b.pe) for a, b in zip(first, again))
    # A dimension beyond what ARPACK can find is zero-padded, as for small graphs.
    wide = positional_encoding("lap", 110)(path_graph(105)).pe
    assert wide.shape == (105, 110) and torch.equal(wide[:, 103:], torch.zeros(105, 7)) and wide[:, :103].abs().sum(0).all()


@pytest.mark.parametrize("kind,dim,match", [("spectral", 4, "pe kind must be one of .*'spectral'"),
                                            ("rwse", 0, "pe dim must be a positive int, got 0"),
                                            ("lap", True, "pe dim must be a positive int, got True")])
def test_bad_encodings_are_named(kind, dim, match):
    with pytest.raises(ValueError, match=match):
        positional_encoding(kind, dim)
    with pytest.raises(ValueError, match=match):  # as a dataset builder's pe=(kind, dim)
        _pe_spec((kind, dim))


def test_encodings_are_cached_beside_the_processed_data(tmp_path, monkeypatch):
    from graph_sparse_attn.data import benchmarks

    graphs = [path_graph(n) for n in (4, 7, 9)]
    first = _with_pe(graphs, ("rwse", 3), seed=0, cache_dir=tmp_path)
    assert (tmp_path / "pe_rwse3_seed0.pt").exists()
    monkeypatch.setattr(benchmarks, "positional_encoding", lambda *a: pytest.fail("recomputed despite the cache"))
    again = _with_pe(graphs, ("rwse", 3), seed=0, cache_dir=tmp_path)
    assert all(torch.equal(a.pe, b.pe) and torch.equal(a.pe, positional_encoding("rwse", 3)(g).pe)
               for a, b, g in zip(first, again, graphs))
    monkeypatch.undo()
    rewired = [path_graph(n) for n in (4, 7, 9)]
    rewired[1].edge_index = rewired[1].edge_index[:, :2]  # same sizes, other edges: recomputed too
    assert torch.equal(_with_pe(rewired, ("rwse", 3), seed=0, cache_dir=tmp_path)[1].pe, positional_encoding("rwse", 3)(rewired[1]).pe)
    other = [path_graph(n) for n in (5, 7, 9)]  # other graphs: the stale cache is recomputed, not misapplied
    assert torch.equal(_with_pe(other, ("rwse", 3), seed=0, cache_dir=tmp_path)[0].pe, positional_encoding("rwse", 3)(other[0]).pe)
