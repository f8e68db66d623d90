"""The ``compiled`` backend's kernels against the ``csr`` backend's, on the backend contract.

Inductor's compile time counts against CI: every test here uses one head count and head dims
(``H, D, Dv = 2, 3, 4``) and one of two flag sets, so the whole module compiles a handful of
kernels once (the recompile test checks that bound, too).
"""
import pytest
import torch
from torch._dynamo.utils import counters

from graph_sparse_attn import CSRPattern
from graph_sparse_attn.ops import compiled_kernel, csr_kernel

pytestmark = pytest.mark.skipif(not compiled_kernel.available(), reason="no C++ compiler for inductor")

H, D, DV = 2, 3, 4


def make_inputs(edge_index, num_src, num_dst, *, flags, dtype=torch.float64, seed=0):
    """``(q, k, v, pattern, bias, gate, keep, grad_out)`` for the contract (per-edge tensors ``[1|H, E]``)."""
    gen = torch.Generator().manual_seed(seed)
    pattern = CSRPattern.from_edge_index(edge_index, (num_src, num_dst))
    num_edges = pattern.num_edges
    rand = lambda *shape: torch.randn(*shape, dtype=dtype, generator=gen)
    q, k, v, grad_out = rand(num_dst, H, D), rand(num_src, H, D), rand(num_src, H, DV), rand(num_dst, H, DV)
    bias = gate = keep = None
    if flags == "full":
        bias = rand(H, num_edges)
        gate = torch.rand(1, num_edges, dtype=dtype, generator=gen)
        keep = (torch.rand(H, num_edges, generator=gen) >= 0.25).to(dtype) / 0.75
    return q, k, v, pattern, bias, gate, keep, grad_out


def both_backends(q, k, v, pattern, bias, gate, keep, grad_out, need_dlogits):
    results = []
    for kernel in (compiled_kernel, csr_kernel):
        out, lse = kernel.forward(q, k, v, pattern, bias, gate, keep)
        grads = kernel.backward(grad_out, q, k, v, out, lse, pattern, bias, gate, keep, need_dlogits)
        results.append((out, lse) + tuple(grads))
    return results


def random_graph(num_src, num_dst, num_edges, gen, isolated=()):
    allowed = torch.tensor([i for i in range(num_dst) if i not in isolated])
    src = torch.randint(0, num_src, (num_edges,), generator=gen)
    dst = allowed[torch.randint(0, allowed.numel(), (num_edges,), generator=gen)]
    return torch.stack([src, dst])


@pytest.fixture(scope="module")
def gen():
    return torch.Generator().manual_seed(0)


@pytest.mark.parametrize("flags", ["plain", "full"])
@pytest.mark.parametrize("num_src,num_dst", [(9, 9), (6, 11), (13, 4)])
def test_matches_csr_backend(flags, num_src, num_dst, gen):
    # Random pairs repeat (separate edges), target 1 has none, and N_src != N_dst in two cases.
    edge_index = random_graph(num_src, num_dst, 40, gen, isolated=(1,))
    inputs = make_inputs(edge_index, num_src, num_dst, flags=flags)
    assert inputs[3].has_duplicates
    ours, ref = both_backends(*inputs, need_dlogits=flags == "full")
    for name, a, b in zip(("out", "lse", "dq", "dk", "dv", "dlogits"), ours, ref):
        if b is None:
            assert a is None, name
        else:
            torch.testing.assert_close(a, b, msg=name)
    out, lse = ours[:2]
    assert torch.isinf(lse[:, 1]).all() and (lse[:, 1] > 0).all()
    assert torch.equal(out[1], torch.zeros_like(out[1]))


def test_float32_matches_csr_backend(gen):
    edge_index = random_graph(7, 10, 30, gen)
    inputs = make_inputs(edge_index, 7, 10, flags="plain", dtype=torch.float32)
    ours, ref = both_backends(*inputs, need_dlogits=False)
    for a, b in zip(ours[:5], ref[:5]):
        assert a.dtype == torch.float32
        torch.testing.assert_close(a, b)


def test_empty_graph():
    edge_index = torch.empty(2, 0, dtype=torch.long)
    q, k, v, pattern, _, _, _, grad_out = make_inputs(edge_index, 3, 5, flags="plain")
    out, lse = compiled_kernel.forward(q, k, v, pattern, None, None, None)
    assert torch.equal(out, torch.zeros(5, H, DV, dtype=q.dtype))
    assert torch.equal(lse, torch.full((H, 5), float("inf"), dtype=q.dtype))
    dq, dk, dv, dlogits = compiled_kernel.backward(grad_out, q, k, v, out, lse, pattern, None, None, None, True)
    assert not dq.any() and not dk.any() and not dv.any()
    assert dlogits.shape == (H, 0)


def test_large_graph_blocks_pad_by_at_most_a_quarter(gen, monkeypatch):
    # Without the small-graph slack, quarter-octave buckets merge only within 1.25 x E slots (padded
    # slots are read like real ones, so they cost time on large graphs).
    monkeypatch.setattr(compiled_kernel, "_MERGE_SLACK", 0)
    degrees = torch.randint(2, 60, (3000,), generator=gen)
    dst = torch.arange(3000).repeat_interleave(degrees)
    pattern = CSRPattern.from_edge_index(torch.stack([torch.randint(0, 3000, (dst.numel(),), generator=gen), dst]), 3000)
    blocks = compiled_kernel.layout(pattern).by_target
    assert len(blocks) > 1
    assert sum(b.nodes.numel() * b.slots.numel() for b in blocks) <= 1.25 * pattern.num_edges
    assert sorted(torch.cat([b.nodes[: b.num_real] for b in blocks]).tolist()) == list(range(3000))


def test_skewed_degrees_pad_by_bucket_not_to_the_hub(gen):
    # One hub with 300 sources among 200 targets of in-degree 1..5: padding every target to the
    # hub's degree would cost 200 x 300 slots; buckets keep it under 2 x E plus the 2-row minimum.
    num_nodes = 201
    hub = torch.stack([torch.randint(0, num_nodes, (300,), generator=gen), torch.zeros(300, dtype=torch.long)])
    degrees = torch.randint(1, 6, (num_nodes - 1,), generator=gen)
    dst = torch.arange(1, num_nodes).repeat_interleave(degrees)
    rest = torch.stack([torch.randint(0, num_nodes, (dst.numel(),), generator=gen), dst])
    edge_index = torch.cat([hub, rest], 1)
    inputs = make_inputs(edge_index, num_nodes, num_nodes, flags="plain")
    pattern = inputs[3]

    lay = compiled_kernel.layout(pattern)
    slots = sum(b.nodes.numel() * b.slots.numel() for b in lay.by_target)
    assert slots <= 2 * pattern.num_edges + 2 * 300
    assert [b.slots.numel() for b in lay.by_target if b.num_real == 1] == [300]
    assert sum(b.num_real for b in lay.by_target) == num_nodes
    assert sum(b.num_real for b in lay.by_source) == int((pattern.colptr.diff() > 0).sum())

    ours, ref = both_backends(*inputs, need_dlogits=False)
    for a, b in zip(ours[:5], ref[:5]):
        torch.testing.assert_close(a, b)


def test_layout_is_cached_per_pattern_and_shared_by_sorted_views(gen):
    pattern = CSRPattern.from_edge_index(random_graph(8, 8, 20, gen), 8)
    lay = compiled_kernel.layout(pattern)
    assert len(lay.by_target) == 1  # a small graph is one block: one kernel call per pass
    assert compiled_kernel.layout(pattern) is lay
    assert compiled_kernel.layout(pattern.sorted()) is lay
    other = CSRPattern.from_edge_index(random_graph(8, 8, 20, gen), 8)
    assert compiled_kernel.layout(other) is not lay


def test_backward_is_deterministic(gen):
    edge_index = random_graph(50, 40, 600, gen)
    inputs = make_inputs(edge_index, 50, 40, flags="full")
    q, k, v, pattern, bias, gate, keep, grad_out = inputs
    runs = []
    for _ in range(2):
        out, lse = compiled_kernel.forward(q, k, v, pattern, bias, gate, keep)
        runs.append((out, lse) + compiled_kernel.backward(grad_out, q, k, v, out, lse, pattern, bias, gate, keep, True))
    for a, b in zip(*runs):
        assert torch.equal(a, b)


def test_changing_graph_sizes_do_not_recompile(gen):
    def step(num_src, num_dst, edge_index):
        q, k, v, pattern, bias, gate, keep, grad_out = make_inputs(edge_index, num_src, num_dst, flags="plain")
        out, lse = compiled_kernel.forward(q, k, v, pattern, None, None, None)
        compiled_kernel.backward(grad_out, q, k, v, out, lse, pattern, None, None, None, False)

    step(12, 12, random_graph(12, 12, 50, gen))  # compiles (or reuses) the plain kernels
    before = counters["stats"]["unique_graphs"]
    graphs = [
        (30, 30, random_graph(30, 30, 200, gen)),       # several buckets, N_src == N_dst
        (17, 5, random_graph(17, 5, 60, gen)),          # bipartite
        (4, 40, random_graph(4, 40, 41, gen)),          # mostly in-degree 1 (a 2-wide block)
        (2, 2, torch.tensor([[0, 0, 1, 1], [0, 1, 1, 1]])),  # in-degrees 1 and 3: one-row buckets
        (300, 3, torch.stack([torch.arange(300), torch.zeros(300, dtype=torch.long)])),  # one hub
    ]
    for num_src, num_dst, edge_index in graphs:
        step(num_src, num_dst, edge_index)
    assert counters["stats"]["unique_graphs"] - before == 0


def test_memory_layouts_of_q_k_v_do_not_recompile(gen):
    """Each stride pattern used to recompile the same kernel: past dynamo's limit of 8, a hard error."""
    q, k, v, pattern, _, _, _, grad_out = make_inputs(random_graph(12, 12, 50, gen), 12, 12, flags="plain")
    reference_out, _ = compiled_kernel.forward(q, k, v, pattern, None, None, None)
    before = counters["stats"]["unique_graphs"]

    def layouts(t):  # the same values as permuted or packed views
        n, h, d = t.shape
        yield t.permute(1, 0, 2).contiguous().permute(1, 0, 2)            # from [H, N, D]
        yield t.permute(0, 2, 1).contiguous().permute(0, 2, 1)            # from [N, D, H]
        yield t.permute(2, 0, 1).contiguous().permute(1, 2, 0)            # from [D, N, H]
        yield torch.cat([t, t], dim=2)[..., :d]                           # a slice of a packed tensor
        yield torch.cat([t.reshape(n, -1), t.reshape(n, -1)], 1)[:, h * d:].view(n, h, d)

    for k_view in layouts(k):
        for v_view in layouts(v):
            out, lse = compiled_kernel.forward(q, k_view, v_view, pattern, None, None, None)
            torch.testing.assert_close(out, reference_out)
    compiled_kernel.backward(grad_out, q, next(layouts(k)), next(layouts(v)), out, lse, pattern, None, None, None, False)
    assert counters["stats"]["unique_graphs"] - before <= 1  # at most the backward's first compile


def test_sparse_attention_builds_the_layout_once_per_pattern(gen, monkeypatch):
    from graph_sparse_attn import sparse_attention

    built = []
    blocks = compiled_kernel._blocks
    monkeypatch.setattr(compiled_kernel, "_blocks", lambda *args: built.append(1) or blocks(*args))
    pattern = CSRPattern.from_edge_index(random_graph(10, 10, 40, gen), 10)
    q, k, v = (torch.randn(10, H, dim, dtype=torch.float64, generator=gen).requires_grad_() for dim in (D, D, DV))
    results = {}
    for backend in ("compiled", "compiled", "csr"):
        out = sparse_attention(q, k, v, pattern, backend=backend)
        results[backend] = (out,) + torch.autograd.grad(out.square().sum(), (q, k, v))
    assert len(built) == 2  # by target and by source, once for both calls
    for a, b in zip(results["compiled"], results["csr"]):
        torch.testing.assert_close(a, b)


def test_chunked_kernel_calls_match_csr_backend(gen, monkeypatch):
    # Large patterns run in calls of at most _MAX_BLOCK_SLOTS slots (bounded buffers); shrink it
    # so that a small graph takes that path: many blocks per bucket and several edge chunks.
    monkeypatch.setattr(compiled_kernel, "_MAX_BLOCK_SLOTS", 16)
    edge_index = random_graph(30, 25, 150, gen, isolated=(3,))
    inputs = make_inputs(edge_index, 30, 25, flags="full")
    assert len(compiled_kernel.layout(inputs[3]).by_target) > 2
    ours, ref = both_backends(*inputs, need_dlogits=True)
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b)


def per_edge_edge_values(q, k, v, edge_index, num_dst, edge_values, keep):
    """Brute force, target by target: ``Σ_e softmax_e(q_i·(k_j + ev_e)) m_e (v_j + ev_e)``, ``[N_dst, H, D]``."""
    out = q.new_zeros(num_dst, q.size(1), v.size(-1))
    rows = []
    for i in range(num_dst):
        edges = (edge_index[1] == i).nonzero().flatten()
        if edges.numel() == 0:
            rows.append(out[i])
            continue
        key, value = k[edge_index[0, edges]] + edge_values[edges], v[edge_index[0, edges]] + edge_values[edges]
        probs = torch.softmax((q[i] * key).sum(-1), dim=0)  # [e, H]
        rows.append(((probs * keep[:, edges].t())[..., None] * value).sum(0))
    return torch.stack(rows)


@pytest.mark.parametrize("num_src,num_dst,chunked", [(9, 9, False), (6, 11, True)])
def test_edge_values_match_brute_force(num_src, num_dst, chunked, gen, monkeypatch):
    # Edge values ride on keys and values (the projected edge features of small patterns), with
    # dropout multipliers, repeated pairs, an isolated target and a bipartite case; float64 gradients.
    # Chunked: kernel calls of at most 16 slots, as large patterns run.
    if chunked:
        monkeypatch.setattr(compiled_kernel, "_MAX_BLOCK_SLOTS", 16)
    edge_index = random_graph(num_src, num_dst, 40, gen, isolated=(1,))
    pattern = CSRPattern.from_edge_index(edge_index, (num_src, num_dst)).sorted()
    sorted_index = torch.stack([pattern.col.long(), pattern.row.long()])
    rand = lambda *shape: torch.randn(*shape, dtype=torch.float64, generator=gen).requires_grad_()  # noqa: E731
    q, k, v, ev = rand(num_dst, H, D), rand(num_src, H, D), rand(num_src, H, D), rand(pattern.num_edges, H, D)
    keep = (torch.rand(H, pattern.num_edges, generator=gen) >= 0.25).double() / 0.75
    ours = compiled_kernel.attention_with_edge_values(q, k, v, pattern, ev, keep)
    ref = per_edge_edge_values(q, k, v, sorted_index, num_dst, ev, keep)
    torch.testing.assert_close(ours, ref)
    assert torch.equal(ours[1], torch.zeros_like(ours[1]))
    grad_out = torch.randn(ours.shape, dtype=torch.float64, generator=gen)
    for name, a, b in zip("q k v ev".split(), torch.autograd.grad(ours, (q, k, v, ev), grad_out),
                          torch.autograd.grad(ref, (q, k, v, ev), grad_out)):
        torch.testing.assert_close(a, b, msg=name)


def test_edge_values_on_an_empty_graph_give_zeros():
    pattern = CSRPattern.from_edge_index(torch.empty(2, 0, dtype=torch.long), (3, 5))
    q, k, v = (torch.randn(n, H, D, dtype=torch.float64, requires_grad=True) for n in (5, 3, 3))
    ev = torch.zeros(0, H, D, dtype=torch.float64, requires_grad=True)
    out = compiled_kernel.attention_with_edge_values(q, k, v, pattern, ev, None)
    assert torch.equal(out, torch.zeros(5, H, D, dtype=torch.float64))
    grads = torch.autograd.grad(out.sum(), (q, k, v, ev))
    assert not any(g.any() for g in grads) and grads[3].shape == (0, H, D)


def test_a_non_finite_row_reaches_only_the_targets_that_read_it():
    # Padding slots of a degree bucket read node position 0 (masked): a NaN there must not leak.
    edge_index = torch.tensor([[7, 1, 2, 1, 2, 3, 2, 3, 4, 4, 5, 6], [0, 1, 1, 2, 2, 2, 3, 3, 3, 4, 4, 5]])
    q, k, v, pattern, bias, gate, keep, grad_out = make_inputs(edge_index, 8, 6, flags="plain")
    v[7] = float("nan")  # node 7 feeds target 0 only
    for kernel in (compiled_kernel, csr_kernel):
        out, lse = kernel.forward(q, k, v, pattern, bias, gate, keep)
        assert out.isnan().any(-1).any(-1).nonzero().flatten().tolist() == [0], kernel.__name__
    k[7], v[7] = float("nan"), 0.0
    dq, dk, dv = compiled_kernel.backward(grad_out, q, k, v, *compiled_kernel.forward(q, k, v, pattern, bias, gate, keep),
                                          pattern, bias, gate, keep, False)[:3]
    assert dq.isnan().any(-1).any(-1).nonzero().flatten().tolist() == [0]
