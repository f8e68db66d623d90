"""NeighborSampler against brute-force definitions on small random graphs."""
from collections import Counter
from itertools import combinations

import pytest
import torch
from torch_geometric.nn import SAGEConv

from graph_sparse_attn.data.sampling import HUB_FACTOR, NeighborSampler


def random_graph(num_nodes, num_edges, seed):
    """Random multigraph ``[2, E]`` with a few hubs (so fanouts bind) and isolated nodes."""
    generator = torch.Generator().manual_seed(seed)
    source = torch.randint(0, num_nodes, (num_edges,), generator=generator)
    hubs = torch.randint(0, 3, (num_edges // 3,), generator=generator)
    target = torch.cat([hubs, torch.randint(0, num_nodes - 2, (num_edges - hubs.numel(),), generator=generator)])
    return torch.stack([source, target])


# ---------------------------------------------------------------------------- independent references
def in_edges_by_loops(edge_index, num_nodes):
    """``incoming[i]`` = list of edge ids ``e`` with target ``i``, built by a Python loop."""
    incoming = [[] for _ in range(num_nodes)]
    for e, (_, i) in enumerate(edge_index.t().tolist()):
        incoming[i].append(e)
    return incoming


def in_distances_by_bfs(edge_index, num_nodes, seeds):
    """Hop distance from each node to the seed set along reversed edges (``None`` if unreached)."""
    sources_of = [[] for _ in range(num_nodes)]
    for j, i in edge_index.t().tolist():
        sources_of[i].append(j)
    distance = [None] * num_nodes
    frontier = list(seeds)
    for node in frontier:
        distance[node] = 0
    hop = 0
    while frontier:
        hop += 1
        reached = []
        for i in frontier:
            for j in sources_of[i]:
                if distance[j] is None:
                    distance[j] = hop
                    reached.append(j)
        frontier = reached
    return distance


def check_batch_structure(batch, edge_index, num_nodes, num_neighbors, seeds):
    """Assert every documented property of one sampled batch by brute force."""
    incoming = in_edges_by_loops(edge_index, num_nodes)
    edges = edge_index.t().tolist()
    n_id, e_id = batch.n_id.tolist(), batch.e_id.tolist()
    assert batch.batch_size == len(seeds)
    assert n_id[: len(seeds)] == list(seeds)
    assert len(set(n_id)) == len(n_id)
    assert len(set(e_id)) == len(e_id)
    assert batch.num_nodes == len(n_id)
    assert sum(batch.num_sampled_nodes) == len(n_id) and sum(batch.num_sampled_edges) == len(e_id)
    # Relabelling round-trips: local edges map back to the global edges e_id names.
    assert torch.equal(batch.n_id[batch.edge_index], edge_index[:, batch.e_id])

    hop_of = {}
    offset = 0
    for hop, count in enumerate(batch.num_sampled_nodes):
        for node in n_id[offset : offset + count]:
            hop_of[node] = hop
        offset += count
    edge_offset = 0
    for hop, (fanout, count) in enumerate(zip(num_neighbors, batch.num_sampled_edges)):
        hop_edge_ids = e_id[edge_offset : edge_offset + count]
        edge_offset += count
        sampled_per_target = {}
        expected_new, seen_new = [], set()  # sources not seen before, in order of first appearance
        for e in hop_edge_ids:
            j, i = edges[e]
            assert hop_of[i] == hop  # only the hop's frontier is expanded
            assert hop_of[j] <= hop + 1
            sampled_per_target[i] = sampled_per_target.get(i, 0) + 1
            if hop_of[j] == hop + 1 and j not in seen_new:
                seen_new.add(j)
                expected_new.append(j)
        first_new = sum(batch.num_sampled_nodes[: hop + 1])
        assert n_id[first_new : first_new + batch.num_sampled_nodes[hop + 1]] == expected_new
        for node, h in hop_of.items():
            if h == hop:
                degree = len(incoming[node])
                expected = degree if fanout == -1 else min(fanout, degree)
                assert sampled_per_target.get(node, 0) == expected
    last_hop = len(num_neighbors)
    assert all(hop_of[edges[e][1]] < last_hop for e in e_id)


# ---------------------------------------------------------------------------- tests
@pytest.mark.parametrize("num_neighbors", [[3, 2], [1], [0, 4], [5, -1, 2], []])
@pytest.mark.parametrize("seed", [0, 1])
def test_batches_match_brute_force(num_neighbors, seed):
    num_nodes, edge_index = 40, random_graph(40, 200, seed)
    sampler = NeighborSampler(
        edge_index, num_nodes, num_neighbors, batch_size=7, generator=torch.Generator().manual_seed(seed)
    )
    seeds_seen = []
    for batch in sampler:
        seeds = batch.n_id[: batch.batch_size].tolist()
        seeds_seen += seeds
        check_batch_structure(batch, edge_index, num_nodes, num_neighbors, seeds)
    assert seeds_seen == list(range(num_nodes))
    assert len(sampler) == 6


@pytest.mark.parametrize(
    "fanout, degree, path",
    [(2, 2 * HUB_FACTOR, "sorting"), (3, 4, "sorting"), (2, 2 * HUB_FACTOR + 1, "floyd"), (1, HUB_FACTOR + 3, "floyd")],
)
def test_draws_are_uniform_subsets(fanout, degree, path):
    """Many disjoint stars sampled at once: every ``fanout``-subset of a star's in-edges is equally likely."""
    assert (degree > HUB_FACTOR * fanout) == (path == "floyd")  # each branch of the sampler is covered
    num_stars = 4000
    star = torch.arange(num_stars).repeat_interleave(degree)
    edge_index = torch.stack([num_stars + torch.arange(num_stars * degree), star])
    num_nodes = num_stars * (degree + 1)
    sampler = NeighborSampler(edge_index, num_nodes, [fanout], generator=torch.Generator().manual_seed(0))
    batch = sampler.sample(torch.arange(num_stars))
    check_batch_structure(batch, edge_index, num_nodes, [fanout], list(range(num_stars)))
    offsets = (batch.e_id - edge_index[1, batch.e_id] * degree).tolist()
    centres = edge_index[1, batch.e_id].tolist()
    drawn = {}
    for centre, offset in zip(centres, offsets):
        drawn.setdefault(centre, []).append(offset)
    counts = Counter(tuple(sorted(offsets_of_star)) for offsets_of_star in drawn.values())
    all_subsets = list(combinations(range(degree), fanout))
    assert set(counts) <= set(all_subsets) and sum(counts.values()) == num_stars
    expected = num_stars / len(all_subsets)
    chi_square = sum((counts[subset] - expected) ** 2 / expected for subset in all_subsets)
    dof = len(all_subsets) - 1
    assert chi_square < dof + 5 * (2 * dof) ** 0.5


@pytest.mark.parametrize("hops", [1, 2, 3])
def test_full_fanout_is_the_k_hop_in_neighbourhood(hops):
    num_nodes, edge_index = 60, random_graph(60, 150, 3)
    seeds = [5, 0, 17]
    batch = NeighborSampler(edge_index, num_nodes, [-1] * hops).sample(torch.tensor(seeds))
    distance = in_distances_by_bfs(edge_index, num_nodes, seeds)
    expected_nodes = {v for v in range(num_nodes) if distance[v] is not None and distance[v] <= hops}
    expected_edges = {e for e, i in enumerate(edge_index[1].tolist()) if distance[i] is not None and distance[i] < hops}
    assert set(batch.n_id.tolist()) == expected_nodes
    assert set(batch.e_id.tolist()) == expected_edges
    assert batch.e_id.numel() == len(expected_edges)
    check_batch_structure(batch, edge_index, num_nodes, [-1] * hops, seeds)


def test_input_nodes_as_ids_and_mask():
    num_nodes, edge_index = 30, random_graph(30, 100, 4)
    mask = torch.zeros(num_nodes, dtype=torch.bool)
    mask[[2, 3, 11, 19, 29]] = True
    by_mask = NeighborSampler(edge_index, num_nodes, [2], input_nodes=mask, batch_size=2)
    assert len(by_mask) == 3
    assert [b.n_id[: b.batch_size].tolist() for b in by_mask] == [[2, 3], [11, 19], [29]]
    ids = torch.tensor([19, 2, 7])
    by_ids = NeighborSampler(edge_index, num_nodes, [2], input_nodes=ids, batch_size=2)
    assert [b.n_id[: b.batch_size].tolist() for b in by_ids] == [[19, 2], [7]]


def epoch_seeds(sampler):
    return [batch.n_id[: batch.batch_size].tolist() for batch in sampler]


def test_shuffle_is_reproducible_and_covers_each_input_once():
    num_nodes, edge_index = 50, random_graph(50, 200, 5)
    input_nodes = torch.arange(3, 45, 2)

    def make(seed):
        return NeighborSampler(
            edge_index, num_nodes, [3, 2], input_nodes=input_nodes, batch_size=4, shuffle=True,
            generator=torch.Generator().manual_seed(seed),
        )

    first, again, other = make(0), make(0), make(1)
    for _ in range(2):  # two epochs: the same generator seed replays both
        batches, replayed = list(first), list(again)
        for a, b in zip(batches, replayed):
            assert torch.equal(a.n_id, b.n_id) and torch.equal(a.e_id, b.e_id)
        flat = sum((b.n_id[: b.batch_size].tolist() for b in batches), [])
        assert sorted(flat) == input_nodes.tolist()
    assert epoch_seeds(first) != epoch_seeds(other)
    assert epoch_seeds(first) != epoch_seeds(first)  # a new order every epoch
    unshuffled = NeighborSampler(edge_index, num_nodes, [3], input_nodes=input_nodes, batch_size=4)
    assert sum(epoch_seeds(unshuffled), []) == input_nodes.tolist()


def test_features_targets_and_edge_attributes_are_sliced():
    num_nodes, edge_index = 30, random_graph(30, 120, 6)
    x, y = torch.randn(num_nodes, 5), torch.randint(0, 3, (num_nodes,))
    edge_attr = torch.randn(edge_index.size(1), 2)
    sampler = NeighborSampler(edge_index, num_nodes, [3, 3], batch_size=8, x=x, y=y, edge_attr=edge_attr)
    for batch in sampler:
        assert torch.equal(batch.x, x[batch.n_id])
        assert torch.equal(batch.y, y[batch.n_id])
        assert torch.equal(batch.edge_attr, edge_attr[batch.e_id])
    bare = NeighborSampler(edge_index, num_nodes, [1]).sample(torch.tensor([0]))
    assert "x" not in bare and "y" not in bare and "edge_attr" not in bare


def test_local_id_table_is_reset_between_batches():
    num_nodes, edge_index = 30, random_graph(30, 120, 7)
    sampler = NeighborSampler(edge_index, num_nodes, [-1, -1], batch_size=5)
    for batch in sampler:
        check_batch_structure(batch, edge_index, num_nodes, [-1, -1], batch.n_id[: batch.batch_size].tolist())
    assert bool((sampler._local_id == -1).all())


def test_seed_outputs_match_full_graph_gnn():
    torch.manual_seed(0)
    num_nodes, edge_index = 80, random_graph(80, 320, 8)
    x = torch.randn(num_nodes, 6, dtype=torch.float64)
    conv1, conv2 = SAGEConv(6, 8, aggr="mean").double(), SAGEConv(8, 3, aggr="mean").double()

    def forward(features, edges):
        return conv2(conv1(features, edges).relu(), edges)

    full = forward(x, edge_index)
    sampler = NeighborSampler(edge_index, num_nodes, [-1, -1], batch_size=16, shuffle=True, x=x,
                              generator=torch.Generator().manual_seed(0))
    for batch in sampler:
        out = forward(batch.x, batch.edge_index)[: batch.batch_size]
        torch.testing.assert_close(out, full[batch.n_id[: batch.batch_size]])
    # With one hop too few the receptive field is cut, so the comparison above can fail.
    short = NeighborSampler(edge_index, num_nodes, [-1], batch_size=16, x=x)
    batch = next(iter(short))
    assert not torch.allclose(forward(batch.x, batch.edge_index)[: batch.batch_size], full[batch.n_id[: batch.batch_size]])


@pytest.mark.parametrize(
    "kwargs, error, argument",
    [
        (dict(num_neighbors=[2, -2]), ValueError, "num_neighbors"),
        (dict(num_neighbors=3), TypeError, "num_neighbors"),
        (dict(batch_size=0), ValueError, "batch_size"),
        (dict(batch_size=-3), ValueError, "batch_size"),
        (dict(edge_index=torch.tensor([[0, 10], [1, 2]])), ValueError, "edge_index"),
        (dict(edge_index=torch.tensor([[0, 1], [-1, 2]])), ValueError, "edge_index"),
        (dict(edge_index=torch.zeros(3, 2, dtype=torch.long)), ValueError, "edge_index"),
        (dict(edge_index=torch.zeros(2, 2)), TypeError, "edge_index"),
        (dict(input_nodes=torch.tensor([1, 10])), ValueError, "input_nodes"),
        (dict(input_nodes=torch.tensor([1, 1])), ValueError, "input_nodes"),
        (dict(input_nodes=torch.ones(4, dtype=torch.bool)), ValueError, "input_nodes"),
        (dict(x=torch.zeros(9, 2)), ValueError, "x"),
        (dict(y=torch.zeros(11)), ValueError, "y"),
        (dict(edge_attr=torch.zeros(3, 1)), ValueError, "edge_attr"),
        (dict(num_nodes=-1), ValueError, "num_nodes"),
        (dict(shuffle="no"), TypeError, "shuffle"),
    ],
)
def test_bad_inputs_raise_naming_the_argument(kwargs, error, argument):
    arguments = dict(edge_index=torch.tensor([[0, 1], [1, 2]]), num_nodes=10, num_neighbors=[2])
    arguments.update(kwargs)
    with pytest.raises(error, match=argument):
        NeighborSampler(arguments.pop("edge_index"), arguments.pop("num_nodes"), arguments.pop("num_neighbors"), **arguments)


def test_sample_rejects_bad_seeds():
    sampler = NeighborSampler(torch.tensor([[0, 1], [1, 2]]), 10, [2])
    with pytest.raises(ValueError, match="seeds"):
        sampler.sample(torch.tensor([3, 3]))
    with pytest.raises(ValueError, match="seeds"):
        sampler.sample(torch.tensor([10]))


# ---------------------------------------------------------------------------- resumable epochs
def batches_as_lists(batches):
    return [(b.n_id.tolist(), b.edge_index.tolist(), b.e_id.tolist()) for b in batches]


def seeded_sampler(shuffle):
    """A sampler as a fresh process would build it: same graph, same seeded generator."""
    edge_index = random_graph(50, 400, seed=3)
    return NeighborSampler(edge_index, 50, [4, 2], batch_size=7, shuffle=shuffle, generator=torch.Generator().manual_seed(11))


@pytest.mark.parametrize("shuffle", [True, False])
def test_state_dict_resumes_an_epoch_and_the_next_ones_exactly(shuffle):
    def sampler():
        return seeded_sampler(shuffle)

    reference = sampler()
    expected = [batches_as_lists(reference) for _ in range(3)]  # three epochs in a row

    interrupted = sampler()
    first_epoch = batches_as_lists(interrupted)
    iterator = iter(interrupted)
    head = batches_as_lists([next(iterator) for _ in range(3)])
    state = interrupted.state_dict()
    assert state["position"] == 3

    resumed = sampler()  # a fresh process: only the state survives
    resumed.load_state_dict(state)
    assert [first_epoch, head + batches_as_lists(resumed), batches_as_lists(resumed)] == expected
    with pytest.raises(ValueError, match="state"):
        resumed.load_state_dict({"position": 0})


def test_state_dict_without_an_explicit_generator_uses_torch_s_default_one():
    edge_index = random_graph(30, 200, seed=4)
    sampler = NeighborSampler(edge_index, 30, [3], batch_size=4, shuffle=True)
    torch.manual_seed(0)
    iterator = iter(sampler)
    next(iterator)
    state = sampler.state_dict()
    rest = batches_as_lists(iterator)
    torch.manual_seed(123)  # whatever happened since, the state restores the draws
    sampler.load_state_dict(state)
    assert batches_as_lists(sampler) == rest


@pytest.mark.parametrize("shuffle", [True, False])
def test_a_state_saved_after_an_epoch_s_last_batch_resumes_into_the_next_epoch(shuffle):
    reference = seeded_sampler(shuffle)
    expected = [batches_as_lists(reference) for _ in range(2)]
    interrupted = seeded_sampler(shuffle)
    first_epoch = []
    for batch in interrupted:
        first_epoch.append(batch)
        state = interrupted.state_dict()  # inside the loop, after the last batch too
    assert state["position"] == len(interrupted)
    resumed = seeded_sampler(shuffle)
    resumed.load_state_dict(state)
    assert [batches_as_lists(first_epoch), batches_as_lists(resumed)] == expected


def test_no_input_nodes_means_no_batches():
    edge_index = random_graph(30, 200, seed=1)
    sampler = NeighborSampler(edge_index, 30, [2], input_nodes=torch.zeros(30, dtype=torch.bool))
    assert len(sampler) == 0 and list(sampler) == []
    assert list(NeighborSampler(torch.empty(2, 0, dtype=torch.long), 0, [2])) == []
