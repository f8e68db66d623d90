"""`sparse_attention` against dense masked SDPA, between its backends, and on bad input."""
import importlib.util
import math
import os

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from graph_sparse_attn import CSRPattern, sparse_attention
from graph_sparse_attn.ops.attention import attention_with_weights

BACKENDS = ["gather", "csr", "compiled", "triton", "reference"]


@pytest.fixture(params=BACKENDS)
def backend(request, device):
    """Every backend runs every test of the shared suite (triton on CPU through TRITON_INTERPRET=1)."""
    if request.param == "triton":
        if importlib.util.find_spec("triton") is None:
            pytest.skip("triton is not installed (pip install 'graph-sparse-attn[gpu]')")
        if device.type == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
            pytest.skip("triton runs CPU tensors only in its interpreter (TRITON_INTERPRET=1, set by tests/conftest.py)")
    if request.param == "compiled" and device.type != "cpu":
        pytest.skip("'compiled' is the CPU fused backend; on other devices it is refused (tests/ops/test_dispatch.py)")
    return request.param


@pytest.fixture
def attend(device):
    """`sparse_attention` on the device under test (``GSA_TEST_DEVICE``).

    Tests build CPU tensors; these are moved to the device and the outputs moved back, with
    autograd flowing through both moves, so references and assertions stay on CPU.
    """
    if device.type == "cpu":
        return sparse_attention

    def run(*args, **kwargs):
        move = lambda a: a.to(device) if isinstance(a, (torch.Tensor, CSRPattern)) else a
        out = sparse_attention(*map(move, args), **{name: move(a) for name, a in kwargs.items()})
        return tuple(o.cpu() for o in out) if isinstance(out, tuple) else out.cpu()

    return run


def random_graph(num_src, num_dst, num_edges, *, generator, isolated=(), unique=True):
    """Random edges j → i (optionally unique pairs), never pointing into ``isolated`` targets."""
    allowed = torch.tensor([i for i in range(num_dst) if i not in set(isolated)])
    src = torch.randint(0, num_src, (num_edges,), generator=generator)
    dst = allowed[torch.randint(0, allowed.numel(), (num_edges,), generator=generator)]
    edge_index = torch.stack([src, dst])
    if unique:
        edge_index = torch.unique(edge_index, dim=1)
        edge_index = edge_index[:, torch.randperm(edge_index.size(1), generator=generator)]
    return edge_index


def qkv(num_src, num_dst, heads, dim, value_dim, dtype=torch.float64, *, generator):
    make = lambda *shape: torch.randn(*shape, dtype=dtype, generator=generator).requires_grad_()
    return make(num_dst, heads, dim), make(num_src, heads, dim), make(num_src, heads, value_dim)


def dense_sdpa(query, key, value, edge_index, *, edge_bias=None, log_gate=None, scale=None):
    """Dense masked attention via SDPA with an additive float mask (log multiplicity + bias)."""
    num_dst, heads, _ = query.shape
    num_src = key.size(0)
    add = torch.zeros(heads, num_dst, num_src, dtype=query.dtype)
    count = torch.zeros(num_dst, num_src, dtype=query.dtype)
    src, dst = edge_index
    count.index_put_((dst, src), torch.ones(src.numel(), dtype=query.dtype), accumulate=True)
    per_edge = torch.zeros(src.numel(), heads, dtype=query.dtype)
    if edge_bias is not None:
        per_edge = per_edge + (edge_bias if edge_bias.dim() == 2 else edge_bias[:, None])
    if log_gate is not None:
        per_edge = per_edge + log_gate
    add = add.index_put((torch.arange(heads)[:, None], dst[None], src[None]), per_edge.t(), accumulate=True)
    mask = torch.where(count > 0, count.log(), torch.full_like(count, float("-inf")))
    out = F.scaled_dot_product_attention(
        query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1), attn_mask=add + mask, scale=scale
    )
    return out.transpose(0, 1), count.sum(1) > 0


def dense_scale_gate(query, key, value, edge_index, gate):
    """Dense ``softmax(QKᵀ ⊙ G / sqrt(d))`` over the mask, written out by hand."""
    num_dst, heads, dim = query.shape
    src, dst = edge_index
    gate_dense = torch.zeros(heads, num_dst, key.size(0), dtype=query.dtype)
    gate_dense = gate_dense.index_put((torch.arange(heads)[:, None], dst[None], src[None]), gate.t())
    mask = torch.zeros(num_dst, key.size(0), dtype=torch.bool)
    mask[dst, src] = True
    logits = torch.einsum("ihd,jhd->hij", query, key) * gate_dense / math.sqrt(dim)
    probs = torch.softmax(logits.masked_fill(~mask, float("-inf")), dim=-1).nan_to_num(0.0)
    return torch.einsum("hij,jhd->ihd", probs, value)


@pytest.mark.parametrize("num_src,num_dst", [(9, 9), (6, 11), (13, 4)])
def test_matches_dense_sdpa_forward_and_backward(backend, num_src, num_dst, attend):
    gen = torch.Generator().manual_seed(num_src * 100 + num_dst)
    edge_index = random_graph(num_src, num_dst, 40, generator=gen, isolated=(1,))
    q, k, v = qkv(num_src, num_dst, 3, 4, 5, generator=gen)
    out = attend(q, k, v, edge_index, backend=backend)
    ref, has_edge = dense_sdpa(q, k, v, edge_index)
    torch.testing.assert_close(out[has_edge], ref[has_edge])
    assert torch.equal(out[~has_edge], torch.zeros_like(out[~has_edge]))

    upstream = torch.randn(out.shape, dtype=out.dtype, generator=gen)
    grads = torch.autograd.grad((out[has_edge] * upstream[has_edge]).sum(), (q, k, v))
    ref_grads = torch.autograd.grad((ref[has_edge] * upstream[has_edge]).sum(), (q, k, v))
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r)


def test_isolated_targets_output_zero_with_finite_gradients(backend, attend):
    gen = torch.Generator().manual_seed(1)
    edge_index = random_graph(8, 8, 20, generator=gen, isolated=(0, 5, 7))
    q, k, v = qkv(8, 8, 2, 3, 3, generator=gen)
    out = attend(q, k, v, edge_index, backend=backend)
    assert torch.equal(out[[0, 5, 7]], torch.zeros(3, 2, 3, dtype=out.dtype))
    grads = torch.autograd.grad(out.sum(), (q, k, v))
    assert all(torch.isfinite(g).all() for g in grads)
    assert torch.equal(grads[0][[0, 5, 7]], torch.zeros(3, 2, 3, dtype=out.dtype))


def test_repeated_pairs_count_as_separate_edges(backend, attend):
    gen = torch.Generator().manual_seed(2)
    edge_index = random_graph(6, 6, 30, generator=gen, unique=False)
    assert torch.unique(edge_index, dim=1).size(1) < edge_index.size(1)
    q, k, v = qkv(6, 6, 2, 3, 3, generator=gen)
    out = attend(q, k, v, edge_index, backend=backend)
    ref, has_edge = dense_sdpa(q, k, v, edge_index)
    torch.testing.assert_close(out[has_edge], ref[has_edge])


@pytest.mark.parametrize("per_head", [False, True])
def test_edge_bias_and_scale_match_dense(backend, per_head, attend):
    gen = torch.Generator().manual_seed(3)
    edge_index = random_graph(7, 5, 25, generator=gen)
    q, k, v = qkv(7, 5, 3, 4, 2, generator=gen)
    shape = (edge_index.size(1), 3) if per_head else (edge_index.size(1),)
    bias = torch.randn(*shape, dtype=torch.float64, generator=gen).requires_grad_()
    out = attend(q, k, v, edge_index, edge_bias=bias, scale=0.7, backend=backend)
    ref, has_edge = dense_sdpa(q, k, v, edge_index, edge_bias=bias, scale=0.7)
    torch.testing.assert_close(out[has_edge], ref[has_edge])
    g, r = (torch.autograd.grad(o[has_edge].sum(), bias)[0] for o in (out, ref))
    torch.testing.assert_close(g, r)


def test_gate_modes_match_dense_formulas(backend, attend):
    gen = torch.Generator().manual_seed(4)
    edge_index = random_graph(6, 6, 24, generator=gen)
    q, k, v = qkv(6, 6, 2, 4, 3, generator=gen)
    gate = torch.rand(edge_index.size(1), 2, dtype=torch.float64, generator=gen).requires_grad_()

    out = attend(q, k, v, edge_index, edge_gate=gate, gate_mode="scale", backend=backend)
    ref = dense_scale_gate(q, k, v, edge_index, gate)
    torch.testing.assert_close(out, ref)
    for g, r in zip(torch.autograd.grad(out.sum(), (q, k, v, gate)), torch.autograd.grad(ref.sum(), (q, k, v, gate))):
        torch.testing.assert_close(g, r)

    out = attend(q, k, v, edge_index, edge_gate=gate, gate_mode="log", backend=backend)
    ref, has_edge = dense_sdpa(q, k, v, edge_index, log_gate=gate.log())
    torch.testing.assert_close(out[has_edge], ref[has_edge])
    g, r = (torch.autograd.grad(o[has_edge].sum(), gate)[0] for o in (out, ref))
    torch.testing.assert_close(g, r)


def test_log_gate_of_zero_removes_the_edge(backend, attend):
    gen = torch.Generator().manual_seed(5)
    edge_index = random_graph(6, 6, 24, generator=gen)
    q, k, v = qkv(6, 6, 2, 4, 3, generator=gen)
    gate = torch.ones(edge_index.size(1), dtype=torch.float64)
    gate[:5] = 0.0
    gate[edge_index[1] == edge_index[1, 0]] = 0.0  # every in-edge of one target: it must output zeros
    gate.requires_grad_()
    out, alpha = attend(q, k, v, edge_index, edge_gate=gate, gate_mode="log", backend=backend, return_attention=True)
    kept_edges = edge_index[:, gate.detach() > 0]
    kept = attend(q, k, v, kept_edges, backend=backend)
    torch.testing.assert_close(out, kept)  # targets left without edges are zero in both
    assert torch.equal(out[edge_index[1, 0]], torch.zeros_like(out[0]))
    assert torch.equal(alpha[gate.detach() == 0], torch.zeros_like(alpha[gate.detach() == 0]))
    (grad,) = torch.autograd.grad((out.square().sum() + alpha.sum()), gate)
    assert torch.isfinite(grad).all() and torch.equal(grad[gate.detach() == 0], torch.zeros_like(grad[gate.detach() == 0]))
    # A large upstream gradient at the emptied target must not overflow into inf or NaN (it did through 0/tiny).
    inputs = [t.detach().requires_grad_() for t in (q, k, v)]
    out = attend(*inputs, edge_index, edge_gate=gate.detach(), gate_mode="log", backend=backend)
    kept = attend(*inputs, kept_edges, backend=backend)
    upstream = torch.full_like(out, 100.0)
    torch.testing.assert_close(torch.autograd.grad(out, inputs, upstream), torch.autograd.grad(kept, inputs, upstream))


def test_empty_pattern_and_empty_graph(backend, attend):
    q, k, v = (torch.randn(n, 2, 3, dtype=torch.float64, requires_grad=True) for n in (4, 5, 5))
    empty = torch.empty(2, 0, dtype=torch.long)
    out, alpha = attend(q, k, v, empty, backend=backend, return_attention=True)
    assert torch.equal(out, torch.zeros(4, 2, 3, dtype=torch.float64)) and alpha.shape == (0, 2)
    assert all(torch.equal(g, torch.zeros_like(g)) for g in torch.autograd.grad(out.sum(), (q, k, v)))
    nothing = torch.randn(0, 2, 3, dtype=torch.float64)
    assert attend(nothing, nothing, nothing, empty, backend=backend).shape == (0, 2, 3)


def test_gradcheck_float64_all_inputs(backend, attend):
    gen = torch.Generator().manual_seed(6)
    edge_index = random_graph(5, 6, 14, generator=gen, isolated=(2,))
    q, k, v = qkv(5, 6, 2, 3, 2, generator=gen)
    bias = torch.randn(edge_index.size(1), 2, dtype=torch.float64, generator=gen).requires_grad_()
    gate = torch.rand(edge_index.size(1), dtype=torch.float64, generator=gen).requires_grad_()

    def run(q, k, v, bias, gate):
        return attend(q, k, v, edge_index, edge_bias=bias, edge_gate=gate, backend=backend, return_attention=True)

    # Triton's CPU interpreter costs ~0.2 s a launch: gradcheck's fast mode (random projections) there.
    assert torch.autograd.gradcheck(run, (q, k, v, bias, gate), fast_mode=backend == "triton")


def test_dropout_is_consistent_between_forward_and_backward(backend, attend):
    gen = torch.Generator().manual_seed(7)
    edge_index = random_graph(6, 6, 24, generator=gen)
    q, k, v = qkv(6, 6, 2, 3, 2, generator=gen)

    def run(q, k, v):
        torch.manual_seed(0)
        return attend(q, k, v, edge_index, dropout=0.4, backend=backend)

    assert torch.autograd.gradcheck(run, (q, k, v), fast_mode=backend == "triton")
    no_drop = attend(q, k, v, edge_index, dropout=0.4, training=False, backend=backend)
    torch.testing.assert_close(no_drop, attend(q, k, v, edge_index, backend=backend))


def test_dropout_is_applied_and_unbiased(backend, attend):
    # Dropout must change a training output, and average out to the exact one (the compiled backend
    # once ignored it without edge values, which the gradient check above cannot see).
    gen = torch.Generator().manual_seed(8)
    edge_index = random_graph(10, 10, 60, generator=gen)
    q, k, v = qkv(10, 10, 2, 3, 2, generator=gen)
    draws = 8 if backend == "triton" else 1000  # ~0.2 s a launch in Triton's CPU interpreter
    with torch.no_grad():
        exact = attend(q, k, v, edge_index, backend=backend)
        dropped = torch.stack([attend(q, k, v, edge_index, dropout=0.3, backend=backend) for _ in range(draws)])
    assert not any(torch.allclose(d, exact) for d in dropped)
    if backend != "triton":
        torch.testing.assert_close(dropped.mean(0), exact, atol=0.1, rtol=0.0)


def test_returned_weights_carry_the_kernel_s_dropout_mask(backend, device):
    """`attention_with_weights` rebuilds the after-dropout weights apart from the kernel that applied the
    mask (fused backends regenerate it from the kernel's seed). Checked on one draw: each weight is 0 or
    ``α/(1 − p)``, and the output is the values' sum under exactly those weights."""
    gen = torch.Generator().manual_seed(18)
    edge_index = random_graph(10, 10, 60, generator=gen)
    q, k, v = qkv(10, 10, 2, 3, 2, generator=gen)
    out, alpha, weights = (t.cpu() for t in attention_with_weights(
        q.to(device), k.to(device), v.to(device), edge_index.to(device), dropout=0.25, backend=backend))
    kept = weights != 0
    assert 0.5 < kept.double().mean() < 0.95  # 2 heads × ~50 edges, each kept with probability 0.75
    torch.testing.assert_close(weights[kept], alpha[kept] / 0.75)
    src, dst = edge_index
    torch.testing.assert_close(out, torch.zeros_like(out).index_add(0, dst, weights.unsqueeze(-1) * v[src]))


def test_backends_agree_including_attention_order(attend):
    gen = torch.Generator().manual_seed(9)
    edge_index = random_graph(50, 40, 400, generator=gen, unique=False)
    q, k, v = qkv(50, 40, 4, 8, 6, dtype=torch.float32, generator=gen)
    bias = torch.randn(edge_index.size(1), 4, generator=gen)
    out_c, alpha_c = attend(q, k, v, edge_index, edge_bias=bias, backend="csr", return_attention=True)
    out_r, alpha_r = attend(q, k, v, edge_index, edge_bias=bias, backend="reference", return_attention=True)
    torch.testing.assert_close(out_c, out_r)
    torch.testing.assert_close(alpha_c, alpha_r)
    sums = torch.zeros(40, 4).index_add_(0, edge_index[1], alpha_c)
    has_edge = torch.bincount(edge_index[1], minlength=40) > 0
    torch.testing.assert_close(sums[has_edge], torch.ones_like(sums[has_edge]))
    for g_c, g_r in zip(torch.autograd.grad(out_c.square().sum(), (q, k, v)), torch.autograd.grad(out_r.square().sum(), (q, k, v))):
        torch.testing.assert_close(g_c, g_r, rtol=1e-4, atol=1e-5)


def test_prebuilt_pattern_matches_edge_index(backend, attend):
    gen = torch.Generator().manual_seed(10)
    edge_index = random_graph(12, 9, 50, generator=gen, unique=False)
    pattern = CSRPattern.from_edge_index(edge_index, (12, 9))
    assert torch.equal(pattern.edge_index, edge_index)
    assert torch.equal(pattern.in_degree(), torch.bincount(edge_index[1], minlength=9))
    q, k, v = qkv(12, 9, 2, 3, 3, generator=gen)
    a = attend(q, k, v, pattern, backend=backend, return_attention=True)
    b = attend(q, k, v, edge_index, backend=backend, return_attention=True)
    torch.testing.assert_close(a, b)
    sorted_view = pattern.sorted()
    c = attend(q, k, v, sorted_view, backend=backend, return_attention=True)
    torch.testing.assert_close(c[0], a[0])
    torch.testing.assert_close(pattern.sorted_to_caller(c[1]), a[1])


def test_pattern_node_counts_take_integer_likes_and_refuse_the_rest():
    import numpy as np

    edge_index = torch.tensor([[0, 1, 2], [1, 2, 0]])
    for num_nodes in (3, torch.tensor(3), np.int64(3), (3, 3), [3, 4]):  # e.g. int(batch.max()) + 1 not yet taken
        assert CSRPattern.from_edge_index(edge_index, num_nodes).num_src == 3
    for num_nodes in (3.0, (3,), "3", True):
        with pytest.raises(TypeError, match="num_nodes must be an int N or a pair"):
            CSRPattern.from_edge_index(edge_index, num_nodes)
    pattern = CSRPattern.from_edge_index(torch.tensor([[0, 1, 2], [2, 1, 0]]), 3)  # unsorted: perm is set
    with pytest.raises(ValueError, match="per-edge values must have E=3 rows"):
        pattern.caller_to_sorted(torch.ones(4))  # would silently drop the extra row
    with pytest.raises(ValueError, match="per-edge values must have E=3 rows"):
        pattern.sorted_to_caller(torch.ones(2))


@pytest.mark.parametrize("kernel", ["auto", "gather"])
@pytest.mark.parametrize("unique", [True, False])
def test_deterministic_bitwise_on_cpu(unique, kernel):
    gen = torch.Generator().manual_seed(11)
    edge_index = random_graph(3000, 3000, 60000, generator=gen, unique=unique)
    q, k, v = qkv(3000, 3000, 4, 16, 16, dtype=torch.float32, generator=gen)
    bias = torch.randn(edge_index.size(1), generator=gen).requires_grad_()

    def run():
        out = sparse_attention(q, k, v, edge_index, edge_bias=bias, backend=kernel)
        return (out, *torch.autograd.grad(out.square().sum(), (q, k, v, bias)))

    first, second = run(), run()
    assert all(torch.equal(a, b) for a, b in zip(first, second))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_inputs(dtype, backend, attend):
    gen = torch.Generator().manual_seed(12)
    edge_index = random_graph(30, 30, 200, generator=gen)
    q, k, v = (t.detach() for t in qkv(30, 30, 2, 8, 8, dtype=torch.float32, generator=gen))
    exact = attend(q, k, v, edge_index, backend=backend)
    q16, k16, v16 = (t.to(dtype).requires_grad_() for t in (q, k, v))
    out = attend(q16, k16, v16, edge_index, backend=backend)
    assert out.dtype == dtype
    torch.testing.assert_close(out.float(), exact, atol=2e-2, rtol=2e-2)
    grads = torch.autograd.grad(out.float().sum(), (q16, k16, v16))
    assert all(g.dtype == dtype and torch.isfinite(g).all() for g in grads)


@settings(max_examples=40, deadline=None)
@given(
    num_src=st.integers(1, 8),
    num_dst=st.integers(1, 8),
    num_edges=st.integers(0, 30),
    heads=st.integers(1, 3),
    seed=st.integers(0, 2**16),
    backend=st.sampled_from(["csr", "gather", "reference"]),  # compiled: the parametrised suite (it compiles per shape)
)
def test_property_backends_equal_dense(num_src, num_dst, num_edges, heads, seed, backend):
    gen = torch.Generator().manual_seed(seed)
    edge_index = torch.stack([torch.randint(0, num_src, (num_edges,), generator=gen), torch.randint(0, num_dst, (num_edges,), generator=gen)])
    q, k, v = qkv(num_src, num_dst, heads, 3, 2, generator=gen)
    out = sparse_attention(q, k, v, edge_index, backend=backend)
    ref, has_edge = dense_sdpa(q, k, v, edge_index)
    torch.testing.assert_close(out[has_edge], ref[has_edge])
    assert torch.equal(out[~has_edge], torch.zeros_like(out[~has_edge]))


def _inputs():
    q, k, v = torch.randn(4, 2, 3), torch.randn(5, 2, 3), torch.randn(5, 2, 6)
    return q, k, v, torch.tensor([[0, 4, 2], [1, 3, 0]])


@pytest.mark.parametrize(
    "change,error,match",
    [
        (lambda a: {"edge_index": a["edge_index"].float()}, TypeError, "edge_index"),
        (lambda a: {"edge_index": a["edge_index"][0]}, ValueError, r"edge_index must have shape \[2, E\]"),
        (lambda a: {"edge_index": a["edge_index"].t().reshape(3, 2)}, ValueError, "edge_index"),
        (lambda a: {"edge_index": torch.tensor([[0, -1], [1, 1]])}, ValueError, "negative"),
        (lambda a: {"edge_index": torch.tensor([[5, 0], [1, 1]])}, ValueError, "source"),
        (lambda a: {"edge_index": torch.tensor([[0, 0], [4, 1]])}, ValueError, "target"),
        (lambda a: {"query": torch.randn(4, 3, 3)}, ValueError, "heads"),
        (lambda a: {"query": torch.randn(4, 2, 4)}, ValueError, "head dim"),
        (lambda a: {"value": torch.randn(6, 2, 6)}, ValueError, "source nodes"),
        (lambda a: {"key": torch.randn(5, 6)}, ValueError, "key must have shape"),
        (lambda a: {"value": torch.randn(5, 2, 6, dtype=torch.float64)}, TypeError, "dtype"),
        (lambda a: {"query": torch.ones(4, 2, 3, dtype=torch.long)}, TypeError, "query"),
        (lambda a: {"edge_bias": torch.randn(4)}, ValueError, "edge_bias"),
        (lambda a: {"edge_bias": torch.randn(3, 5)}, ValueError, "edge_bias"),
        (lambda a: {"edge_bias": torch.ones(3, dtype=torch.long)}, TypeError, "edge_bias"),
        (lambda a: {"edge_gate": torch.tensor([0.5, 1.5, 0.1])}, ValueError, "edge_gate"),
        (lambda a: {"edge_gate": torch.tensor([0.5, float("nan"), 0.1])}, ValueError, "edge_gate"),
        (lambda a: {"gate_mode": "mul"}, ValueError, "gate_mode"),
        (lambda a: {"backend": "cuda"}, ValueError, "backend"),
        (lambda a: {"dropout": 1.0}, ValueError, "dropout"),
        (lambda a: {"dropout": "0.1"}, TypeError, "dropout must be a float"),
        (lambda a: {"query": torch.randn(4, 2, 0), "key": torch.randn(5, 2, 0)}, ValueError, "head dimension D = 0"),
        (lambda a: {"edge_index": CSRPattern.from_edge_index(a["edge_index"], 6)}, ValueError, "CSRPattern"),
        (lambda a: {k: a[k].to(torch.float8_e4m3fn) for k in ("query", "key", "value")}, TypeError, "float16, bfloat16, float32 or float64"),
        (lambda a: {"scale": float("nan")}, ValueError, "scale must be a finite float"),
        (lambda a: {"scale": "1"}, TypeError, "scale must be a finite float"),
    ],
)
def test_bad_input_is_named(change, error, match, backend, attend, device):
    q, k, v, edge_index = _inputs()
    args = {"query": q, "key": k, "value": v, "edge_index": edge_index, "backend": backend}
    args.update(change(args))
    if device.type == "cuda" and "edge_gate" in args and match == "edge_gate":
        pytest.skip("on CUDA the gate range is checked by a device-side assert (no host sync), which ends the process")
    with pytest.raises(error, match=match):
        attend(**args)


@pytest.mark.parametrize("backend", ["csr", "compiled"])
def test_zero_width_heads_with_repeated_pairs_give_zeros(backend):
    # D = 0 (with an explicit scale) over a pattern with a repeated pair divided by zero in csr's chunking.
    query, value = torch.randn(3, 2, 0), torch.randn(3, 2, 4)
    edge_index = torch.tensor([[0, 0, 1], [1, 1, 2]])
    out, alpha = sparse_attention(query, query, value, edge_index, scale=1.0, backend=backend, return_attention=True)
    ref, _ = sparse_attention(query, query, value, edge_index, scale=1.0, backend="reference", return_attention=True)
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(alpha, torch.tensor([[0.5, 0.5], [0.5, 0.5], [1.0, 1.0]]))


@pytest.mark.parametrize("backend", ["csr", "compiled"])
@pytest.mark.parametrize("return_attention", [False, True])
def test_fused_backends_refuse_double_backward_by_name(backend, return_attention):
    q = torch.randn(5, 2, 4, dtype=torch.float64, requires_grad=True)
    edge_index = torch.tensor([[0, 1, 2, 3, 4, 0], [1, 2, 3, 4, 0, 0]])
    result = sparse_attention(q, q, q, edge_index, backend=backend, return_attention=return_attention)
    loss = result[1].square().sum() if return_attention else result.square().sum()
    (grad,) = torch.autograd.grad(loss, q, create_graph=True)
    with pytest.raises(RuntimeError, match="differentiate once.*backend='gather'"):
        grad.square().sum().backward()


def test_a_presorted_pattern_does_not_alias_the_callers_edge_index(monkeypatch):
    from graph_sparse_attn.ops import pattern as pattern_module

    # int64 indices (graphs beyond 2^31 nodes or edges) made .to() a no-op, so col/row were views.
    monkeypatch.setattr(pattern_module, "_index_dtype", lambda *args: torch.int64)
    edge_index = torch.tensor([[0, 1, 2], [0, 1, 2]])
    pattern = CSRPattern.from_edge_index(edge_index, 3)
    edge_index.fill_(2)
    assert pattern.col.tolist() == [0, 1, 2] and pattern.row.tolist() == [0, 1, 2]


def test_chunked_gather_scores_match_sampled_product(monkeypatch):
    from graph_sparse_attn.ops import csr_kernel

    gen = torch.Generator().manual_seed(13)
    edge_index = random_graph(40, 30, 300, generator=gen)
    pattern = CSRPattern.from_edge_index(edge_index, (40, 30))
    assert not pattern.has_duplicates
    a, b = torch.randn(30, 2, 5, dtype=torch.float64), torch.randn(40, 2, 5, dtype=torch.float64)
    monkeypatch.setattr(csr_kernel, "_GATHER_CHUNK_ELEMENTS", 70)
    torch.testing.assert_close(csr_kernel._sddmm_gather(pattern, a, b), csr_kernel.sddmm(pattern, a, b))


def test_a_pattern_compares_by_identity_and_moves_only_between_devices():
    edge_index = torch.tensor([[0, 1, 2], [1, 2, 0]])
    pattern = CSRPattern.from_edge_index(edge_index, 3)
    assert pattern == pattern and pattern != CSRPattern.from_edge_index(edge_index, 3) and pattern in [pattern]
    assert pattern.to("cpu").col.dtype == pattern.col.dtype
    with pytest.raises(TypeError, match="device must be a torch.device or a device string, got dtype"):
        pattern.to(torch.float64)
    with pytest.raises(ValueError, match="device: "):
        pattern.to("float64")


@pytest.mark.parametrize("backend", ["gather", "csr"])
def test_autocast_leaves_the_kernels_in_float32(backend):
    # Inside torch.autocast the csr kernel's sparse products would drop to bfloat16, which CPU cannot run.
    q = torch.randn(300, 2, 8, requires_grad=True)
    edge_index = torch.randint(0, 300, (2, 3000), generator=torch.Generator().manual_seed(0))
    out, alpha = sparse_attention(q, q, q, edge_index, backend=backend, return_attention=True)
    (grad,) = torch.autograd.grad(out.square().sum(), q)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out_autocast, alpha_autocast = sparse_attention(q, q, q, edge_index, backend=backend, return_attention=True)
        (grad_autocast,) = torch.autograd.grad(out_autocast.square().sum(), q)
    assert out_autocast.dtype == torch.float32
    for ours, plain in ((out_autocast, out), (alpha_autocast, alpha), (grad_autocast, grad)):
        torch.testing.assert_close(ours, plain)
