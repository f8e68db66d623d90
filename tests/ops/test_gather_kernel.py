"""The ``gather`` backend's one-pass attention (edge values, bias, gate, dropout) against brute force."""
import pytest
import torch

from graph_sparse_attn import CSRPattern
from graph_sparse_attn.ops import gather_kernel

H, D = 2, 3


def brute_force(q, k, v, edge_index, num_dst, edge_values, bias, gate, keep):
    """Target by target: ``p = softmax_e((q_i·(k_j + ev_e)) g_e + b_e)``; ``(Σ_e p m (v_j + ev_e) [N_dst, H, D], p [E, H])``."""
    out, probs = q.new_zeros(num_dst, H, D), q.new_zeros(edge_index.size(1), H)
    for i in range(num_dst):
        edges = (edge_index[1] == i).nonzero().flatten()
        if edges.numel() == 0:
            continue
        src = edge_index[0, edges]
        logits = (q[i] * (k[src] + edge_values[edges])).sum(-1)  # [e, H]
        if gate is not None:
            logits = logits * gate[edges]
        if bias is not None:
            logits = logits + bias[edges]
        p = torch.softmax(logits, dim=0)
        probs = probs.index_put((edges,), p)
        m = keep[edges] if keep is not None else 1.0
        out = out.index_put((torch.tensor([i]),), ((p * m)[..., None] * (v[src] + edge_values[edges])).sum(0, keepdim=True))
    return out, probs


def _run(q, k, v, edge_index, num_dst, sort, **kwargs):
    """The kernel on the caller's edge order (CPU), or on the sorted layout with ``rowptr`` (how it runs off CPU)."""
    if not sort:
        return gather_kernel.attention(q, k, v, edge_index[0], edge_index[1], num_dst, **kwargs)
    pattern = CSRPattern.from_edge_index(edge_index, (k.size(0), num_dst))
    sorted_kwargs = {name: pattern.caller_to_sorted(t) for name, t in kwargs.items()}
    out, probs = gather_kernel.attention(q, k, v, pattern.col.long(), pattern.row.long(), num_dst, rowptr=pattern.rowptr, **sorted_kwargs)
    return out, pattern.sorted_to_caller(probs)


@pytest.mark.parametrize("sort", [False, True], ids=["caller-order", "sorted"])
@pytest.mark.parametrize("shared", [True, False], ids=["shared-bias-gate", "per-head-bias-gate"])
@pytest.mark.parametrize("num_src,num_dst", [(7, 7), (5, 9)])
def test_matches_brute_force_with_bias_gate_dropout_in_float64(num_src, num_dst, shared, sort):
    # Repeated pairs, an isolated target (1) and a bipartite case; gradients of every input, through
    # the output and the probabilities both.
    gen = torch.Generator().manual_seed(num_dst + 2 * shared)
    allowed = torch.tensor([i for i in range(num_dst) if i != 1])
    edge_index = torch.stack([torch.randint(0, num_src, (30,), generator=gen),
                              allowed[torch.randint(0, allowed.numel(), (30,), generator=gen)]])
    num_edges, cols = edge_index.size(1), 1 if shared else H
    rand = lambda *shape: torch.randn(*shape, dtype=torch.float64, generator=gen).requires_grad_()  # noqa: E731
    q, k, v, ev, bias = rand(num_dst, H, D), rand(num_src, H, D), rand(num_src, H, D), rand(num_edges, H, D), rand(num_edges, cols)
    gate = torch.rand(num_edges, cols, dtype=torch.float64, generator=gen).requires_grad_()
    keep = (torch.rand(num_edges, H, generator=gen) >= 0.25).double() / 0.75

    out, probs = _run(q, k, v, edge_index, num_dst, sort, edge_values=ev, bias=bias, gate=gate, keep=keep)
    ref_out, ref_probs = brute_force(q, k, v, edge_index, num_dst, ev, bias, gate, keep)
    torch.testing.assert_close(out, ref_out)
    torch.testing.assert_close(probs, ref_probs)
    assert torch.equal(out[1], torch.zeros_like(out[1]))

    weight_out, weight_probs = torch.randn(out.shape, dtype=torch.float64, generator=gen), torch.randn(probs.shape, dtype=torch.float64, generator=gen)
    inputs = (q, k, v, ev, bias, gate)
    ours = torch.autograd.grad((out * weight_out).sum() + (probs * weight_probs).sum(), inputs)
    ref = torch.autograd.grad((ref_out * weight_out).sum() + (ref_probs * weight_probs).sum(), inputs)
    for name, a, b in zip("q k v ev bias gate".split(), ours, ref):
        assert a.shape == b.shape, name
        torch.testing.assert_close(a, b, msg=name)


def test_without_edge_values_against_dense_masked_softmax():
    # Plain scaled attention (no per-edge tensors at all): dense softmax with the pattern's mask, gradients too.
    gen = torch.Generator().manual_seed(5)
    keys = torch.randperm(36, generator=gen)[:20]
    edge_index = torch.stack([keys % 6, keys // 6])
    rand = lambda *shape: torch.randn(*shape, dtype=torch.float64, generator=gen).requires_grad_()  # noqa: E731
    q, k, v = rand(6, H, D), rand(6, H, D), rand(6, H, 4)
    out, _ = gather_kernel.attention(q, k, v, edge_index[0], edge_index[1], 6, 0.5)
    mask = torch.zeros(6, 6, dtype=torch.bool)
    mask[edge_index[1], edge_index[0]] = True
    scores = (0.5 * torch.einsum("ihd,jhd->hij", q, k)).masked_fill(~mask, float("-inf"))
    ref = torch.einsum("hij,jhd->ihd", torch.softmax(scores, -1).nan_to_num(0.0), v)
    torch.testing.assert_close(out, ref)
    for a, b in zip(torch.autograd.grad(out.square().sum(), (q, k, v)), torch.autograd.grad(ref.square().sum(), (q, k, v))):
        torch.testing.assert_close(a, b)


def test_caller_order_results_are_bitwise_reproducible_on_cpu():
    gen = torch.Generator().manual_seed(3)
    edge_index = torch.randint(0, 50, (2, 2000), generator=gen)
    q, k, v = (torch.randn(50, H, D, generator=gen, requires_grad=True) for _ in range(3))

    def run():
        out, _ = gather_kernel.attention(q, k, v, edge_index[0], edge_index[1], 50)
        return (out, *torch.autograd.grad(out.square().sum(), (q, k, v)))

    assert all(torch.equal(a, b) for a, b in zip(run(), run()))


def test_empty_graph_gives_zeros_and_zero_gradients():
    edge_index = torch.empty(2, 0, dtype=torch.long)
    q, k, v = (torch.randn(n, H, D, dtype=torch.float64, requires_grad=True) for n in (5, 3, 3))
    ev = torch.zeros(0, H, D, dtype=torch.float64, requires_grad=True)
    out, probs = gather_kernel.attention(q, k, v, edge_index[0], edge_index[1], 5, edge_values=ev)
    assert torch.equal(out, torch.zeros(5, H, D, dtype=torch.float64)) and probs.shape == (0, H)
    grads = torch.autograd.grad(out.sum(), (q, k, v, ev))
    assert not any(g.any() for g in grads) and grads[3].shape == (0, H, D)
