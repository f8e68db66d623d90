"""Attention patterns as PyG transforms: batching, provenance, caching, and models trained on them."""
import copy
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from ogb.utils.features import get_atom_feature_dims, get_bond_feature_dims
from torch_geometric.data import Batch, Data, InMemoryDataset
from torch_geometric.loader import DataLoader
from torch_geometric.transforms import Compose

from graph_sparse_attn import patterns
from graph_sparse_attn.nn import GraphTransformer, SequenceTransformer
from graph_sparse_attn.ops import CSRPattern
from graph_sparse_attn.patterns.registry import build_pattern
from graph_sparse_attn.transforms import (
    EXPANDER_EDGE,
    GRAPH_EDGE,
    HOP_EDGE,
    SELF_LOOP,
    VIRTUAL_EDGE,
    AddExpanderPattern,
    AddFullPattern,
    AddGraphPattern,
    AddKHopPattern,
    AddPositionalPattern,
    AddVirtualNodes,
    AttentionData,
    attention_pattern,
    batch_edge_ids,
    pattern_batch,
    positional_pattern,
    virtual_layout,
)

REPO = Path(__file__).resolve().parents[1]
SHARED_OGB = REPO.parent / "shared" / "data" / "ogb"


def molecule(num_nodes, seed, chords=0):
    """A ring with a few random chords (both directions), OGB atom/bond features."""
    gen = torch.Generator().manual_seed(seed)
    ring = torch.arange(num_nodes)
    src = torch.cat([ring, torch.randint(0, num_nodes, (chords,), generator=gen)])
    dst = torch.cat([(ring + 1) % num_nodes, torch.randint(0, num_nodes, (chords,), generator=gen)])
    edge_index = torch.cat([torch.stack([src, dst]), torch.stack([dst, src])], dim=1)
    x = torch.stack([torch.randint(0, d, (num_nodes,), generator=gen) for d in get_atom_feature_dims()], dim=1)
    edge_attr = torch.stack([torch.randint(0, d, (edge_index.size(1),), generator=gen) for d in get_bond_feature_dims()], dim=1)
    return Data(x=x, edge_index=edge_index, edge_attr=edge_attr, y=torch.rand(1, 2, generator=gen))


SIZES = (5, 11, 1, 8)
RECIPES = [
    ("graph", {}, lambda: [AddGraphPattern()]),
    ("k_hop", {"k_hops": 2}, lambda: [AddKHopPattern(2)]),
    ("k_hop", {"k_hops": 3}, lambda: [AddKHopPattern(3)]),
    ("full", {}, lambda: [AddFullPattern()]),
    ("exphormer", {"expander_degree": 0, "num_virtual": 2}, lambda: [AddGraphPattern(), AddVirtualNodes(2)]),
    ("exphormer", {"expander_degree": 4, "num_virtual": 1}, lambda: [AddGraphPattern(), AddVirtualNodes(1), AddExpanderPattern(4, seed=7)]),
    ("exphormer", {"expander_degree": 2, "num_virtual": 0}, lambda: [AddGraphPattern(), AddExpanderPattern(2, seed=7), AddVirtualNodes(0)]),
]


@pytest.mark.parametrize("attention, options, transforms", RECIPES)
def test_batched_transforms_equal_the_pattern_built_on_the_batch(attention, options, transforms):
    graphs = [molecule(n, seed=n, chords=2) for n in SIZES]
    transform = Compose(transforms())
    data_list = [transform(g) for g in graphs]
    batch = Batch.from_data_list(data_list)
    direct = attention_pattern(batch.edge_index, batch.num_nodes, attention, batch=batch.batch, num_graphs=len(SIZES),
                               generator=torch.Generator().manual_seed(7), **options)
    assert torch.equal(batch.attn_index, direct.index)
    assert torch.equal(batch.attn_type, direct.type)
    assert torch.equal(batch.attn_edge, direct.edge)
    num_virtual = options.get("num_virtual", 0) if attention == "exphormer" else 0
    assert direct.num_nodes == batch.num_nodes + len(SIZES) * num_virtual
    assert batch.num_virtual.tolist() == [num_virtual] * len(SIZES)
    # Each graph comes back out of the batch with its own pattern.
    for i, data in enumerate(data_list):
        assert torch.equal(batch.get_example(i).attn_index, data.attn_index)


@pytest.mark.parametrize("num_virtual", [0, 1, 3])
def test_batched_pattern_against_brute_force(num_virtual):
    """Every attention edge, mapped back to (graph, real node or virtual slot), is what the recipe says."""
    graphs = [molecule(n, seed=n, chords=3) for n in SIZES]
    transform = Compose([AddGraphPattern(), AddVirtualNodes(num_virtual), AddExpanderPattern(2, seed=3)])
    batch = Batch.from_data_list([transform(g) for g in graphs])
    real_pos, virtual_pos = virtual_layout(batch.batch, len(SIZES), num_virtual)
    # Invert the layout: position -> (graph, local id), virtual slot v as local id n_g + v.
    where = {}
    for r, p in enumerate(real_pos.tolist()):
        g = int(batch.batch[r])
        where[p] = (g, r - int(batch.ptr[g]))
    for k, p in enumerate(virtual_pos.tolist()):
        g, v = divmod(k, num_virtual)
        where[p] = (g, SIZES[g] + v)
    assert len(where) == batch.num_nodes + len(SIZES) * num_virtual

    gen = torch.Generator().manual_seed(3)
    expected = []
    for g, (graph, n) in enumerate(zip(graphs, SIZES)):
        edges = [(g, int(j), int(i), GRAPH_EDGE, e) for e, (j, i) in enumerate(graph.edge_index.t().tolist())]
        edges += [(g, i, i, SELF_LOOP, -1) for i in range(n)]
        edges += [(g, j, i, EXPANDER_EDGE, -1) for j, i in patterns.expander(n, 2, generator=gen).t().tolist()]
        edges += [(g, n + v, i, VIRTUAL_EDGE, -1) for v in range(num_virtual) for i in range(n)]
        edges += [(g, i, n + v, VIRTUAL_EDGE, -1) for v in range(num_virtual) for i in range(n)]
        expected += edges
    got = []
    for (j, i), kind, e in zip(batch.attn_index.t().tolist(), batch.attn_type.tolist(), batch.attn_edge.tolist()):
        (g, lj), (g2, li) = where[j], where[i]
        assert g == g2, "an attention edge crosses graphs"
        got.append((g, lj, li, kind, e))
    assert sorted(got) == sorted(expected)
    # Sorted by (target, source) across the whole batch, so the model's CSR sort is a no-op.
    assert CSRPattern.from_edge_index(batch.attn_index, batch.num_nodes + len(SIZES) * num_virtual).perm is None

    # attn_edge → positions in the batch's edge_index, pointing at edges with the same endpoints.
    node_graph = torch.empty(batch.num_nodes + len(SIZES) * num_virtual, dtype=torch.long)
    node_graph[real_pos] = batch.batch
    node_graph[virtual_pos] = torch.arange(len(SIZES)).repeat_interleave(num_virtual)
    ids = batch_edge_ids(batch.attn_edge, node_graph[batch.attn_index[1]], batch.edge_index, batch.batch, len(SIZES))
    is_graph = ids >= 0
    assert torch.equal(is_graph, batch.attn_type == GRAPH_EDGE)
    assert torch.equal(real_pos[batch.edge_index[:, ids[is_graph]]], batch.attn_index[:, is_graph])


def test_full_pattern_is_every_pair_of_each_graph():
    graphs = [molecule(n, seed=n, chords=2) for n in SIZES]
    batch = Batch.from_data_list(graphs)
    pattern = attention_pattern(batch.edge_index, batch.num_nodes, "full", batch=batch.batch, num_graphs=len(SIZES))
    expected = {(j, i) for g in range(len(SIZES)) for i in range(batch.ptr[g], batch.ptr[g + 1]) for j in range(batch.ptr[g], batch.ptr[g + 1])}
    got = [tuple(pair) for pair in pattern.index.t().tolist()]
    graph_edges = {tuple(pair) for pair in batch.edge_index.t().tolist()}
    # Every pair once, plus repeats only where the graph itself repeats an edge; graph edges typed as such.
    assert set(got) == expected and len(got) == len(expected) + batch.edge_index.size(1) - len(graph_edges)
    assert torch.equal(pattern.type == GRAPH_EDGE, pattern.edge >= 0)
    assert {pair for pair, kind in zip(got, pattern.type.tolist()) if kind == HOP_EDGE} == expected - graph_edges


def test_k_hop_types_and_edges():
    g = molecule(9, seed=1, chords=2)
    data = AddKHopPattern(2)(g)
    pairs = {(j, i) for j, i in g.edge_index.t().tolist()}
    dense = torch.zeros(9, 9, dtype=torch.long)
    dense[g.edge_index[1], g.edge_index[0]] = 1
    within = ((dense + dense @ dense) > 0) | torch.eye(9, dtype=torch.bool)  # [target, source]
    got = {}
    for (j, i), kind, e in zip(data.attn_index.t().tolist(), data.attn_type.tolist(), data.attn_edge.tolist()):
        assert within[i, j]
        assert (kind == GRAPH_EDGE) == ((j, i) in pairs) == (e >= 0)
        if e >= 0:
            assert tuple(g.edge_index[:, e].tolist()) == (j, i)
        got[(j, i)] = got.get((j, i), 0) + 1
    assert set(got) == {(j, i) for i, j in within.nonzero().tolist()}
    assert all(kind in (GRAPH_EDGE, HOP_EDGE) for kind in data.attn_type.tolist())


def test_expander_transform_draws_like_the_pattern_and_reseeds_per_graph():
    g = molecule(30, seed=0)
    data = AddExpanderPattern(4, seed=5)(Data(num_nodes=30))
    assert torch.equal(data.attn_index, patterns.expander(30, 4, generator=torch.Generator().manual_seed(5)))
    assert (data.attn_type == EXPANDER_EDGE).all() and (data.attn_edge == -1).all()
    fixed = AddExpanderPattern(4, seed_per_graph=0)
    assert torch.equal(fixed(g).attn_index, fixed(g).attn_index)
    fresh = AddExpanderPattern(4)
    assert not torch.equal(fresh(g).attn_index, fresh(g).attn_index)


@pytest.mark.parametrize("transform", [lambda: AddExpanderPattern(4, seed=3), lambda: AddPositionalPattern("random", seed=3, num_random=2)])
def test_seeded_random_transforms_differ_between_loader_workers_and_are_reproducible(transform):
    graphs = [Data(num_nodes=12) for _ in range(4)]

    def draws():
        torch.manual_seed(0)  # the DataLoader derives its workers' seeds from it
        loader = torch.utils.data.DataLoader(graphs, batch_size=None, num_workers=2, collate_fn=transform())
        return [data.attn_index for data in loader]

    first = draws()
    # Workers take graphs in turn: with the same transform seed they would repeat each other.
    assert not torch.equal(first[0], first[1])
    assert all(torch.equal(a, b) for a, b in zip(first, draws()))


def test_positional_pattern_of_a_batch_is_each_sequence_s_pattern_and_checks_num_graphs():
    sizes = [5, 1, 0, 7]
    batch = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))
    starts = [sum(sizes[:g]) for g in range(len(sizes))]
    for name, params in (("window", {"window": 2}), ("bigbird", {"window": 1, "global_indices": [0], "num_random": 9})):
        draws = {"generator": torch.Generator().manual_seed(1)} if name == "bigbird" else {}
        found = positional_pattern(name, len(batch), batch=batch, num_graphs=4, **params, **draws)
        draws = {"generator": torch.Generator().manual_seed(1)} if name == "bigbird" else {}
        alone = [build_pattern(name, size, **params, **draws) + start for size, start in zip(sizes, starts)]
        assert torch.equal(found, torch.cat(alone, dim=1))
    for num_graphs, error, match in ((2.5, TypeError, "num_graphs must be an int"), (-1, ValueError, "num_graphs must be >= 0"),
                                     (3, ValueError, "batch holds graph 3 but num_graphs is 3")):
        with pytest.raises(error, match=match):
            positional_pattern("window", len(batch), batch=batch, num_graphs=num_graphs, window=1)
    with pytest.raises(ValueError, match="num_graphs=2 needs a batch vector"):
        positional_pattern("window", 4, num_graphs=2, window=1)


def test_positional_pattern_transform_checks_its_seed_and_shows_it():
    for seed, error in ((True, TypeError), (1.5, TypeError), (-1, ValueError)):
        with pytest.raises(error, match="seed must be"):
            AddPositionalPattern("random", seed=seed, num_random=2)
    assert repr(AddPositionalPattern("log_sparse")) == "AddPositionalPattern('log_sparse')"
    assert repr(AddPositionalPattern("random", seed=3, num_random=2)) == "AddPositionalPattern('random', seed=3, num_random=2)"


def test_transform_errors():
    with pytest.raises(ValueError, match="degree must be an even"):
        AddExpanderPattern(3)
    with pytest.raises(ValueError, match="num_virtual must be"):
        AddVirtualNodes(-1)
    with pytest.raises(ValueError, match="k must be"):
        AddKHopPattern(0)
    for transform, flag in ((AddKHopPattern, True), (AddExpanderPattern, False), (AddVirtualNodes, True)):
        with pytest.raises(ValueError, match="must be a"):  # a bool is not a count
            transform(flag)
    with pytest.raises(ValueError, match="already has 1 virtual"):
        AddVirtualNodes(1)(AddVirtualNodes(1)(molecule(4, 0)))
    with pytest.raises(ValueError, match="needs data.edge_index"):
        AddGraphPattern()(Data(num_nodes=3))
    with pytest.raises(TypeError, match="self_loops must be a bool"):  # "no" is truthy
        AddGraphPattern(self_loops="no")
    for kwargs, error in (({"seed": "x"}, TypeError), ({"seed_per_graph": 1.5}, TypeError), ({"seed_per_graph": -1}, ValueError)):
        with pytest.raises(error, match=next(iter(kwargs))):
            AddExpanderPattern(**kwargs)
    with pytest.raises(ValueError, match="unknown pattern"):
        AddPositionalPattern("nope")
    with pytest.raises(ValueError, match="has no attn_type"):
        AddVirtualNodes(1)(AddPositionalPattern("window", window=1)(Data(num_nodes=5)))
    with pytest.raises(ValueError, match="attention must be one of"):
        attention_pattern(torch.zeros(2, 0, dtype=torch.long), 3, "dense")
    with pytest.raises(ValueError, match="seed applies to the random patterns"):
        AddPositionalPattern("window", seed=0, window=1)
    with pytest.raises(ValueError, match="would replace a pattern built by the graph transforms"):
        AddPositionalPattern("window", window=1)(AddGraphPattern()(molecule(4, 0)))


@pytest.mark.parametrize("transform", [AddVirtualNodes(0), AddExpanderPattern(0)])
def test_transforms_adding_nothing_leave_an_empty_pattern(transform):
    data = transform(molecule(4, 0))
    assert data.attn_index.shape == (2, 0) and data.attn_type.shape == data.attn_edge.shape == (0,)
    assert int(data.num_virtual) == 0 and data.num_nodes == 4


class _Molecules(InMemoryDataset):
    def __init__(self, root, graphs, transform=None, pre_transform=None):
        self.graphs = graphs
        super().__init__(str(root), transform, pre_transform)
        self.load(self.processed_paths[0])

    @property
    def raw_file_names(self):
        return []

    @property
    def processed_file_names(self):
        return ["data.pt"]

    def process(self):
        self.save([self.pre_transform(g) for g in self.graphs], self.processed_paths[0])


def test_pre_transform_is_cached_on_disk_and_reloaded(tmp_path):
    graphs = [molecule(n, seed=n) for n in SIZES]
    pre = Compose([AddGraphPattern(), AddVirtualNodes(2)])
    _Molecules(tmp_path, graphs, pre_transform=pre)
    again = _Molecules(tmp_path, [], pre_transform=pre)  # reads the cache (weights_only load)
    assert len(again) == len(SIZES) and isinstance(again[0], AttentionData)
    loaded = next(iter(DataLoader(again, batch_size=len(SIZES))))
    direct = Batch.from_data_list([pre(g) for g in graphs])
    assert torch.equal(loaded.attn_index, direct.attn_index) and torch.equal(loaded.attn_edge, direct.attn_edge)


def _train(model, loader, use_pattern, steps):
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _, batch in zip(range(steps), loader):
        kwargs = dict(attn_index=batch.attn_index, attn_type=batch.attn_type, attn_edge=batch.attn_edge) if use_pattern else {}
        out = model(batch.x, batch.edge_index, batch.edge_attr, batch.batch, num_graphs=batch.num_graphs, **kwargs)
        loss = F.mse_loss(out, batch.y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.detach())
    return torch.stack(losses)


@pytest.mark.parametrize("options", [
    {"attention": "exphormer", "expander_degree": 4, "num_virtual": 2, "gps": True},
    {"attention": "k_hop", "k_hops": 2},
])
def test_model_trained_with_transforms_is_bitwise_the_model_building_its_own(tmp_path, options):
    torch.manual_seed(0)
    graphs = [molecule(n, seed=n, chords=2) for n in (6, 9, 4, 12, 7, 10, 5, 8)]
    if options["attention"] == "exphormer":
        pre = Compose([AddGraphPattern(), AddVirtualNodes(options["num_virtual"])])
        transform = AddExpanderPattern(options["expander_degree"], seed=11)
        eval_pre = Compose([pre, AddExpanderPattern(options["expander_degree"], seed_per_graph=0)])
    else:
        pre, transform = AddKHopPattern(options["k_hops"]), None
        eval_pre = pre
    with_transforms = _Molecules(tmp_path / "a", graphs, transform=transform, pre_transform=pre)
    plain = _Molecules(tmp_path / "b", graphs, pre_transform=lambda g: g)

    seed = {"expander_seed": 11} if options["attention"] == "exphormer" else {}
    model = GraphTransformer("atom", 16, 2, depth=2, heads=2, edge_dim="bond", dropout=0.1, attn_dropout=0.1, **seed, **options)
    twin = copy.deepcopy(model)
    loaders = [DataLoader(ds, batch_size=3, shuffle=True, generator=torch.Generator().manual_seed(1)) for ds in (with_transforms, plain)]
    torch.manual_seed(2)
    losses_a = _train(model, loaders[0], True, steps=6)
    torch.manual_seed(2)
    losses_b = _train(twin, loaders[1], False, steps=6)
    assert torch.equal(losses_a, losses_b)
    for (name, p), q in zip(model.named_parameters(), twin.parameters()):
        assert torch.equal(p, q), name

    # Evaluation: pre-built evaluation patterns give the model's own evaluation-mode outputs.
    model.eval(), twin.eval()
    batch = Batch.from_data_list([eval_pre(g) for g in graphs])
    with torch.no_grad():
        carried = model(batch.x, batch.edge_index, batch.edge_attr, batch.batch, attn_index=batch.attn_index,
                        attn_type=batch.attn_type, attn_edge=batch.attn_edge, num_graphs=batch.num_graphs)
        own = twin(batch.x, batch.edge_index, batch.edge_attr, batch.batch)
        assert torch.equal(carried, own)
        # ... and, with the per-graph evaluation expander, a batch gives each graph what it gets alone.
        for i, g in enumerate(graphs):
            torch.testing.assert_close(own[i], twin(g.x, g.edge_index, g.edge_attr)[0], atol=1e-5, rtol=1e-5)


def test_model_sorts_once_and_accepts_a_prebuilt_pattern():
    torch.manual_seed(0)
    graphs = [molecule(n, seed=n, chords=1) for n in (5, 7, 6)]
    transform = Compose([AddGraphPattern(), AddVirtualNodes(1), AddExpanderPattern(2, seed_per_graph=0)])
    batch = Batch.from_data_list([transform(g) for g in graphs])
    model = GraphTransformer("atom", 16, 2, depth=2, heads=2, edge_dim="bond", attention="exphormer",
                             expander_degree=2, num_virtual=1).eval()
    seen = []
    for layer in model.layers:
        layer.register_forward_pre_hook(lambda module, args: seen.append(args[1]))
    common = (batch.x, batch.edge_index, batch.edge_attr, batch.batch)
    total = batch.num_nodes + 3
    with torch.no_grad():
        ref = model(*common, attn_index=batch.attn_index, attn_type=batch.attn_type, attn_edge=batch.attn_edge, num_graphs=3)
        # The same pattern in a shuffled caller order, as a prebuilt CSRPattern: types and edge ids follow the caller order.
        shuffle = torch.randperm(batch.attn_index.size(1))
        pattern = CSRPattern.from_edge_index(batch.attn_index[:, shuffle], total)
        out = model(*common, attn_index=pattern, attn_type=batch.attn_type[shuffle], attn_edge=batch.attn_edge[shuffle], num_graphs=3)
    torch.testing.assert_close(out, ref, atol=1e-6, rtol=1e-6)
    assert len(seen) == 4 and all(isinstance(p, CSRPattern) and p.perm is None for p in seen)

    with pytest.raises(ValueError, match="must span N \\+ B \\* num_virtual"):
        plain = Batch.from_data_list([AddGraphPattern()(g) for g in graphs])  # no virtual nodes
        model(*common, attn_index=CSRPattern.from_edge_index(plain.attn_index, plain.num_nodes),
              attn_type=plain.attn_type, attn_edge=plain.attn_edge)
    with pytest.raises(ValueError, match="has no virtual edges but the model has num_virtual=1"):
        # The same pattern as an edge_index (no node count of its own): a stale cache's, built without virtual nodes.
        stale = Batch.from_data_list([AddExpanderPattern(2, seed_per_graph=0)(AddGraphPattern()(g)) for g in graphs])
        model(*common, attn_index=stale.attn_index, attn_type=stale.attn_type, attn_edge=stale.attn_edge, num_graphs=3)
    with pytest.raises(ValueError, match="must have shape \\[E'\\]"):
        model(*common, attn_index=batch.attn_index, attn_type=batch.attn_type[:-1], attn_edge=batch.attn_edge)
    with pytest.raises(ValueError, match="needs attn_type"):
        model(*common, attn_index=batch.attn_index)
    with pytest.raises(ValueError, match="pass it too"):
        model(*common, attn_type=batch.attn_type)


@pytest.mark.parametrize("name, params", [
    ("longformer", {"window": 3, "global_indices": [0]}),
    ("window", {"window": 2}),
    ("strided", {"stride": 4}),
])
def test_positional_transform_batches_like_the_batch_pattern(name, params):
    lengths = [9, 17, 5]
    transform = AddPositionalPattern(name, **params)
    samples = [Data(x=torch.randint(1, 20, (n,)), num_nodes=n) for n in lengths]
    batch = Batch.from_data_list([transform(s) for s in samples])
    assert torch.equal(batch.attn_index, build_pattern(name, sum(lengths), batch=batch.batch, **params))

    torch.manual_seed(0)
    model = SequenceTransformer(20, 3, dim=16, depth=2, heads=2, max_length=64, gate=True, pattern=(name, params)).eval()
    with torch.no_grad():
        carried = model(batch.x, batch.batch, CSRPattern.from_edge_index(batch.attn_index, sum(lengths)), num_graphs=3)
        assert torch.equal(carried, model(batch.x, batch.batch))


def test_random_positional_transform_is_reproducible_by_seed():
    params = {"window": 1, "global_indices": [0], "num_random": 2}
    data = Data(num_nodes=40)
    first = AddPositionalPattern("bigbird", seed=4, **params)(data).attn_index
    assert torch.equal(first, build_pattern("bigbird", 40, generator=torch.Generator().manual_seed(4), **params))
    assert torch.equal(first, AddPositionalPattern("bigbird", seed=4, **params)(data).attn_index)
    assert not torch.equal(first, AddPositionalPattern("bigbird", seed=5, **params)(data).attn_index)


def test_sequence_model_with_random_pattern_is_bitwise_the_transformed_batches():
    params = {"window": 2, "global_indices": [0], "num_random": 3}
    transform = AddPositionalPattern("bigbird", seed=9, **params)
    torch.manual_seed(0)
    model = SequenceTransformer(20, 3, dim=16, depth=2, heads=2, max_length=64, dropout=0.1, pattern=("bigbird", params), pattern_seed=9)
    twin = copy.deepcopy(model)
    opts = [torch.optim.Adam(m.parameters(), lr=1e-2) for m in (model, twin)]
    for step in range(3):
        lengths = [9 + step, 17, 5 + 2 * step]
        samples = [Data(x=torch.randint(1, 20, (n,), generator=torch.Generator().manual_seed(n)), y=torch.tensor([n % 3]), num_nodes=n)
                   for n in lengths]
        batch = Batch.from_data_list([transform(s) for s in samples])
        losses = []
        for m, opt, edges in ((model, opts[0], batch.attn_index), (twin, opts[1], None)):
            torch.manual_seed(step)  # same dropout draws
            loss = F.cross_entropy(m(batch.x, batch.batch, edges, num_graphs=3), batch.y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.detach())
        assert torch.equal(*losses)
    for p, q in zip(model.parameters(), twin.parameters()):
        assert torch.equal(p, q)


def test_exphormer_example_runs_offline_on_a_copy(tmp_path):
    source = SHARED_OGB / "ogbg_molbace"
    if not source.is_dir():
        pytest.skip(f"the shared OGB data is absent ({source}); see ../shared/data/README.md")
    shutil.copytree(source, tmp_path / "ogbg_molbace")
    proc = subprocess.run(
        [sys.executable, str(REPO / "examples" / "exphormer_ogb.py"), "--root", str(tmp_path), "--name", "ogbg-molbace",
         "--steps", "2", "--batch-size", "16", "--hidden", "16", "--subset", "64"],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "step 2: loss" in proc.stdout and "validation rocauc on 64 graphs" in proc.stdout
    # processed/ now holds this pre_transform's graphs: another one (PyG only warns) must stop the example.
    stale = subprocess.run([sys.executable, str(REPO / "examples" / "exphormer_ogb.py"), "--root", str(tmp_path), "--name",
                            "ogbg-molbace", "--num-virtual", "2", "--steps", "1"], capture_output=True, text=True, timeout=600)
    assert stale.returncode != 0 and "was processed without this example's pre_transform" in stale.stderr


def test_attention_pattern_names_what_it_cannot_build():
    edge_index = torch.tensor([[0, 1], [1, 2]])
    for kwargs, error, match in [
        (dict(batch=torch.tensor([0, 0, 1])), ValueError, "edge_index joins nodes of different graphs"),
        (dict(num_graphs=3), ValueError, "num_graphs=3 needs a batch vector"),
        (dict(attention="exphormer", seed_per_graph=-1), ValueError, "seed_per_graph must be >= 0"),
        (dict(attention="exphormer", seed_per_graph=0, generator=torch.Generator()), ValueError, "not both"),
        (dict(attention="exphormer", expander_degree=2.0), TypeError, "expander_degree must be an int"),
        (dict(attention="k_hop", k_hops=0), ValueError, "k_hops must be >= 1"),
        (dict(num_nodes=2.0), TypeError, "num_nodes must be an int"),
    ]:
        with pytest.raises(error, match=match):
            attention_pattern(edge_index, **{"num_nodes": 3, "attention": "graph", **kwargs})
    with pytest.raises(ValueError, match="num_virtual must be >= 0"):
        pattern_batch(torch.tensor([0, 0, 1]), 2, -1)
    with pytest.raises(ValueError, match="data has no num_nodes"):
        AddExpanderPattern(4)(Data())
