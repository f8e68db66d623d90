"""Transformer layers and models: shapes, gradients, batch invariance, and a learning smoke test."""
import pytest
import torch
import torch.nn.functional as F
from ogb.utils.features import get_atom_feature_dims, get_bond_feature_dims
from torch_geometric.data import Batch, Data

from graph_sparse_attn.data.sequence import SequenceGraphCollator
from graph_sparse_attn.ops import CSRPattern
from graph_sparse_attn.nn import GraphTransformer, SequenceTransformer, SparseTransformerLayer
from graph_sparse_attn.nn.sequence import positions_in_sequence
from graph_sparse_attn.patterns import build_pattern, sliding_window


def assert_all_parameters_get_gradients(model, loss):
    loss.backward()
    missing = [name for name, p in model.named_parameters()
               if p.requires_grad and (p.grad is None or not torch.isfinite(p.grad).all() or not p.grad.any())]
    assert not missing, f"no finite non-zero gradient for {missing}"


def test_positions_restart_in_every_sequence():
    batch = torch.tensor([0, 0, 0, 1, 2, 2])
    assert positions_in_sequence(batch).tolist() == [0, 1, 2, 0, 0, 1]


@pytest.mark.parametrize("kwargs", [{}, {"knn": 3}, {"edge_dim": 4}])
def test_transformer_layer_is_batch_invariant(kwargs):
    torch.manual_seed(0)
    layer = SparseTransformerLayer(16, 4, **kwargs).eval()
    sizes = [7, 12]
    xs = [torch.randn(n, 16) for n in sizes]
    batch = torch.cat([torch.full((n,), i) for i, n in enumerate(sizes)])
    edge_index = sliding_window(sum(sizes), 2, batch=batch)
    attr = torch.randn(edge_index.size(1), 4) if "edge_dim" in kwargs else None
    fixed = "knn" not in kwargs  # a knn layer builds its own pattern and takes none
    together = layer(torch.cat(xs), edge_index if fixed else None, batch, edge_attr=attr)
    start = 0
    for i, (x, n) in enumerate(zip(xs, sizes)):
        own = (edge_index[1] >= start) & (edge_index[1] < start + n)
        alone = layer(x, edge_index[:, own] - start if fixed else None, torch.zeros(n, dtype=torch.long),
                      edge_attr=None if attr is None else attr[own])
        torch.testing.assert_close(together[start : start + n], alone, atol=1e-5, rtol=1e-5)
        start += n


def test_batch_norm_layer_is_graphgps_post_norm():
    from torch_geometric.nn import GINEConv

    torch.manual_seed(0)
    local = GINEConv(torch.nn.Sequential(torch.nn.Linear(16, 16), torch.nn.ReLU(), torch.nn.Linear(16, 16)), edge_dim=3)
    layer = SparseTransformerLayer(16, 4, edge_dim=5, local=local, norm="batch")  # train mode: batch statistics
    x = torch.randn(12, 16)
    pattern = sliding_window(12, 2)
    attr = torch.randn(pattern.size(1), 5)
    bonds = torch.randint(0, 12, (2, 20))
    bond_attr = torch.randn(20, 3)
    out = layer(x, pattern, edge_attr=attr, local_edge_index=bonds, local_edge_attr=bond_attr)
    h = layer.norm_attn(x + layer.attn(x, pattern, attr)) + layer.norm_local(x + local(x, bonds, bond_attr))
    torch.testing.assert_close(out, layer.norm_ffn(h + layer.ffn(h)))
    with pytest.raises(ValueError, match="norm must be one of"):
        SparseTransformerLayer(16, 4, norm="rms")


SEQUENCE_OPTIONS = [
    {},
    {"position": "sinusoidal", "pooling": "mean"},
    {"gate": True},
    {"knn": 4},
    {"pattern": ("bigbird", {"window": 2, "global_indices": [0], "num_random": 2})},
]


@pytest.mark.parametrize("options", SEQUENCE_OPTIONS)
def test_sequence_transformer_shapes_gradients_and_batch_invariance(options):
    torch.manual_seed(0)
    knn = "knn" in options  # builds its own pattern, so takes none
    pattern = {} if knn else {"pattern": ("longformer", {"window": 3, "global_indices": [0]})}
    model = SequenceTransformer(20, 3, dim=16, depth=2, heads=2, max_length=64, dropout=0.0, **{**pattern, **options})
    lengths = [9, 17, 5]
    samples = [(torch.randint(1, 20, (n,)), i % 3) for i, n in enumerate(lengths)]
    collate = SequenceGraphCollator(*model_pattern(model), cls_token=0)
    batch = collate(samples)
    assert batch.x.numel() == sum(lengths) + len(lengths)
    edges = (lambda b: None) if knn else (lambda b: b.edge_index)
    logits = model(batch.x, batch.batch, edges(batch), batch.pos)
    assert logits.shape == (3, 3)
    assert_all_parameters_get_gradients(model, F.cross_entropy(logits, batch.y))

    if "bigbird" in str(options):
        return  # a random pattern differs between the batch and the single runs
    model.eval()
    with torch.no_grad():
        together = model(batch.x, batch.batch, edges(batch), batch.pos)
        for i, sample in enumerate(samples):
            one = collate([sample])
            torch.testing.assert_close(together[i], model(one.x, one.batch, edges(one), one.pos)[0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("position", ["learned", "sinusoidal"])
def test_token_and_position_embeddings_start_at_the_same_scale(position):
    torch.manual_seed(0)
    model = SequenceTransformer(256, 2, dim=64, depth=1, heads=4, max_length=4096, position=position)
    tokens = model.embed.weight.pow(2).mean().sqrt()
    positions = model.pos_embed(torch.arange(4096)).pow(2).mean().sqrt()
    assert 0.5 < tokens / positions < 2, (float(tokens), float(positions))


def model_pattern(model):
    return model.pattern_name, model.pattern_params


def test_sequence_transformer_builds_its_default_pattern():
    model = SequenceTransformer(10, 2, dim=8, depth=1, heads=2).eval()
    batch = torch.tensor([0] * 5 + [1] * 3)
    tokens = torch.randint(0, 10, (8,))
    with torch.no_grad():
        torch.testing.assert_close(model(tokens, batch), model(tokens, batch, model.pattern(batch)))
    assert "longformer" in repr(model)


def test_sequence_transformer_random_pattern_is_repeatable_in_eval_and_leaves_training_draws_alone():
    bigbird = ("bigbird", {"window": 1, "global_indices": [0], "num_random": 2})
    torch.manual_seed(0)
    model = SequenceTransformer(10, 3, dim=8, depth=2, heads=2, pooling="mean", dropout=0.0, pattern=bigbird, pattern_seed=7)
    batch = torch.tensor([0] * 25 + [1] * 15)
    tokens = torch.randint(0, 10, (40,))
    model.eval()
    with torch.no_grad():
        first, second = model(tokens, batch), model(tokens, batch)
        alone = model(tokens[25:], torch.zeros(15, dtype=torch.long))
    torch.testing.assert_close(first, second, rtol=0, atol=0)
    torch.testing.assert_close(first[1:], alone, rtol=1e-6, atol=1e-6)  # independent of its batch
    # Each sequence is drawn from a generator seeded 0.
    torch.testing.assert_close(model.pattern(batch[25:] - 1), build_pattern("bigbird", 15, generator=torch.Generator().manual_seed(0), **bigbird[1]))

    def two_training_patterns(evaluate_between: bool):
        model.generator.manual_seed(7)
        model.train()
        one = model.pattern(batch)
        if evaluate_between:
            model.eval()
            model.pattern(batch)
            model.train()
        return one, model.pattern(batch)

    for plain, evaluated in zip(two_training_patterns(False), two_training_patterns(True)):
        assert torch.equal(plain, evaluated)


def test_sequence_transformer_overfits_a_tiny_batch():
    torch.manual_seed(0)
    model = SequenceTransformer(12, 4, dim=32, depth=2, heads=4, max_length=64, dropout=0.0,
                                pattern=("longformer", {"window": 4, "global_indices": [0]}))
    collate = SequenceGraphCollator("longformer", {"window": 4, "global_indices": [0]}, cls_token=0)
    batch = collate([(torch.randint(1, 12, (int(n),)), i % 4) for i, n in enumerate(torch.randint(10, 30, (8,)))])
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(150):
        loss = F.cross_entropy(model(batch.x, batch.batch, batch.edge_index, batch.pos), batch.y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.05


def molecule(num_nodes, seed):
    gen = torch.Generator().manual_seed(seed)
    x = torch.stack([torch.randint(0, d, (num_nodes,), generator=gen) for d in get_atom_feature_dims()], dim=1)
    ring = torch.arange(num_nodes)
    edge_index = torch.cat([torch.stack([ring, (ring + 1) % num_nodes]), torch.stack([(ring + 1) % num_nodes, ring])], dim=1)
    edge_attr = torch.stack([torch.randint(0, d, (edge_index.size(1),), generator=gen) for d in get_bond_feature_dims()], dim=1)
    return Data(x=x, edge_index=edge_index, edge_attr=edge_attr, y=torch.rand(1, 2, generator=gen), pe=torch.randn(num_nodes, 4, generator=gen))


GRAPH_OPTIONS = [
    {"attention": "graph"},
    {"attention": "k_hop", "k_hops": 2},
    {"attention": "exphormer", "expander_degree": 0, "num_virtual": 2},
    {"attention": "graph", "gps": True, "pe_dim": 4},
    {"attention": "exphormer", "expander_degree": 0, "gps": True, "norm": "batch"},
    {"attention": "full"},
]


@pytest.mark.parametrize("edge_dim", [None, 3])
def test_gps_local_branch_uses_gin_without_edge_features_and_every_parameter_learns(edge_dim):
    from torch_geometric.nn import GINConv, GINEConv

    torch.manual_seed(0)
    model = GraphTransformer(5, 8, 2, depth=2, heads=2, gps=True, edge_dim=edge_dim)
    ring = torch.arange(6)
    edge_index = torch.cat([torch.stack([ring, (ring + 1) % 6]), torch.stack([(ring + 1) % 6, ring])], dim=1)
    edge_attr = None if edge_dim is None else torch.randn(edge_index.size(1), edge_dim)
    out = model(torch.randn(6, 5), edge_index, edge_attr)
    assert all(type(layer.local) is (GINConv if edge_dim is None else GINEConv) for layer in model.layers)
    assert_all_parameters_get_gradients(model, out.pow(2).sum())


@pytest.mark.parametrize("options", GRAPH_OPTIONS)
def test_graph_transformer_on_molecules_is_batch_invariant(options):
    torch.manual_seed(0)
    model = GraphTransformer("atom", 16, 2, depth=2, heads=2, edge_dim="bond", **options)
    graphs = [molecule(n, seed=n) for n in (5, 8, 6)]
    batch = Batch.from_data_list(graphs)
    pe = batch.pe if options.get("pe_dim") else None
    out = model(batch.x, batch.edge_index, batch.edge_attr, batch.batch, pe=pe)
    assert out.shape == (3, 2)
    assert_all_parameters_get_gradients(model, F.mse_loss(out, batch.y))
    model.eval()
    with torch.no_grad():
        together = model(batch.x, batch.edge_index, batch.edge_attr, batch.batch, pe=pe)
        for i, g in enumerate(graphs):
            alone = model(g.x, g.edge_index, g.edge_attr, None, pe=g.pe if pe is not None else None)
            torch.testing.assert_close(together[i], alone[0], atol=1e-5, rtol=1e-5)


def test_graph_transformer_exphormer_with_expander_and_node_task():
    torch.manual_seed(0)
    batch = Batch.from_data_list([molecule(n, seed=n) for n in (9, 12)])
    model = GraphTransformer("atom", 16, 2, depth=1, heads=2, edge_dim="bond", attention="exphormer", expander_degree=2)
    out = model(batch.x, batch.edge_index, batch.edge_attr, batch.batch)
    assert out.shape == (2, 2)
    assert_all_parameters_get_gradients(model, out.square().sum())
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(batch.x, batch.edge_index, batch.edge_attr, batch.batch),
                                   model(batch.x, batch.edge_index, batch.edge_attr, batch.batch))
    node_model = GraphTransformer(5, 8, 3, depth=1, heads=2, task="node")
    x = torch.randn(batch.num_nodes, 5)
    assert node_model(x, batch.edge_index).shape == (batch.num_nodes, 3)
    assert "attention='exphormer'" in repr(model)


def test_graph_transformer_embeddings_start_as_ogb_encoders_start_them():
    # OGB's AtomEncoder/BondEncoder draw Xavier-uniform embeddings; reset_parameters must keep that scale
    # (nn.Embedding's own N(0, 1) made the summed atom embedding ~5x larger than in OGB's models).
    from ogb.graphproppred.mol_encoder import AtomEncoder

    torch.manual_seed(0)
    model = GraphTransformer("atom", 64, 1, attention="exphormer", gps=True, edge_dim="bond")
    model.reset_parameters()
    embeddings = [m for m in model.modules() if isinstance(m, torch.nn.Embedding)]
    assert len(embeddings) == len(get_atom_feature_dims()) + len(get_bond_feature_dims()) + 2  # + edge types, virtual
    for embedding in embeddings:
        rows, cols = embedding.weight.shape
        assert embedding.weight.abs().max() <= (6 / (rows + cols)) ** 0.5
    x = torch.stack([torch.randint(0, d, (2000,)) for d in get_atom_feature_dims()], dim=1)
    ours, ogb = model.node_encoder(x).std(), AtomEncoder(64)(x).std()
    assert 0.8 < float(ours / ogb) < 1.25


def test_graph_transformer_takes_pyg_positional_encodings():
    import torch_geometric.transforms as T

    torch.manual_seed(0)
    transform = T.Compose([T.AddRandomWalkPE(walk_length=4, attr_name="rw"), T.AddLaplacianEigenvectorPE(k=3, attr_name="lap")])

    def with_chord(data):  # a bare ring gives every atom the same random-walk encoding (BatchNorm makes it zero)
        chord = torch.tensor([[0, 2], [2, 0]])
        return Data(x=data.x, edge_index=torch.cat([data.edge_index, chord], 1), edge_attr=torch.cat([data.edge_attr, data.edge_attr[:2]]))

    batch = Batch.from_data_list([transform(with_chord(molecule(n, seed=n))) for n in (6, 7)])
    assert not torch.allclose(batch.rw, batch.rw[:1].expand_as(batch.rw))
    for pe, lap_pe in ((batch.rw, False), (batch.lap, True)):
        model = GraphTransformer("atom", 16, 2, depth=1, heads=2, edge_dim="bond", pe_dim=pe.size(1), lap_pe=lap_pe)
        out = model(batch.x, batch.edge_index, batch.edge_attr, batch.batch, pe=pe)
        assert_all_parameters_get_gradients(model, out.sum())
        model.eval()  # no random sign flips: the encoding changes the output
        with torch.no_grad():
            assert not torch.allclose(model(batch.x, batch.edge_index, batch.edge_attr, batch.batch, pe=pe),
                                      model(batch.x, batch.edge_index, batch.edge_attr, batch.batch, pe=torch.zeros_like(pe)))
        with pytest.raises(ValueError, match="pe must be floating-point \\[N, pe_dim\\]"):
            model(batch.x, batch.edge_index, batch.edge_attr, batch.batch)


def test_models_trace_without_graph_breaks_given_a_prebuilt_pattern():
    """With a CSRPattern and num_graphs, the models' own code adds no host sync (PyG-style compile check)."""
    from graph_sparse_attn.ops import CSRPattern
    from graph_sparse_attn.transforms import attention_pattern

    torch.manual_seed(0)
    batch = Batch.from_data_list([molecule(n, seed=n) for n in (5, 8, 6)])
    model = GraphTransformer("atom", 16, 2, depth=2, heads=2, edge_dim="bond", attention="exphormer", expander_degree=2,
                             num_virtual=1, gps=True).eval()
    own = attention_pattern(batch.edge_index, batch.num_nodes, "exphormer", batch=batch.batch, expander_degree=2, num_virtual=1)
    pattern = CSRPattern.from_edge_index(own.index, own.num_nodes)

    def graph_forward(x, edge_index, edge_attr, node_batch, attn_type, attn_edge):
        return model(x, edge_index, edge_attr, node_batch, attn_index=pattern, attn_type=attn_type, attn_edge=attn_edge, num_graphs=3)

    args = (batch.x, batch.edge_index, batch.edge_attr, batch.batch, own.type, own.edge)
    assert torch._dynamo.explain(graph_forward)(*args).graph_break_count == 0
    with torch.no_grad():
        torch.testing.assert_close(torch.compile(graph_forward, backend="eager")(*args), graph_forward(*args))

    lengths = [9, 17, 5]
    tokens = torch.randint(0, 20, (sum(lengths),))
    seq_batch = torch.cat([torch.full((n,), i) for i, n in enumerate(lengths)])
    seq_model = SequenceTransformer(20, 3, dim=16, depth=2, heads=2, max_length=64, gate=True).eval()
    seq_pattern = CSRPattern.from_edge_index(seq_model.pattern(seq_batch), sum(lengths))

    def sequence_forward(tokens, seq_batch):
        return seq_model(tokens, seq_batch, seq_pattern, num_graphs=3)

    assert torch._dynamo.explain(sequence_forward)(tokens, seq_batch).graph_break_count == 0
    with torch.no_grad():
        torch.testing.assert_close(torch.compile(sequence_forward, backend="eager")(tokens, seq_batch), sequence_forward(tokens, seq_batch))


def test_models_hand_their_backend_to_every_attention_call(monkeypatch):
    from graph_sparse_attn.nn import SparseAttnConv
    from graph_sparse_attn.ops import attention

    seen = []
    resolve = attention.resolve_backend
    monkeypatch.setattr(attention, "resolve_backend", lambda backend, *args: seen.append(backend) or resolve(backend, *args))
    torch.manual_seed(0)
    batch = Batch.from_data_list([molecule(n, seed=n) for n in (5, 8)])
    GraphTransformer("atom", 16, 2, depth=2, heads=2, edge_dim="bond", attention="exphormer", gps=True, backend="csr")(
        batch.x, batch.edge_index, batch.edge_attr, batch.batch)
    SequenceTransformer(11, 3, dim=16, depth=1, heads=2, backend="csr")(torch.randint(0, 11, (9,)), torch.zeros(9, dtype=torch.long))
    SparseAttnConv(8, 4, heads=2, edge_dim=3, backend="csr")(torch.randn(6, 8), torch.randint(0, 6, (2, 15)), torch.randn(15, 3))
    assert seen == ["csr"] * 4
    for build in (lambda: GraphTransformer("atom", 16, 2, backend="fast"), lambda: SparseAttnConv(8, 4, backend="fast"),
                  lambda: SequenceTransformer(11, 3, backend="fast"), lambda: SparseTransformerLayer(16, 2, backend="fast")):
        with pytest.raises(ValueError, match="backend must be one of"):
            build()


@pytest.mark.parametrize("options", [{"attention": "graph"}, {"attention": "exphormer", "gps": True, "expander_seed": 0}])
def test_bond_features_through_a_table_equal_bond_features_per_edge(options, monkeypatch):
    # The model reads OGB bonds as codes into a table of every (edge type, bond) row; without codes
    # it adds each attention edge's type and bond embeddings per edge. Same outputs and gradients.
    from graph_sparse_attn.nn import graph

    torch.manual_seed(0)
    model = GraphTransformer("atom", 16, 2, depth=2, heads=2, edge_dim="bond", **options).double()
    batch = Batch.from_data_list([molecule(n, seed=n) for n in (5, 8, 6)])
    results = []
    for per_edge in (False, True):
        if per_edge:
            monkeypatch.setattr(graph, "_bond_codes", lambda edge_attr: None)
        if model.generator is not None:
            model.generator.manual_seed(0)
        out = model(batch.x, batch.edge_index, batch.edge_attr, batch.batch)
        results.append((out,) + torch.autograd.grad(out.square().sum(), [p for p in model.parameters()], allow_unused=True))
    for a, b in zip(*results):
        if a is None:
            assert b is None
        else:
            torch.testing.assert_close(a, b)


def test_atom_and_bond_features_outside_ogb_sizes_are_refused():
    model = GraphTransformer("atom", 16, 2, depth=1, heads=2, edge_dim="bond")
    data = molecule(5, seed=0)
    bad = data.edge_attr.clone()
    bad[0, 0] = 99
    with pytest.raises(ValueError, match="edge_attr holds a bond feature outside OGB's feature sizes"):
        model(data.x, data.edge_index, bad)
    bad = data.x.clone()
    bad[1, 2] = -1
    with pytest.raises(ValueError, match="x holds an atom feature outside OGB's feature sizes"):
        model(bad, data.edge_index, data.edge_attr)
    with pytest.raises(ValueError, match="lap_pe=True needs the encoding's size"):
        GraphTransformer("atom", 16, 2, lap_pe=True)


@pytest.mark.parametrize("edge_dim", ["bond", 3])
@pytest.mark.parametrize("attention", ["graph", "exphormer"])
def test_a_batch_without_bonds_runs(edge_dim, attention):
    # Single atoms (ions) have no bonds: attention runs over self loops (and virtual nodes) alone.
    torch.manual_seed(0)
    model = GraphTransformer("atom", 16, 2, depth=1, heads=2, edge_dim=edge_dim, attention=attention, gps=True)
    x = torch.zeros(2, 9, dtype=torch.long)
    edge_attr = torch.empty(0, 3, dtype=torch.long if edge_dim == "bond" else torch.float)
    out = model(x, torch.empty(2, 0, dtype=torch.long), edge_attr, torch.tensor([0, 1]))
    assert out.shape == (2, 2) and torch.isfinite(out).all()


def molecule_batch(sizes=(5, 7)):
    return Batch.from_data_list([molecule(n, seed=n) for n in sizes])


@pytest.mark.parametrize("change,match", [
    (lambda b: {"edge_attr": b.edge_attr[:-1]}, r"edge_attr must have shape \[E, 3\]"),  # one bond short: not read as "no bond"
    (lambda b: {"x": b.x[:, :5]}, r"x must be OGB atom features: long \[N, 9\]"),
    (lambda b: {"batch": b.batch[:-1]}, r"batch must be a LongTensor \[N\]"),
    (lambda b: {"batch": b.batch.flip(0)}, "batch must be sorted"),
    (lambda b: {"pe": torch.zeros(b.num_nodes, 4)}, "pe was given but the model has pe_dim=0"),
])
def test_graph_transformer_refuses_inputs_that_do_not_fit(change, match):
    batch = molecule_batch()
    model = GraphTransformer("atom", 16, 2, depth=1, heads=2, edge_dim="bond", attention="full")
    inputs = {"x": batch.x, "edge_index": batch.edge_index, "edge_attr": batch.edge_attr, "batch": batch.batch, **change(batch)}
    with pytest.raises(ValueError, match=match):
        model(**inputs)


def test_graph_transformer_refuses_edge_features_it_has_no_encoder_for():
    model = GraphTransformer(6, 8, 3, depth=1, heads=2)
    edge_index = torch.tensor([[0, 1, 2], [1, 2, 0]])
    with pytest.raises(ValueError, match="no edge_dim"):
        model(torch.randn(3, 6), edge_index, torch.randn(3, 4))
    with pytest.raises(ValueError, match=r"x must be floating-point \[N, in_channels\]=\[N, 6\]"):
        model(torch.randn(3, 5), edge_index)
    with pytest.raises(ValueError, match=r"x must be floating-point .* got torch.int64"):
        model(torch.ones(3, 6, dtype=torch.long), edge_index)
    with pytest.raises(ValueError, match="expander_degree must be even"):
        GraphTransformer(6, 8, 3, attention="exphormer", expander_degree=3)


@pytest.mark.parametrize("call,match", [
    (lambda m, t, b: m(torch.where(t == 0, 10, t), b), r"tokens must lie in \[0, vocab_size=10\)"),
    (lambda m, t, b: m(t, b, num_graphs=1), "batch holds graph 1 but num_graphs is 1"),
    (lambda m, t, b: m(t, b, num_graphs=3), "every sequence of batch needs a token"),  # would pool its neighbour's
    (lambda m, t, b: m(t, b.flip(0)), "batch must be sorted"),
    (lambda m, t, b: m(t, b, pos=-torch.ones_like(t)), "pos must be non-negative"),
    (lambda m, t, b: m(t, b.float()), "batch must be a LongTensor"),
])
def test_sequence_transformer_refuses_bad_inputs(call, match):
    model = SequenceTransformer(10, 3, dim=8, depth=1, heads=2, max_length=16, pattern=("window", {"window": 1}))
    tokens, batch = torch.tensor([0, 1, 2, 3, 4, 5]), torch.tensor([0, 0, 0, 1, 1, 1])
    with pytest.raises(ValueError, match=match):
        call(model, tokens, batch)


@pytest.mark.parametrize("options,error,match", [
    ({"pattern": ("window", {})}, ValueError, "needs parameter"),
    ({"pattern": ("window", {"window": -1})}, ValueError, "window must be >= 0"),
    ({"pattern": "window"}, TypeError, r"pattern must be \(name, params\)"),
    ({"knn": 2, "pattern": ("window", {"window": 1})}, ValueError, "pattern and gate do not apply"),
    ({"knn": 2, "gate": True}, ValueError, "pattern and gate do not apply"),
    ({"gate": "no"}, TypeError, "gate must be a bool"),
    ({"knn": 0}, ValueError, "knn must be >= 1"),
    ({"knn": 2.0}, TypeError, "knn must be an int"),
    ({"dim": 8.0}, ValueError, "dim must be a positive int"),
    ({"attn_dropout": 1.5}, ValueError, r"must be in \[0, 1\)"),
])
def test_sequence_transformer_refuses_bad_settings_when_built(options, error, match):
    with pytest.raises(error, match=match):
        SequenceTransformer(10, 3, **{"dim": 8, "depth": 1, "heads": 2, **options})


def test_knn_models_and_layers_refuse_a_pattern_they_would_ignore():
    tokens, batch = torch.arange(6), torch.tensor([0, 0, 0, 1, 1, 1])
    model = SequenceTransformer(10, 3, dim=8, depth=1, heads=2, knn=2)
    assert model(tokens, batch).shape == (2, 3)
    with pytest.raises(ValueError, match="edge_index does not apply to a knn model"):
        model(tokens, batch, sliding_window(6, 1, batch=batch))
    layer = SparseTransformerLayer(8, 2, knn=2)
    with pytest.raises(ValueError, match="edge_index, edge_gate: not used by a knn layer"):
        layer(torch.randn(6, 8), sliding_window(6, 1), edge_gate=torch.ones(16))
    with pytest.raises(ValueError, match="edge_dim and gate_mode do not apply"):
        SparseTransformerLayer(8, 2, knn=2, edge_dim=4)


@pytest.mark.parametrize("build,match", [
    (lambda: SparseTransformerLayer(8, 0), "positive multiple of heads"),
    (lambda: SparseTransformerLayer(8, 3), "positive multiple of heads"),
    (lambda: SparseTransformerLayer(8, 2, ffn_dim=0), "ffn_dim must be a positive int"),
    (lambda: SparseTransformerLayer(8, 2, gate_mode="bogus"), "gate_mode must be one of"),
    (lambda: SparseTransformerLayer(8, 2)(torch.randn(4, 1, 8), sliding_window(4, 1)), r"x must have shape \[N, dim\]"),
    (lambda: SparseTransformerLayer(8, 2)(torch.randn(4, 8), sliding_window(4, 1), edge_attr=torch.randn(10, 3)), "no edge_dim"),
])
def test_transformer_layer_refuses_bad_settings_and_inputs(build, match):
    with pytest.raises(ValueError, match=match):
        build()


def test_sequence_gate_penalty_over_an_edge_index_or_its_pattern():
    model = SequenceTransformer(20, 3, dim=16, depth=2, heads=2, max_length=64, gate=True)
    edge_index, pos = sliding_window(12, 2), torch.arange(12)
    expected = sum(gate.penalty(edge_index, pos) for gate in model.gates)
    torch.testing.assert_close(model.gate_penalty(edge_index, pos), expected)
    torch.testing.assert_close(model.gate_penalty(CSRPattern.from_edge_index(edge_index, 12), pos), expected)
    assert float(SequenceTransformer(20, 3, dim=16, depth=1, heads=2, max_length=64).gate_penalty(edge_index, pos)) == 0.0


def test_knn_attention_takes_an_empty_input_and_refuses_a_non_int_k():
    from graph_sparse_attn.nn import KNNAttention

    assert KNNAttention(8, 2, 3)(torch.randn(0, 8)).shape == (0, 8)
    model = SequenceTransformer(10, 3, dim=8, depth=1, heads=2, knn=2)
    assert model(torch.empty(0, dtype=torch.long), torch.empty(0, dtype=torch.long)).shape == (0, 3)
    for k, error in [(True, TypeError), (2.5, TypeError), (None, TypeError), (0, ValueError)]:
        with pytest.raises(error, match="k must"):
            KNNAttention(8, 2, k)


def test_sinusoidal_sequence_transformer_runs_in_bfloat16():
    torch.manual_seed(0)
    model = SequenceTransformer(10, 3, dim=8, depth=1, heads=2, position="sinusoidal").eval()
    tokens, batch = torch.randint(0, 10, (300,)), torch.zeros(300, dtype=torch.long)
    positions = model.pos_embed(torch.arange(300))
    half = model.bfloat16()
    # Frequencies and angles stay float32: positions are not blurred by bfloat16.
    torch.testing.assert_close(half.pos_embed(torch.arange(300)), positions, atol=0, rtol=0)
    assert half(tokens, batch).dtype == torch.bfloat16


def test_transformer_layer_resets_a_local_branch_without_reset_parameters():
    class Local(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(8, 8)

        def forward(self, h, edge_index, edge_attr):
            return self.lin(h)

    layer = SparseTransformerLayer(8, 2, local=Local())
    torch.nn.init.zeros_(layer.local.lin.weight)
    layer.reset_parameters()
    assert layer.local.lin.weight.abs().sum() > 0


def test_graph_transformer_names_bad_sizes_inputs_and_options_it_would_ignore():
    ring = torch.arange(6)
    edge_index = torch.stack([ring, (ring + 1) % 6])
    x = torch.randn(6, 5)
    for kwargs, error, match in [
        (dict(hidden_channels=8.0), TypeError, "hidden_channels must be an int"),
        (dict(depth=2.0), TypeError, "depth must be an int"),
        (dict(in_channels=True), ValueError, "in_channels must be a positive int"),
        (dict(heads=0), ValueError, "heads must be >= 1"),
        (dict(hidden_channels=18, heads=4), ValueError, "hidden_channels \\(18\\) must be a positive multiple of heads \\(4\\)"),
        (dict(expander_seed=3), ValueError, "expander_seed applies to attention='exphormer'"),
        (dict(gps="false"), TypeError, "gps must be a bool"),
        (dict(pe_dim=3, lap_pe="no"), TypeError, "lap_pe must be a bool"),
        (dict(edge_dim=True), ValueError, "edge_dim must be a positive int"),
    ]:
        with pytest.raises(error, match=match):
            GraphTransformer(**{"in_channels": 5, "hidden_channels": 8, "out_channels": 2, "depth": 1, "heads": 2, **kwargs})
    model = GraphTransformer(5, 8, 2, depth=1, heads=2, pe_dim=3)
    with pytest.raises(ValueError, match="pe must be floating-point"):
        model(x, edge_index, pe=torch.ones(6, 3, dtype=torch.long))
    torch.testing.assert_close(model(x, edge_index, pe=torch.ones(6, 3, dtype=torch.float64)), model(x, edge_index, pe=torch.ones(6, 3)))
    with pytest.raises(ValueError, match="num_graphs=2 needs a batch vector"):
        model(x, edge_index, pe=torch.ones(6, 3), num_graphs=2)
    plain = GraphTransformer(5, 8, 2, depth=1, heads=2)
    with pytest.raises(ValueError, match="attn_type must hold edge types in"):
        plain(x, edge_index, attn_index=edge_index, attn_type=torch.full((6,), 99))
    with pytest.raises(TypeError, match="attn_type must be an int64 or int32 tensor, got torch.bool"):
        plain(x, edge_index, attn_index=edge_index, attn_type=torch.zeros(6, dtype=torch.bool))
    with pytest.raises(ValueError, match="attn_index: .*it must span N \\+ B \\* num_virtual = 6 nodes"):
        plain(x, edge_index, attn_index=edge_index + 1, attn_type=torch.zeros(6, dtype=torch.long))


def two_graphs_with_self_loops_added_to_the_batch():
    """Two graphs with edge features, batched, then ``add_self_loops`` on the whole batch: it appends
    every graph's loops after all graphs' edges, so the edges are no longer graph by graph."""
    from torch_geometric.utils import add_self_loops

    torch.manual_seed(0)
    graphs = [Data(x=torch.randn(3, 4), edge_index=torch.tensor([[0, 1], [1, 2]]), edge_attr=torch.randn(2, 2)) for _ in range(2)]
    batch = Batch.from_data_list(graphs)
    edge_index, edge_attr = add_self_loops(batch.edge_index, batch.edge_attr, fill_value=1.0, num_nodes=6)
    alone = [(g.x, *add_self_loops(g.edge_index, g.edge_attr, fill_value=1.0, num_nodes=3)) for g in graphs]
    return batch, edge_index, edge_attr, alone


def test_graph_transformer_edge_features_do_not_depend_on_the_order_of_edges():
    batch, edge_index, edge_attr, alone = two_graphs_with_self_loops_added_to_the_batch()
    model = GraphTransformer(4, 16, 1, edge_dim=2, depth=1, heads=2).eval()
    batched = model(batch.x, edge_index, edge_attr, batch.batch)
    torch.testing.assert_close(batched, torch.cat([model(*graph) for graph in alone]))
    order = torch.randperm(edge_index.size(1))
    torch.testing.assert_close(model(batch.x, edge_index[:, order], edge_attr[order], batch.batch.int(), num_graphs=2), batched)


def test_graph_transformer_refuses_graph_local_edge_ids_it_cannot_place():
    batch, edge_index, edge_attr, _ = two_graphs_with_self_loops_added_to_the_batch()
    model = GraphTransformer(4, 16, 1, edge_dim=2, depth=1, heads=2).eval()
    own = model.attention_pattern(batch.edge_index, 6, batch.batch)  # graph-local edge ids, as a PyG batch holds them
    given = dict(attn_index=own.index, attn_type=own.type, attn_edge=own.edge)
    model(batch.x, batch.edge_index, batch.edge_attr, batch.batch, **given)
    with pytest.raises(ValueError, match="edge_index must list its edges graph by graph"):
        model(batch.x, edge_index, edge_attr, batch.batch, **given)
    beyond = torch.where(own.edge == 1, 2, own.edge)  # graph 0 has edges 0 and 1 only; 2 is graph 1's first
    with pytest.raises(ValueError, match="attn_edge must hold -1 or the position of an edge among its own graph's edges"):
        model(batch.x, batch.edge_index, batch.edge_attr, batch.batch, **{**given, "attn_edge": beyond})
    with pytest.raises(TypeError, match="attn_edge must be an int64 or int32 tensor"):
        model(batch.x, batch.edge_index, batch.edge_attr, batch.batch, **{**given, "attn_edge": own.edge.float()})


def test_layers_refuse_edge_inputs_they_would_ignore():
    ring = torch.arange(6)
    edge_index = torch.stack([ring, (ring + 1) % 6])
    x = torch.randn(6, 8)
    from graph_sparse_attn.nn import SparseMultiheadAttention

    with pytest.raises(ValueError, match="edge_attr/edge_attr_index were given but the attention has no edge_dim"):
        SparseMultiheadAttention(8, 2)(x, edge_index, edge_attr_index=torch.zeros(6, dtype=torch.long))
    with pytest.raises(ValueError, match="the layer has no local branch"):
        SparseTransformerLayer(8, 2)(x, edge_index, local_edge_index=edge_index)


@pytest.mark.parametrize("pooling", ["mean", "sum"])
def test_graph_pooling_reads_the_final_node_states_as_named(pooling):
    from torch_geometric.nn import global_add_pool, global_mean_pool

    torch.manual_seed(0)
    batch = torch.tensor([0, 0, 0, 1, 1, 1, 1])
    edge_index = torch.tensor([[0, 1, 3, 4, 5], [1, 2, 4, 5, 6]])
    model = GraphTransformer(5, 8, 3, depth=1, heads=2, pooling=pooling).eval()
    model.head = torch.nn.Identity()
    seen = {}
    model.norm.register_forward_hook(lambda module, inputs, out: seen.setdefault("h", out))
    out = model(torch.randn(7, 5), edge_index, batch=batch)
    pool = global_mean_pool if pooling == "mean" else global_add_pool
    torch.testing.assert_close(out, pool(seen["h"], batch))


def test_sinusoidal_positions_follow_vaswani():
    from graph_sparse_attn.nn.sequence import SinusoidalPositions

    pos = torch.arange(6)
    encoding = SinusoidalPositions(8)(pos)
    for i in range(4):
        frequency = 10000.0 ** (-2 * i / 8)
        torch.testing.assert_close(encoding[:, 2 * i], torch.sin(pos * frequency))
        torch.testing.assert_close(encoding[:, 2 * i + 1], torch.cos(pos * frequency))
