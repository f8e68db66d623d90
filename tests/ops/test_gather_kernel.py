"""The ``gather`` backend's attention with edge values (small patterns with edge features) against brute force."""
import pytest
import torch

from graph_sparse_attn import CSRPattern
from graph_sparse_attn.ops import gather_kernel

H, D = 2, 3


def brute_force(q, k, v, edge_index, num_dst, edge_values, bias, gate, keep):
    """Target by target: ``p = softmax_e((q_i·(k_j + ev_e)) g_e + b_e)``; ``(Σ_e p m (v_j + ev_e) [N_dst, H, D], p [H, E])``."""
    out, probs = q.new_zeros(num_dst, H, D), q.new_zeros(edge_index.size(1), H)
    for i in range(num_dst):
        edges = (edge_index[1] == i).nonzero().flatten()
        if edges.numel() == 0:
            continue
        src = edge_index[0, edges]
        logits = (q[i] * (k[src] + edge_values[edges])).sum(-1)  # [e, H]
        if gate is not None:
            logits = logits * gate[:, edges].t()
        if bias is not None:
            logits = logits + bias[:, edges].t()
        p = torch.softmax(logits, dim=0)
        probs = probs.index_put((edges,), p)
        m = keep[:, edges].t() if keep is not None else 1.0
        out = out.index_put((torch.tensor([i]),), ((p * m)[..., None] * (v[src] + edge_values[edges])).sum(0, keepdim=True))
    return out, probs.t()


@pytest.mark.parametrize("shared", [True, False], ids=["shared-bias-gate", "per-head-bias-gate"])
@pytest.mark.parametrize("num_src,num_dst", [(7, 7), (5, 9)])
def test_matches_brute_force_with_bias_gate_dropout_in_float64(num_src, num_dst, shared):
    # Repeated pairs, an isolated target (1) and a bipartite case; gradients of every input, through
    # the output and the probabilities both.
    gen = torch.Generator().manual_seed(num_dst + 2 * shared)
    allowed = torch.tensor([i for i in range(num_dst) if i != 1])
    edge_index = torch.stack([torch.randint(0, num_src, (30,), generator=gen),
                              allowed[torch.randint(0, allowed.numel(), (30,), generator=gen)]])
    pattern = CSRPattern.from_edge_index(edge_index, (num_src, num_dst)).sorted()
    sorted_index = torch.stack([pattern.col.long(), pattern.row.long()])
    num_edges, rows = pattern.num_edges, 1 if shared else H
    rand = lambda *shape: torch.randn(*shape, dtype=torch.float64, generator=gen).requires_grad_()  # noqa: E731
    q, k, v, ev, bias = rand(num_dst, H, D), rand(num_src, H, D), rand(num_src, H, D), rand(num_edges, H, D), rand(rows, num_edges)
    gate = torch.rand(rows, num_edges, dtype=torch.float64, generator=gen).requires_grad_()
    keep = (torch.rand(H, num_edges, generator=gen) >= 0.25).double() / 0.75

    out, probs = gather_kernel.attention_with_edge_values(q, k, v, pattern, ev, bias, gate, keep)
    ref_out, ref_probs = brute_force(q, k, v, sorted_index, num_dst, ev, bias, gate, keep)
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


def test_without_per_edge_parameters_and_only_the_output_used():
    gen = torch.Generator().manual_seed(5)
    edge_index = torch.randint(0, 6, (2, 20), generator=gen)
    pattern = CSRPattern.from_edge_index(edge_index, 6).sorted()
    sorted_index = torch.stack([pattern.col.long(), pattern.row.long()])
    rand = lambda *shape: torch.randn(*shape, dtype=torch.float64, generator=gen).requires_grad_()  # noqa: E731
    q, k, v, ev = rand(6, H, D), rand(6, H, D), rand(6, H, D), rand(pattern.num_edges, H, D)
    out, _ = gather_kernel.attention_with_edge_values(q, k, v, pattern, ev, None, None, None)
    ref, _ = brute_force(q, k, v, sorted_index, 6, ev, None, None, None)
    torch.testing.assert_close(out, ref)
    for a, b in zip(torch.autograd.grad(out.square().sum(), (q, k, v, ev)), torch.autograd.grad(ref.square().sum(), (q, k, v, ev))):
        torch.testing.assert_close(a, b)


def test_empty_graph_gives_zeros_and_zero_gradients():
    pattern = CSRPattern.from_edge_index(torch.empty(2, 0, dtype=torch.long), (3, 5))
    q, k, v = (torch.randn(n, H, D, dtype=torch.float64, requires_grad=True) for n in (5, 3, 3))
    ev = torch.zeros(0, H, D, dtype=torch.float64, requires_grad=True)
    out, probs = gather_kernel.attention_with_edge_values(q, k, v, pattern, ev, None, None, None)
    assert torch.equal(out, torch.zeros(5, H, D, dtype=torch.float64)) and probs.shape == (H, 0)
    grads = torch.autograd.grad(out.sum(), (q, k, v, ev))
    assert not any(g.any() for g in grads) and grads[3].shape == (0, H, D)
