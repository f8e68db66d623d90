"""`SparseAttnConv` on every adjacency form `TransformerConv` accepts, against `TransformerConv` itself.

Covers what PyG's own ``test/nn/conv/test_transformer_conv.py`` covers (``edge_dim`` × ``concat``,
square and bipartite, ``return_attention_weights``, ``_alpha`` cleared, TorchScript modules, and
``SparseTensor`` where ``torch-sparse`` is installed) on random graphs with unsorted edges and a
target without edges, plus ``EdgeIndex`` (reusing its cached sorts) and prebuilt patterns.
"""
import dataclasses
from typing import Optional, Tuple

import pytest
import torch
from torch import Tensor
from torch_geometric import EdgeIndex
from torch_geometric.nn import TransformerConv
from torch_geometric.typing import Adj, SparseTensor
from torch_geometric.utils import sort_edge_index, to_edge_index

from graph_sparse_attn import CSRPattern, SparseAttnConv
from graph_sparse_attn.ops.adjacency import edges_from_adjacency

HEADS, OUT = 2, 3


def unique_graph(num_src: int, num_dst: int, num_edges: int, seed: int) -> Tensor:
    """``edge_index [2, E]`` without repeated pairs (sparse layouts merge them), in a shuffled order;
    the last target has no edges."""
    gen = torch.Generator().manual_seed(seed)
    keys = torch.randperm(num_src * (num_dst - 1), generator=gen)[:num_edges]
    return torch.stack([keys % num_src, keys // num_src])


def sparse_adj_t(edge_index: Tensor, values: Tensor, num_src: int, num_dst: int, layout: torch.layout) -> Tensor:
    """``adj_t [N_dst, N_src(, F)]`` in ``layout`` with ``values`` on edge ``j → i`` at ``[i, j]``."""
    adj = torch.sparse_coo_tensor(edge_index.flip(0), values, (num_dst, num_src) + values.shape[1:]).coalesce()
    return {torch.sparse_coo: adj, torch.sparse_csr: adj.to_sparse_csr(), torch.sparse_csc: adj.to_sparse_csc()}[layout]


def stored_order(edge_index: Tensor, num_src: int, num_dst: int, layout: torch.layout) -> Tensor:
    """Caller edge id of each stored non-zero of the ``layout`` adjacency (PyG's per-edge order)."""
    ids = torch.arange(edge_index.size(1), dtype=torch.float64)
    return to_edge_index(sparse_adj_t(edge_index, ids, num_src, num_dst, layout))[1].long()


def make_pair(in_channels, **kwargs):
    ref = TransformerConv(in_channels, OUT, HEADS, beta=True, **kwargs).double()
    ours = SparseAttnConv(in_channels, OUT, HEADS, beta=True, **kwargs).double()
    ours.load_state_dict(ref.state_dict())
    return ref, ours


def inputs(bipartite: bool, edge_dim: Optional[int], seed: int = 0):
    num_src, num_dst = (9, 6) if bipartite else (8, 8)
    gen = torch.Generator().manual_seed(seed + 100)
    x_src = torch.randn(num_src, 5, dtype=torch.float64, generator=gen)
    x = (x_src, torch.randn(num_dst, 4, dtype=torch.float64, generator=gen)) if bipartite else x_src
    edge_index = unique_graph(num_src, num_dst, 25, seed)
    edge_attr = torch.randn(25, edge_dim, dtype=torch.float64, generator=gen) if edge_dim else None
    return x, edge_index, edge_attr, num_src, num_dst


LAYOUTS = [torch.sparse_csr, torch.sparse_csc, torch.sparse_coo]


@pytest.mark.parametrize("bipartite", [False, True])
@pytest.mark.parametrize("edge_dim", [None, 8])
@pytest.mark.parametrize("concat", [True, False])
def test_every_adjacency_matches_transformer_conv(bipartite, edge_dim, concat):
    x, edge_index, edge_attr, num_src, num_dst = inputs(bipartite, edge_dim)
    ref, ours = make_pair((5, 4) if bipartite else 5, edge_dim=edge_dim, concat=concat)
    out = ref(x, edge_index, edge_attr)
    assert out.shape == (num_dst, OUT * (HEADS if concat else 1))
    torch.testing.assert_close(ours(x, edge_index, edge_attr), out)
    torch.testing.assert_close(ours(x, CSRPattern.from_edge_index(edge_index, (num_src, num_dst)), edge_attr), out)

    for layout in LAYOUTS:  # PyG's adj.t() convention, per-edge tensors in stored order
        order = stored_order(edge_index, num_src, num_dst, layout)
        adj_t = sparse_adj_t(edge_index, torch.ones(25, dtype=torch.float64), num_src, num_dst, layout)
        attr = None if edge_attr is None else edge_attr[order]
        torch.testing.assert_close(ours(x, adj_t, attr), out, msg=str(layout))
        if layout != torch.sparse_csc:  # TransformerConv's propagate takes COO and CSR only
            torch.testing.assert_close(ours(x, adj_t, attr), ref(x, adj_t, attr), msg=str(layout))
        if edge_attr is not None:  # a hybrid adj_t [N_dst, N_src, F] carries the edge features
            hybrid = sparse_adj_t(edge_index, edge_attr, num_src, num_dst, layout)
            torch.testing.assert_close(ours(x, hybrid), out, msg=f"hybrid {layout}")

    unsorted = EdgeIndex(edge_index, sparse_size=(num_src, num_dst))
    identity = torch.arange(edge_index.size(1))
    lexicographic, lex_attr = sort_edge_index(edge_index, edge_attr)  # by (source, target): saves a sort
    cases = {
        "unsorted": (unsorted, identity),
        "by source": unsorted.sort_by("row"),
        "by target": unsorted.sort_by("col"),
    }
    for name, (ei, perm) in cases.items():
        attr = None if edge_attr is None else edge_attr[perm]
        torch.testing.assert_close(ours(x, ei, attr), ref(x, ei, attr), msg=name)
    ei = EdgeIndex(lexicographic, sparse_size=(num_src, num_dst), sort_order="row")
    torch.testing.assert_close(ours(x, ei, lex_attr), ref(x, ei, lex_attr), msg="lexicographic")


@pytest.mark.parametrize("edge_dim", [None, 8])
@pytest.mark.parametrize("concat", [True, False])
def test_attention_weights_per_input_type_and_gradients(edge_dim, concat):
    x, edge_index, edge_attr, num_src, num_dst = inputs(False, edge_dim, seed=1)
    ref, ours = make_pair(5, edge_dim=edge_dim, concat=concat)
    out_r, (index_r, alpha_r) = ref(x, edge_index, edge_attr, return_attention_weights=True)
    out_o, (index_o, alpha_o) = ours(x, edge_index, edge_attr, return_attention_weights=True)
    assert index_o is edge_index and ours._alpha is None
    torch.testing.assert_close(out_o, out_r)
    torch.testing.assert_close(alpha_o, alpha_r)
    (out_r.square().sum() + alpha_r.square().sum()).backward()
    (out_o.square().sum() + alpha_o.square().sum()).backward()
    for (name, p_r), p_o in zip(ref.named_parameters(), ours.parameters()):
        torch.testing.assert_close(p_o.grad, p_r.grad, msg=name)

    pattern = CSRPattern.from_edge_index(edge_index, num_src)
    _, (index_p, alpha_p) = ours(x, pattern, edge_attr, return_attention_weights=False)  # any bool asks
    assert torch.equal(index_p, edge_index)
    torch.testing.assert_close(alpha_p, alpha_r)

    ei, perm = EdgeIndex(edge_index, sparse_size=(num_src, num_dst)).sort_by("col")
    _, (index_e, alpha_e) = ours(x, ei, None if edge_attr is None else edge_attr[perm], return_attention_weights=True)
    assert index_e is ei
    torch.testing.assert_close(alpha_e, alpha_r[perm])

    for layout in LAYOUTS:
        order = stored_order(edge_index, num_src, num_dst, layout)
        adj_t = sparse_adj_t(edge_index, torch.ones(25, dtype=torch.float64), num_src, num_dst, layout)
        attr = None if edge_attr is None else edge_attr[order]
        out_s, (adj_alpha, alpha_s) = ours(x, adj_t, attr, return_attention_weights=True)
        assert ours._alpha is None
        torch.testing.assert_close(out_s, out_r)
        grads = torch.autograd.grad(out_s.square().sum() + alpha_s.square().sum(), list(ours.parameters()))
        for (name, p_r), g in zip(ref.named_parameters(), grads):
            torch.testing.assert_close(g, p_r.grad, msg=f"{layout} {name}")
        torch.testing.assert_close(alpha_s, alpha_r[order])
        # the caller's adjacency comes back as it was, as TransformerConv returns it
        assert adj_alpha is adj_t


@pytest.mark.parametrize("sort_order", ["row", "col"])
@pytest.mark.parametrize("sparse_size", [(40, 40), (None, None)])
def test_edge_index_pattern_reuses_its_sort(monkeypatch, sort_order, sparse_size):
    gen = torch.Generator().manual_seed(2)
    edges = torch.randint(0, 40, (2, 300), generator=gen)  # with repeated pairs
    edges = sort_edge_index(edges, sort_by_row=sort_order == "row")
    ei = EdgeIndex(edges, sparse_size=sparse_size, sort_order=sort_order)
    num_nodes = (40, 40) if sparse_size[0] else (43, 41)  # an unsized EdgeIndex takes x's sizes
    expected = CSRPattern.from_edge_index(edges, num_nodes)
    sorts = []
    real_sort = torch.sort
    monkeypatch.setattr(torch, "sort", lambda *a, **k: sorts.append(1) or real_sort(*a, **k))
    pattern, values = edges_from_adjacency(ei, num_nodes)
    monkeypatch.undo()
    assert values is None and len(sorts) == 1  # one direction is the EdgeIndex's own order
    for field in dataclasses.fields(CSRPattern):
        got, want = getattr(pattern, field.name), getattr(expected, field.name)
        assert torch.equal(got, want) if isinstance(want, Tensor) else got == want, field.name


def test_sparse_tensor_matches_transformer_conv():
    pytest.importorskip("torch_sparse")  # then torch_geometric.typing.SparseTensor is torch_sparse's
    x, edge_index, edge_attr, num_src, num_dst = inputs(True, 8, seed=3)
    ref, ours = make_pair((5, 4), edge_dim=8)
    adj = SparseTensor.from_edge_index(edge_index, edge_attr, sparse_sizes=(num_src, num_dst))
    out = ref(x, edge_index, edge_attr)
    torch.testing.assert_close(ours(x, adj.t()), out)  # edge_attr from the SparseTensor's values
    result_r = ref(x, adj.t(), return_attention_weights=True)
    result_o = ours(x, adj.t(), return_attention_weights=True)
    assert isinstance(result_o[1], SparseTensor) and ours._alpha is None
    assert result_o[1].sizes() == [num_dst, num_src, HEADS] and result_o[1].nnz() == edge_index.size(1)
    torch.testing.assert_close(result_o[0], result_r[0])
    torch.testing.assert_close(result_o[1].storage.value(), result_r[1].storage.value())

    class Scripted(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = ours

        def forward(self, x: Tuple[Tensor, Tensor], adj_t: SparseTensor) -> Tuple[Tensor, SparseTensor]:
            return self.conv(x, adj_t, return_attention_weights=True)

    out_j, adj_j = torch.jit.script(Scripted())(x, adj.t())
    torch.testing.assert_close(out_j, out)
    torch.testing.assert_close(adj_j.storage.value(), result_r[1].storage.value())


@pytest.mark.parametrize("edge_dim", [None, 8])
def test_torchscript_modules(edge_dim):
    x, edge_index, edge_attr, num_src, num_dst = inputs(False, edge_dim, seed=4)
    ref, ours = make_pair(5, edge_dim=edge_dim)
    out_r, (_, alpha_r) = ref(x, edge_index, edge_attr, return_attention_weights=True)

    class Plain(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = ours

        def forward(self, x: Tensor, edge_index: Adj, edge_attr: Optional[Tensor] = None) -> Tensor:
            return self.conv(x, edge_index, edge_attr)

    class WithAttention(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = ours

        def forward(self, x: Tensor, edge_index: Tensor, edge_attr: Optional[Tensor]) -> Tuple[Tensor, Tuple[Tensor, Tensor]]:
            return self.conv(x, edge_index, edge_attr, return_attention_weights=True)

    torch.testing.assert_close(torch.jit.script(Plain())(x, edge_index, edge_attr), out_r)
    out, (index, alpha) = torch.jit.script(WithAttention())(x, edge_index, edge_attr)
    torch.testing.assert_close(out, out_r)
    torch.testing.assert_close(alpha, alpha_r)
    assert torch.equal(index, edge_index) and ours._alpha is None

    x_dst = x[:num_dst - 2]
    ref_b, ours_b = make_pair((5, 5), edge_dim=edge_dim)
    keep = edge_index[1] < num_dst - 2
    edge_index_b, edge_attr_b = edge_index[:, keep], None if edge_attr is None else edge_attr[keep]

    class Bipartite(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = ours_b

        def forward(self, x: Tuple[Tensor, Tensor], edge_index: Adj, edge_attr: Optional[Tensor] = None) -> Tensor:
            return self.conv(x, edge_index, edge_attr)

    torch.testing.assert_close(torch.jit.script(Bipartite())((x, x_dst), edge_index_b, edge_attr_b), ref_b((x, x_dst), edge_index_b, edge_attr_b))


def test_wrong_adjacency_is_named():
    x, edge_index, _, num_src, num_dst = inputs(False, None)
    conv = SparseAttnConv(5, OUT, HEADS).double()
    too_big = sparse_adj_t(edge_index, torch.ones(25, dtype=torch.float64), num_src + 1, num_dst, torch.sparse_csr)
    with pytest.raises(ValueError, match="edge_index"):
        conv(x, too_big)
    with pytest.raises(ValueError, match="edge_index"):
        conv(x, EdgeIndex(edge_index, sparse_size=(num_src, num_dst + 2)))
    with pytest.raises(TypeError, match="edge_index"):
        conv(x, edge_index.tolist())
    with pytest.raises(TypeError, match="edge_index"):
        conv(x, edge_index.double())
