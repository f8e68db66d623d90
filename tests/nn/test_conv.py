"""`SparseAttnConv` against PyG's `TransformerConv` with copied weights."""
import pytest
import torch
from torch_geometric.explain import Explainer, GNNExplainer
from torch_geometric.explain.algorithm.utils import clear_masks, set_masks
from torch_geometric.nn import TransformerConv

from graph_sparse_attn import CSRPattern, SparseAttnConv
from graph_sparse_attn.ops.attention import attention_with_weights

OPTIONS = [
    {},
    {"concat": False},
    {"beta": True},
    {"beta": True, "concat": False},
    {"edge_dim": 3},
    {"edge_dim": 3, "beta": True, "concat": False},
    {"root_weight": False},
    {"root_weight": False, "beta": True},
    {"bias": False, "edge_dim": 2},
    {"heads": 1},
]


def make_pair(in_channels, kwargs):
    kwargs = {"heads": 3, **kwargs}
    ref = TransformerConv(in_channels, 5, **kwargs).double()
    ours = SparseAttnConv(in_channels, 5, **kwargs).double()
    ours.load_state_dict(ref.state_dict())
    return ref, ours


def graph(num_src, num_dst, num_edges, edge_dim, seed):
    gen = torch.Generator().manual_seed(seed)
    edge_index = torch.stack([torch.randint(0, num_src, (num_edges,), generator=gen), torch.randint(0, num_dst - 1, (num_edges,), generator=gen)])
    edge_attr = torch.randn(num_edges, edge_dim, dtype=torch.float64, generator=gen) if edge_dim else None
    return edge_index, edge_attr, gen


@pytest.mark.parametrize("kwargs", OPTIONS)
def test_matches_transformer_conv_outputs_attention_and_gradients(kwargs):
    edge_index, edge_attr, gen = graph(25, 25, 150, kwargs.get("edge_dim"), seed=len(str(kwargs)))
    x = torch.randn(25, 8, dtype=torch.float64, generator=gen)
    ref, ours = make_pair(8, kwargs)
    out_r, (ei_r, alpha_r) = ref(x, edge_index, edge_attr, return_attention_weights=True)
    out_o, (ei_o, alpha_o) = ours(x, edge_index, edge_attr, return_attention_weights=True)
    torch.testing.assert_close(out_o, out_r, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(alpha_o, alpha_r, atol=1e-5, rtol=1e-5)
    assert torch.equal(ei_o, ei_r)

    loss_r = (out_r.square().sum() + alpha_r.square().sum())
    loss_o = (out_o.square().sum() + alpha_o.square().sum())
    loss_r.backward()
    loss_o.backward()
    for (name, p_r), p_o in zip(ref.named_parameters(), ours.parameters()):
        torch.testing.assert_close(p_o.grad, p_r.grad, atol=1e-6, rtol=1e-6, msg=name)


@pytest.mark.parametrize("kwargs", [{}, {"edge_dim": 4, "beta": True}, {"concat": False}])
def test_bipartite_matches_transformer_conv(kwargs):
    edge_index, edge_attr, gen = graph(17, 11, 70, kwargs.get("edge_dim"), seed=3)
    x_src = torch.randn(17, 6, dtype=torch.float64, generator=gen)
    x_dst = torch.randn(11, 4, dtype=torch.float64, generator=gen)
    ref, ours = make_pair((6, 4), kwargs)
    out_r = ref((x_src, x_dst), edge_index, edge_attr)
    out_o = ours((x_src, x_dst), edge_index, edge_attr)
    assert out_o.shape[0] == 11
    torch.testing.assert_close(out_o, out_r, atol=1e-5, rtol=1e-5)


def test_lazy_in_channels_and_prebuilt_pattern():
    edge_index, _, gen = graph(20, 20, 90, None, seed=4)
    x = torch.randn(20, 7, generator=gen)
    ref = TransformerConv(-1, 4, heads=2)
    ours = SparseAttnConv(-1, 4, heads=2)
    ref(x, edge_index), ours(x, edge_index)  # materialise the lazy weights
    ours.load_state_dict(ref.state_dict())
    pattern = CSRPattern.from_edge_index(edge_index, 20)
    torch.testing.assert_close(ours(x, pattern), ref(x, edge_index), atol=1e-5, rtol=1e-5)


def test_dropout_in_training_only_and_shared_with_edge_values():
    edge_index, edge_attr, gen = graph(20, 20, 120, 3, seed=5)
    x = torch.randn(20, 8, dtype=torch.float64, generator=gen)
    ref, ours = make_pair(8, {"edge_dim": 3, "dropout": 0.5})
    ours.eval(), ref.eval()
    torch.testing.assert_close(ours(x, edge_index, edge_attr), ref(x, edge_index, edge_attr))

    ours.train()
    torch.manual_seed(0)
    out = ours(x, edge_index, edge_attr)
    # TransformerConv's message with one dropout mask for both terms: Σ w_ij (v_j + W_e e_ij).
    heads, channels = 3, 5
    src, dst = edge_index
    q, k, v, e = (lin(inp).view(-1, heads, channels) for lin, inp in ((ours.lin_query, x), (ours.lin_key, x), (ours.lin_value, x), (ours.lin_edge, edge_attr)))
    bias = (q[dst] * e).sum(-1) / channels**0.5
    torch.manual_seed(0)
    _, _, weights = attention_with_weights(q, k, v, edge_index, edge_bias=bias, dropout=0.5, training=True)
    assert (weights == 0).any()
    messages = weights[..., None] * (v[src] + e)
    expected = torch.zeros(20, heads, channels, dtype=x.dtype).index_add(0, dst, messages).reshape(20, -1) + ours.lin_skip(x)
    torch.testing.assert_close(out, expected)


def test_missing_or_misshapen_edge_attr_is_named():
    edge_index, edge_attr, gen = graph(10, 10, 30, 3, seed=6)
    conv = SparseAttnConv(4, 2, edge_dim=3).double()
    x = torch.randn(10, 4, dtype=torch.float64)
    with pytest.raises(ValueError, match="edge_attr"):
        conv(x, edge_index)
    with pytest.raises(ValueError, match="edge_attr"):
        conv(x, edge_index, edge_attr[:, :2])
    with pytest.raises(ValueError, match="edge_index"):
        conv(x, edge_index + 100, edge_attr)
    with pytest.raises(ValueError, match=r"x must be \[N, in_channels\]"):  # [N, 1, F] would broadcast to [N, N, F]
        conv(x[:, None], edge_index, edge_attr)


@pytest.mark.parametrize("prebuilt", [False, True], ids=["edge_index", "CSRPattern"])
@pytest.mark.parametrize("kwargs", [{}, {"edge_dim": 3, "beta": True}])
def test_explain_edge_masks_act_as_in_transformer_conv(kwargs, prebuilt):
    """PyG's explain mode (what `Explainer`/`GNNExplainer` set) masks each edge's message alike."""
    edge_index, edge_attr, gen = graph(12, 12, 40, kwargs.get("edge_dim"), seed=8)
    x = torch.randn(12, 8, dtype=torch.float64, generator=gen)
    ref, ours = make_pair(8, kwargs)
    masks = []
    for conv, edges in ((ref, edge_index), (ours, CSRPattern.from_edge_index(edge_index, 12) if prebuilt else edge_index)):
        mask = torch.nn.Parameter(torch.randn(40, dtype=torch.float64, generator=torch.Generator().manual_seed(9)))
        set_masks(conv, mask, edge_index, apply_sigmoid=True)
        out = conv(x, edges, edge_attr)
        out.square().sum().backward()
        clear_masks(conv)
        masks.append((out, mask.grad))
    (out_r, grad_r), (out_o, grad_o) = masks
    torch.testing.assert_close(out_o, out_r)
    torch.testing.assert_close(grad_o, grad_r)
    assert not torch.allclose(out_o, ours(x, edge_index, edge_attr))  # the mask did change the output


def test_explainer_runs_on_the_layer():
    explainer = Explainer(SparseAttnConv(4, 3), GNNExplainer(epochs=2), explanation_type="model", edge_mask_type="object",
                          model_config=dict(mode="multiclass_classification", task_level="node", return_type="raw"))
    edge_index = torch.randint(0, 10, (2, 30), generator=torch.Generator().manual_seed(1))
    assert explainer(torch.randn(10, 4), edge_index, index=0).edge_mask.shape == (30,)


@pytest.mark.parametrize("kwargs", [{}, {"edge_dim": 3, "heads": 2}])
def test_message_hooks_see_and_replace_messages_as_in_transformer_conv(kwargs):
    """PyG's message forward hooks (`AttentionExplainer`, `to_hetero_with_bases`) run on the per-edge messages
    with the same arguments and ``_alpha`` as in `TransformerConv`, and what they return is aggregated."""
    edge_index, edge_attr, gen = graph(12, 12, 40, kwargs.get("edge_dim"), seed=10)
    x = torch.randn(12, 8, dtype=torch.float64, generator=gen)
    ref, ours = make_pair(8, kwargs)
    scale = torch.rand(40, 1, 1, dtype=torch.float64, generator=gen)
    seen = {}

    def hook(module, inputs, messages):
        seen[module] = (sorted(inputs[0]), module._alpha.clone())
        return messages * scale

    outs = []
    for conv in (ref, ours):
        handle = conv.register_message_forward_hook(hook)
        outs.append(conv(x, edge_index, edge_attr))
        handle.remove()
        assert conv._alpha is None
    torch.testing.assert_close(outs[1], outs[0])
    assert seen[ours][0] == seen[ref][0]
    torch.testing.assert_close(seen[ours][1], seen[ref][1])
    assert not torch.allclose(outs[1], ours(x, edge_index, edge_attr))  # the hook's output was used


def test_attention_explainer_reads_the_layer_s_attention():
    from torch_geometric.explain import AttentionExplainer

    edge_index, _, gen = graph(10, 10, 30, None, seed=11)
    x = torch.randn(10, 4, dtype=torch.float64, generator=gen)
    masks = []
    for conv in make_pair(4, {}):
        explainer = Explainer(conv, AttentionExplainer(), explanation_type="model", edge_mask_type="object",
                              model_config=dict(mode="multiclass_classification", task_level="node", return_type="raw"))
        masks.append(explainer(x, edge_index).edge_mask)
    torch.testing.assert_close(masks[1], masks[0])
    assert masks[1].abs().sum() > 0


def test_hooks_of_steps_the_layer_does_not_run_are_refused():
    conv = SparseAttnConv(4, 2)
    conv.register_aggregate_forward_hook(lambda module, inputs, out: out)
    with pytest.raises(ValueError, match="message forward hooks only.*aggregate_forward hooks registered"):
        conv(torch.randn(5, 4), torch.tensor([[0, 1], [1, 2]]))


def test_options_that_would_be_ignored_are_refused():
    with pytest.raises(ValueError, match="aggr must be 'add'"):
        SparseAttnConv(4, 2, aggr="mean")
    with pytest.raises(ValueError, match="flow must be 'source_to_target'"):
        SparseAttnConv(4, 2, flow="target_to_source")
    edge_index, edge_attr, _ = graph(10, 10, 30, 3, seed=6)
    with pytest.raises(ValueError, match="edge_attr \\(or an adj_t with \\[E, F\\] values\\) was given but the layer has no edge features"):
        SparseAttnConv(4, 2).double()(torch.randn(10, 4, dtype=torch.float64), edge_index, edge_attr)
    # The same features carried by a hybrid adj_t [N_dst, N_src, F] were dropped silently.
    hybrid = torch.sparse_coo_tensor(edge_index.flip(0), edge_attr, (10, 10, 3)).coalesce()
    with pytest.raises(ValueError, match="no edge features"):
        SparseAttnConv(4, 2).double()(torch.randn(10, 4, dtype=torch.float64), hybrid)


def test_sum_aggregation_spelled_as_pyg_accepts_it():
    from torch_geometric.nn.aggr import SumAggregation

    x, edge_index = torch.randn(6, 4), torch.tensor([[0, 1, 2, 3], [1, 2, 3, 0]])
    torch.manual_seed(0)
    reference = SparseAttnConv(4, 2)
    for aggr in ("sum", SumAggregation()):
        torch.manual_seed(0)
        torch.testing.assert_close(SparseAttnConv(4, 2, aggr=aggr)(x, edge_index), reference(x, edge_index))


def test_reset_parameters_and_repr():
    conv = SparseAttnConv(4, 2, heads=3)
    before = conv.lin_query.weight.clone()
    conv.reset_parameters()
    assert not torch.equal(before, conv.lin_query.weight)
    assert repr(conv) == "SparseAttnConv(4, 2, heads=3)"


def test_lazy_edge_features_size_themselves_on_the_first_call():
    x, edge_index, edge_attr = torch.randn(5, 4), torch.tensor([[0, 1, 2, 3], [1, 2, 3, 4]]), torch.randn(4, 2)
    for in_channels in (4, -1):
        ours, theirs = SparseAttnConv(in_channels, 3, edge_dim=-1), TransformerConv(in_channels, 3, edge_dim=-1)
        ours(x, edge_index, edge_attr), theirs(x, edge_index, edge_attr)  # the first calls size every lazy weight
        ours.load_state_dict(theirs.state_dict())
        torch.testing.assert_close(ours(x, edge_index, edge_attr), theirs(x, edge_index, edge_attr))


def test_edge_features_in_a_coo_adj_t_get_their_gradient():
    x, edge_index = torch.randn(5, 4), torch.tensor([[0, 1, 2, 3], [1, 2, 3, 4]])
    edge_attr = torch.randn(4, 2, requires_grad=True)
    adj_t = torch.sparse_coo_tensor(edge_index.flip(0), edge_attr, (5, 5, 2)).coalesce()
    conv = SparseAttnConv(4, 3, edge_dim=2)
    (grad,) = torch.autograd.grad(conv(x, adj_t).sum(), edge_attr)
    (expected,) = torch.autograd.grad(conv(x, edge_index, edge_attr).sum(), edge_attr)
    torch.testing.assert_close(grad, expected)
    uncoalesced = torch.sparse_coo_tensor(edge_index.flip(0), edge_attr, (5, 5, 2))
    with pytest.raises(ValueError, match="call adj_t.coalesce\\(\\) first"):
        SparseAttnConv(4, 3, edge_dim=2)(x, uncoalesced)


def test_half_edge_features_made_under_autocast_are_taken():
    x, edge_index = torch.randn(5, 4), torch.tensor([[0, 1, 2, 3], [1, 2, 3, 4]])
    conv, encoder = SparseAttnConv(4, 3, edge_dim=2), torch.nn.Linear(3, 2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = conv(x, edge_index, encoder(torch.randn(4, 3)))  # bfloat16 features beside float32 weights
    assert out.shape == (5, 3) and torch.isfinite(out).all()


def test_sizes_are_named():
    for kwargs, error, match in ((dict(heads=2.5), TypeError, "heads must be an int"), (dict(out_channels=0), ValueError, "out_channels must be >= 1")):
        with pytest.raises(error, match=match):
            SparseAttnConv(**{"in_channels": 4, "out_channels": 3, **kwargs})
