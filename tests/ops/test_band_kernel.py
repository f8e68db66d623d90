"""The ``band`` backend (dense masked attention over query blocks) against dense masked SDPA, and when ``auto`` takes it."""
import pytest
import torch
import torch.nn.functional as F

from graph_sparse_attn import CSRPattern, sparse_attention
from graph_sparse_attn.ops import band_kernel, dispatch
from graph_sparse_attn.patterns import sliding_window

H, D = 2, 4


def dense_reference(q, k, v, edge_index):
    """Dense SDPA with the pattern as a boolean mask; targets without edges output zeros."""
    n = q.size(0)
    mask = torch.zeros(n, n, dtype=torch.bool)
    mask[edge_index[1], edge_index[0]] = True
    out = F.scaled_dot_product_attention(q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1), attn_mask=mask)
    return torch.where(mask.any(1)[:, None, None], out.transpose(0, 1), torch.zeros(()))


def _patterns():
    gen = torch.Generator().manual_seed(0)
    window = sliding_window(100, 7)
    holes = window[:, torch.rand(window.size(1), generator=gen) < 0.6]  # some targets lose every edge
    batch = torch.repeat_interleave(torch.arange(3), torch.tensor([40, 1, 59]))
    return {
        "window": window,
        "window-wider-than-block": sliding_window(70, 40),
        "causal": sliding_window(90, 5, causal=True),
        "dilated": sliding_window(90, 3, dilation=2),
        "batched-sequences": sliding_window(100, 4, batch=batch),
        "with-holes-and-isolated-targets": holes,
        "shuffled": window[:, torch.randperm(window.size(1), generator=gen)],
        "single-node": torch.zeros(2, 1, dtype=torch.long),
    }


PATTERNS = _patterns()


@pytest.mark.parametrize("name", PATTERNS)
@pytest.mark.parametrize("prebuilt", [False, True], ids=["edge_index", "CSRPattern"])
def test_matches_dense_masked_sdpa_with_float64_gradients(name, prebuilt):
    edge_index = PATTERNS[name]
    n = int(edge_index.max()) + 1
    gen = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(n, H, D, dtype=torch.float64, generator=gen, requires_grad=True) for _ in range(3))
    edges = CSRPattern.from_edge_index(edge_index, n) if prebuilt else edge_index
    out = sparse_attention(q, k, v, edges, backend="band")
    ref = dense_reference(q, k, v, edge_index)
    torch.testing.assert_close(out, ref)
    grad = torch.randn_like(out)
    torch.testing.assert_close(torch.autograd.grad(out, (q, k, v), grad), torch.autograd.grad(ref, (q, k, v), grad))


def test_float32_and_scale_match_the_reference_backend():
    edge_index = sliding_window(300, 20)
    q, k, v = (torch.randn(300, H, D) for _ in range(3))
    out = sparse_attention(q, k, v, edge_index, scale=0.3, backend="band")
    torch.testing.assert_close(out, sparse_attention(q, k, v, edge_index, scale=0.3, backend="reference"), rtol=1e-5, atol=1e-5)


def test_band_mask_refuses_what_it_cannot_run():
    window = sliding_window(50, 3)
    assert band_kernel.band_mask(window[0], window[1], 50, min_fill=0.0) is not None
    repeated = torch.cat([window, window[:, :1]], 1)
    assert band_kernel.band_mask(repeated[0], repeated[1], 50, min_fill=0.0) is None
    wide = torch.tensor([[0, band_kernel.MAX_BAND], [band_kernel.MAX_BAND, 0]])
    assert band_kernel.band_mask(wide[0], wide[1], band_kernel.MAX_BAND + 1, min_fill=0.0) is None
    empty = torch.zeros(2, 0, dtype=torch.long)
    assert band_kernel.band_mask(empty[0], empty[1], 5, min_fill=0.0) is None
    # A full ±3 window fills 7 of the 32 + 6 slots of its blocks: below the fill "auto" asks for.
    assert band_kernel.band_mask(window[0], window[1], 50) is None


@pytest.mark.parametrize(
    "kwargs, edge_index, match",
    [
        (dict(edge_bias=torch.zeros(7 * 20 - 12)), sliding_window(20, 3), "edge_bias"),
        (dict(dropout=0.1), sliding_window(20, 3), "dropout"),
        (dict(return_attention=True), sliding_window(20, 3), "returned attention"),
        ({}, torch.cat([sliding_window(20, 3), sliding_window(20, 3)], 1), "repeated pair"),
        ({}, torch.tensor([[0, 19], [19, 0]]), None),
    ],
    ids=["bias", "dropout", "return-attention", "repeated-pairs", "two-far-edges"],
)
def test_forced_band_raises_on_what_it_does_not_support(kwargs, edge_index, match):
    q = k = v = torch.randn(20, H, D)
    if match is None:  # a band of half-width 19 over 20 nodes is allowed: it runs, and matches
        torch.testing.assert_close(sparse_attention(q, k, v, edge_index, backend="band"), dense_reference(q, k, v, edge_index))
        return
    with pytest.raises(ValueError, match=match):
        sparse_attention(q, k, v, edge_index, backend="band", **kwargs)


def test_forced_band_refuses_bipartite_patterns():
    q, k = torch.randn(4, H, D), torch.randn(6, H, D)
    with pytest.raises(ValueError, match="square pattern"):
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


def test_auto_declines_a_sparse_band(monkeypatch):
    monkeypatch.setattr(dispatch, "BAND_MIN_EDGES", 10)
    calls = _count_band_calls(monkeypatch)
    q = k = v = torch.randn(200, H, D)
    sparse_attention(q, k, v, sliding_window(200, 40, dilation=8))  # 11 edges per 80 + 32 slots
    assert not calls
