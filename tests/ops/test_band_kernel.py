"""The ``band`` backend (dense masked attention over query blocks) against dense masked SDPA, and when ``auto`` takes it."""
import pytest
import torch
import torch.nn.functional as F
from torch_geometric import EdgeIndex

from graph_sparse_attn import CSRPattern, sparse_attention
from graph_sparse_attn.ops import band_kernel, dispatch
from graph_sparse_attn.patterns import longformer, sliding_window

H, D = 2, 4


def dense_reference(q, k, v, edge_index):
    """Dense SDPA with the pattern as a boolean mask; targets without edges output zeros."""
    n = q.size(0)
    mask = torch.zeros(n, n, dtype=torch.bool, device=q.device)
    mask[edge_index[1], edge_index[0]] = True
    out = F.scaled_dot_product_attention(q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1), attn_mask=mask)
    return torch.where(mask.any(1)[:, None, None], out.transpose(0, 1), torch.zeros((), dtype=q.dtype, device=q.device))


def _patterns():
    gen = torch.Generator().manual_seed(0)
    window = sliding_window(100, 7)
    holes = window[:, torch.rand(window.size(1), generator=gen) < 0.6]  # some targets lose every edge
    batch = torch.repeat_interleave(torch.arange(3), torch.tensor([40, 1, 59]))
    far = torch.tensor([[0, 99, 50, 3], [60, 2, 99, 97]])  # a few far edges into light rows
    return {
        "window": window,
        "window-wider-than-block": sliding_window(70, 40),
        "causal": sliding_window(90, 5, causal=True),
        "dilated": sliding_window(90, 3, dilation=2),
        "batched-sequences": sliding_window(100, 4, batch=batch),
        "with-holes-and-isolated-targets": holes,
        "shuffled": window[:, torch.randperm(window.size(1), generator=gen)],
        "single-node": torch.zeros(2, 1, dtype=torch.long),
        # Global tokens: their columns become extra key slots, their rows are heavy (attended alone).
        "longformer": longformer(150, 6, [0, 75]),
        "longformer-batched": longformer(100, 5, [0], batch=batch),
        "window-plus-far-edges": torch.cat([window, far], 1),
    }


PATTERNS = _patterns()


@pytest.mark.parametrize("name", PATTERNS)
@pytest.mark.parametrize("prebuilt", [False, True], ids=["edge_index", "CSRPattern"])
@pytest.mark.parametrize("chunk_queries", [band_kernel.CHUNK_QUERIES, 32], ids=["one-chunk", "chunk-per-block"])
def test_matches_dense_masked_sdpa_with_float64_gradients(name, prebuilt, chunk_queries, monkeypatch, device):
    """On the device under test: the CPU's flash kernels, or elsewhere `F.scaled_dot_product_attention` through autograd."""
    monkeypatch.setattr(band_kernel, "CHUNK_QUERIES", chunk_queries)
    edge_index = PATTERNS[name].to(device)
    n = int(edge_index.max()) + 1
    gen = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(n, H, D, dtype=torch.float64, generator=gen).to(device).requires_grad_() for _ in range(3))
    edges = CSRPattern.from_edge_index(edge_index, n) if prebuilt else edge_index
    out = sparse_attention(q, k, v, edges, backend="band")
    ref = dense_reference(q, k, v, edge_index)
    torch.testing.assert_close(out, ref)
    grad = torch.randn_like(out)
    torch.testing.assert_close(torch.autograd.grad(out, (q, k, v), grad), torch.autograd.grad(ref, (q, k, v), grad))


def test_inner_chunks_of_a_window_share_one_mask(monkeypatch):
    monkeypatch.setattr(band_kernel, "CHUNK_QUERIES", 64)  # blocks of 32 queries: two per chunk
    edge_index = sliding_window(1000, 8)
    layout = band_kernel.band_layout(edge_index[0], edge_index[1], 1000, min_fill=0.0)
    assert (layout.block, layout.num_blocks, layout.chunk, len(layout.masks)) == (32, 32, 2, 16)
    # Only the first and the last chunk (the sequence's ends) keep masks of their own.
    shared = layout.masks[1]
    assert shared.shape == (1, 1, 32, 32 + 16) and all(m is shared for m in layout.masks[1:-1])
    assert layout.masks[0].shape == layout.masks[-1].shape == (2, 1, 32, 48)
    gen = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(1000, H, D, dtype=torch.float64, generator=gen, requires_grad=True) for _ in range(3))
    out, ref = sparse_attention(q, k, v, edge_index, backend="band"), dense_reference(q, k, v, edge_index)
    torch.testing.assert_close(out, ref)
    grad = torch.randn_like(out)
    torch.testing.assert_close(torch.autograd.grad(out, (q, k, v), grad), torch.autograd.grad(ref, (q, k, v), grad))


def test_the_autograd_path_for_other_devices_matches_the_reference(monkeypatch):
    """`_blocked_sdpa` (what runs off the CPU) checked on the CPU, several chunks and far sources included."""
    monkeypatch.setattr(band_kernel, "CHUNK_QUERIES", 32)
    edge_index = PATTERNS["window-plus-far-edges"]
    layout = band_kernel.band_layout(edge_index[0], edge_index[1], 100, min_fill=0.0)
    gen = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(100, H, D, dtype=torch.float64, generator=gen, requires_grad=True) for _ in range(3))
    blocked = band_kernel._blocked_sdpa(q, k, v, layout, D ** -0.5)
    out = blocked.transpose(1, 2).reshape(-1, H, D)[:100]
    ref = dense_reference(q, k, v, edge_index)
    torch.testing.assert_close(out, ref)
    grad = torch.randn_like(out)
    torch.testing.assert_close(torch.autograd.grad(out, (q, k, v), grad), torch.autograd.grad(ref, (q, k, v), grad))


@pytest.mark.parametrize("value_dim", [2, 7])
@pytest.mark.parametrize("name", ["window", "longformer"])
def test_value_head_size_may_differ_from_the_query_head_size(name, value_dim):
    edge_index = PATTERNS[name]
    n = int(edge_index.max()) + 1
    gen = torch.Generator().manual_seed(2)
    q, k = (torch.randn(n, H, D, dtype=torch.float64, generator=gen).requires_grad_() for _ in range(2))
    v = torch.randn(n, H, value_dim, dtype=torch.float64, generator=gen).requires_grad_()
    out = sparse_attention(q, k, v, edge_index, backend="band")
    ref = sparse_attention(q, k, v, edge_index, backend="reference")
    torch.testing.assert_close(out, ref)
    grad = torch.randn_like(out)
    torch.testing.assert_close(torch.autograd.grad(out, (q, k, v), grad), torch.autograd.grad(ref, (q, k, v), grad))


def test_float32_and_scale_match_the_reference_backend():
    edge_index = sliding_window(300, 20)
    q, k, v = (torch.randn(300, H, D) for _ in range(3))
    out = sparse_attention(q, k, v, edge_index, scale=0.3, backend="band")
    torch.testing.assert_close(out, sparse_attention(q, k, v, edge_index, scale=0.3, backend="reference"), rtol=1e-5, atol=1e-5)


def test_band_layout_refuses_what_it_cannot_run():
    window = sliding_window(50, 3)
    layout = band_kernel.band_layout(window[0], window[1], 50, min_fill=0.0)
    assert layout is not None and layout.half_width == 3 and layout.extra is None and layout.heavy is None
    repeated = torch.cat([window, window[:, :1]], 1)
    assert band_kernel.band_layout(repeated[0], repeated[1], 50, min_fill=0.0) is None
    # Queries 0..31 (one block) each read a different far source: more than MAX_EXTRA extra slots.
    scattered = torch.cat([window, torch.stack([torch.arange(32) + 10_000, torch.arange(32)])], 1)
    assert band_kernel.band_layout(scattered[0], scattered[1], 20_000, min_fill=0.0) is None
    gen = torch.Generator().manual_seed(0)
    random_graph = torch.randint(0, 500, (2, 8000), generator=gen)  # every row heavy
    assert band_kernel.band_layout(random_graph[0], random_graph[1], 500, min_fill=0.0) is None
    empty = torch.zeros(2, 0, dtype=torch.long)
    assert band_kernel.band_layout(empty[0], empty[1], 5, min_fill=0.0) is None
    # A full ±3 window fills 7 of the 32 + 6 slots of its blocks: below the fill "auto" asks for.
    assert band_kernel.band_layout(window[0], window[1], 50) is None


def test_global_rows_are_heavy_and_may_repeat_pairs():
    edge_index = longformer(120, 4, [0])
    layout = band_kernel.band_layout(edge_index[0], edge_index[1], 120, min_fill=0.0)
    assert layout.heavy_rows.tolist() == [0] and layout.heavy.num_edges == 120 and layout.extra is not None
    # A repeated pair into the heavy row counts twice, as in every other backend.
    repeated = torch.cat([edge_index, torch.tensor([[60], [0]])], 1)
    q, k, v = (torch.randn(120, H, D, dtype=torch.float64) for _ in range(3))
    torch.testing.assert_close(sparse_attention(q, k, v, repeated, backend="band"),
                               sparse_attention(q, k, v, repeated, backend="reference"))


@pytest.mark.parametrize(
    "kwargs, edge_index, match",
    [
        (dict(edge_bias=torch.zeros(7 * 20 - 12)), sliding_window(20, 3), "edge_bias"),
        (dict(dropout=0.1), sliding_window(20, 3), "dropout"),
        (dict(return_attention=True), sliding_window(20, 3), "returned attention"),
        ({}, torch.cat([sliding_window(20, 3), sliding_window(20, 3)], 1), "repeated pair"),
        ({}, torch.tensor([[0, 19], [19, 0]]), None),
    ],
    ids=["bias", "dropout", "return-attention", "repeated-pairs", "two-far-edges-run"],
)
def test_forced_band_raises_on_what_it_does_not_support(kwargs, edge_index, match):
    q = k = v = torch.randn(20, H, D)
    if match is None:  # two far edges become extra key slots: it runs, and matches
        torch.testing.assert_close(sparse_attention(q, k, v, edge_index, backend="band"), dense_reference(q, k, v, edge_index))
        return
    with pytest.raises(ValueError, match=match):
        sparse_attention(q, k, v, edge_index, backend="band", **kwargs)


def test_forced_band_refuses_bipartite_patterns():
    q, k = torch.randn(4, H, D), torch.randn(6, H, D)
    with pytest.raises(ValueError, match="square window pattern"):
        sparse_attention(q, k, k, torch.tensor([[0, 1], [0, 1]]), backend="band")


def _count_band_calls(monkeypatch):
    calls = []
    real = band_kernel.attention

    def spy(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(band_kernel, "attention", spy)
    return calls


def test_auto_takes_band_for_a_large_window_only_without_per_edge_options(monkeypatch):
    monkeypatch.setattr(dispatch, "BAND_MIN_EDGES", 1000)
    calls = _count_band_calls(monkeypatch)
    edge_index = sliding_window(200, 16)
    q, k, v = (torch.randn(200, H, D) for _ in range(3))
    out = sparse_attention(q, k, v, edge_index)
    assert len(calls) == 1
    torch.testing.assert_close(out, sparse_attention(q, k, v, edge_index, backend="csr"), rtol=1e-5, atol=1e-5)
    sparse_attention(q, k, v, edge_index, edge_bias=torch.zeros(edge_index.size(1)))
    sparse_attention(q, k, v, edge_index, return_attention=True)
    sparse_attention(q, k, v, edge_index, dropout=0.1)
    sparse_attention(q, k, v, edge_index[:, :900])  # below BAND_MIN_EDGES
    gen = torch.Generator().manual_seed(0)
    sparse_attention(q, k, v, torch.randint(0, 200, (2, 6000), generator=gen))  # not a band
    assert len(calls) == 1


@pytest.mark.parametrize("backend", ["auto", "band"])
def test_a_window_with_no_features_gives_the_empty_result(monkeypatch, backend):
    monkeypatch.setattr(dispatch, "BAND_MIN_EDGES", 1000)
    edge_index = sliding_window(200, 16)
    for q, v in ((torch.randn(200, 0, D), torch.randn(200, 0, D)), (torch.randn(200, H, 0), torch.randn(200, H, 0))):
        assert sparse_attention(q, q, v, edge_index, scale=1.0, backend=backend).shape == v.shape


def test_auto_declines_a_sparse_band(monkeypatch):
    monkeypatch.setattr(dispatch, "BAND_MIN_EDGES", 10)
    calls = _count_band_calls(monkeypatch)
    q = k = v = torch.randn(200, H, D)
    sparse_attention(q, k, v, sliding_window(200, 40, dilation=8))  # 11 edges per 80 + 32 slots
    assert not calls


def test_a_window_as_wide_as_its_sequence_is_still_a_band():
    edge_index = sliding_window(80, 64)  # offsets up to ±64 in 80 nodes: few queries can reach the widest
    layout = band_kernel.band_layout(edge_index[0], edge_index[1], 80, min_fill=0.0)
    assert layout is not None and layout.half_width == 64 and layout.extra is None and layout.heavy is None
    q, k, v = (torch.randn(80, H, D, dtype=torch.float64) for _ in range(3))
    torch.testing.assert_close(sparse_attention(q, k, v, edge_index, backend="band"), dense_reference(q, k, v, edge_index))


@pytest.mark.parametrize("backend", ["band", "auto"])
def test_a_pyg_edge_index_runs_like_a_plain_tensor(backend):
    edge_index = sliding_window(600, 16)  # 19.5k edges: "auto" takes the band on CPU
    q, k, v = (torch.randn(600, H, D) for _ in range(3))
    out = sparse_attention(q, k, v, EdgeIndex(edge_index, sparse_size=(600, 600)), backend=backend)
    torch.testing.assert_close(out, sparse_attention(q, k, v, edge_index, backend=backend))
