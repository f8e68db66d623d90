"""torch.compile over our layers and models with a prebuilt pattern: no graph breaks, output equal to eager.

Checked as PyG checks its own layers: ``torch._dynamo.explain(module)(...).graph_break_count == 0``.
The compiled run uses the ``aot_eager`` backend (the full tracing stack without inductor's C++
build, which would dominate CI time); inductor itself is exercised by the ``compiled`` kernels.
"""
import pytest
import torch

from graph_sparse_attn import CSRPattern, SparseAttnConv, SparseTransformerLayer


def _assert_compiles_like_eager(module, *args, **kwargs):
    explanation = torch._dynamo.explain(module)(*args, **kwargs)
    assert explanation.graph_break_count == 0, [b.reason.splitlines()[0] for b in explanation.break_reasons]
    torch._dynamo.reset()
    compiled = torch.compile(module, backend="aot_eager", fullgraph=True)
    out, ref = compiled(*args, **kwargs), module(*args, **kwargs)
    torch.testing.assert_close(out, ref)
    params = [p for p in module.parameters() if p.requires_grad]
    for g, r in zip(torch.autograd.grad(out.square().sum(), params), torch.autograd.grad(ref.square().sum(), params)):
        torch.testing.assert_close(g, r)


@pytest.fixture
def graph():
    gen = torch.Generator().manual_seed(0)
    edge_index = torch.randint(0, 40, (2, 160), generator=gen)
    return torch.randn(40, 16, generator=gen), edge_index, torch.randn(160, 4, generator=gen)


@pytest.mark.parametrize("beta", [False, True])
def test_sparse_attn_conv(graph, beta):
    x, edge_index, edge_attr = graph
    torch.manual_seed(0)
    conv = SparseAttnConv(16, 8, heads=2, edge_dim=4, beta=beta)
    _assert_compiles_like_eager(conv, x, CSRPattern.from_edge_index(edge_index, 40), edge_attr)


def test_sparse_transformer_layer_with_sorted_edge_features(graph):
    x, edge_index, edge_attr = graph
    torch.manual_seed(0)
    layer = SparseTransformerLayer(16, 2, edge_dim=4).eval()
    pattern = CSRPattern.from_edge_index(edge_index, 40)
    _assert_compiles_like_eager(layer, x, pattern.sorted(), edge_attr=pattern.caller_to_sorted(edge_attr))


def test_training_layer_with_dropout_has_no_graph_breaks(graph):
    # Our CPU dropout hands over to F.dropout under torch.compile, whose random numbers inductor generates.
    x, edge_index, _ = graph
    layer = SparseTransformerLayer(16, 2, dropout=0.3).train()
    pattern = CSRPattern.from_edge_index(edge_index, 40).sorted()
    explanation = torch._dynamo.explain(layer)(x, pattern)
    assert explanation.graph_break_count == 0, [b.reason.splitlines()[0] for b in explanation.break_reasons]
