"""The kernels' `torch.library` custom ops: registration checks, torch.compile without graph breaks."""
import pytest
import torch

from graph_sparse_attn import CSRPattern, sparse_attention
from graph_sparse_attn.ops import fused


def _case(num_edges=30, seed=0):
    gen = torch.Generator().manual_seed(seed)
    edge_index = torch.randint(0, 7, (2, num_edges), generator=gen)
    pattern = CSRPattern.from_edge_index(edge_index, 7)
    make = lambda *shape: torch.randn(*shape, dtype=torch.float64, generator=gen, requires_grad=True)  # noqa: E731
    return pattern, make(7, 2, 3), make(7, 2, 3), make(7, 2, 4), make(2, pattern.num_edges), torch.rand(1, pattern.num_edges, dtype=torch.float64, generator=gen, requires_grad=True)


@pytest.mark.parametrize("backend", ["csr"])
@pytest.mark.parametrize("with_edges", [True, False])
def test_custom_ops_pass_opcheck(backend, with_edges):
    pattern, q, k, v, bias, gate = _case()
    if not with_edges:
        bias = gate = None
    tensors = fused._pattern_tensors(pattern)
    args = (backend, q, k, v, *tensors, pattern.num_src, pattern.has_duplicates, bias, gate, 0.0, None)
    torch.library.opcheck(torch.ops.graph_sparse_attn.attention.default, args)
    out, lse = torch.ops.graph_sparse_attn.attention(*args)
    torch.library.opcheck(torch.ops.graph_sparse_attn.edge_softmax.default,
                          (q, k, *tensors, pattern.num_src, pattern.has_duplicates, bias, gate, lse.detach()))


def test_backward_ops_pass_opcheck_on_permuted_inputs():
    """Head-major projections viewed as [N, H, D] reach the ops with permuted strides; the backward ops'
    fake kernels must promise the contiguous gradients the real ones return (inductor checks strides)."""
    pattern, _, _, _, bias, gate = _case()
    bias, gate = bias.detach(), gate.detach()  # the backward ops have no backward of their own
    gen = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(2, 7, d, dtype=torch.float64, generator=gen).transpose(0, 1) for d in (3, 3, 4))
    tensors = (*fused._pattern_tensors(pattern), pattern.num_src, pattern.has_duplicates)
    out, lse = torch.ops.graph_sparse_attn.attention("csr", q, k, v, *tensors, bias, gate, 0.0, None)
    torch.library.opcheck(torch.ops.graph_sparse_attn.attention_backward.default,
                          ("csr", torch.randn_like(out), q, k, v, out, lse, *tensors, bias, gate, 0.0, None, True, True))
    probs = torch.ops.graph_sparse_attn.edge_softmax(q, k, *tensors, bias, gate, lse)
    torch.library.opcheck(torch.ops.graph_sparse_attn.edge_softmax_backward.default,
                          (torch.randn_like(probs), probs, q, k, *tensors, gate, True))


@pytest.mark.parametrize("backend", ["csr"])
def test_dropout_seed_is_a_tensor_and_replays(backend):
    pattern, q, k, v, _, _ = _case()
    seed = torch.tensor([1234])
    tensors = fused._pattern_tensors(pattern)
    run = lambda p=0.5, seed=seed: torch.ops.graph_sparse_attn.attention(  # noqa: E731
        backend, q, k, v, *tensors, pattern.num_src, pattern.has_duplicates, None, None, p, seed)[0]
    first = run()
    torch.manual_seed(99)  # the mask comes from the seed tensor, not from the global generator
    torch.rand(10)
    assert torch.equal(run(), first)
    assert not torch.equal(run(seed=torch.tensor([1235])), first)
    assert not torch.equal(run(p=0.0), first)


def test_compiled_function_calling_sparse_attention_has_no_graph_breaks():
    pattern, q, k, v, bias, gate = _case()

    def f(q, k, v, bias, gate):
        out, alpha = sparse_attention(q, k, v, pattern, edge_bias=bias.t(), edge_gate=gate.t(), return_attention=True)
        return out.square().sum() + alpha.sum()

    explanation = torch._dynamo.explain(f)(q, k, v, bias, gate)
    assert explanation.graph_break_count == 0, [b.reason for b in explanation.break_reasons]
    torch._dynamo.reset()
    compiled = torch.compile(f, backend="aot_eager")
    args = (q, k, v, bias, gate)
    eager_loss, compiled_loss = f(*args), compiled(*args)
    torch.testing.assert_close(compiled_loss, eager_loss)
    for g, r in zip(torch.autograd.grad(compiled_loss, args), torch.autograd.grad(eager_loss, args)):
        torch.testing.assert_close(g, r)


def test_fused_dropout_with_returned_weights_compiles_without_graph_breaks():
    # The weights after dropout regenerate the kernels' mask from the seed: inside a custom op, not in traced code.
    pattern, q, k, v, _, _ = _case()

    def f(q, k, v):
        out, alpha = sparse_attention(q, k, v, pattern, dropout=0.3, training=True, return_attention=True, backend="csr")
        return out.square().sum() + alpha.sum()

    explanation = torch._dynamo.explain(f)(q, k, v)
    assert explanation.graph_break_count == 0, [b.reason for b in explanation.break_reasons]
    alpha = torch.rand(2, 9, dtype=torch.float64, requires_grad=True)
    torch.library.opcheck(torch.ops.graph_sparse_attn.dropped_weights.default, (alpha, 0.3, torch.tensor([5])))


def test_gathered_pass_with_dropout_compiles_without_graph_breaks():
    # Small patterns run the gather backend (plain tensor operations, traced by the compiler). Its
    # dropout mask comes from the global RNG, not from a seed read on the host.
    pattern, q, k, v, _, _ = _case()

    def f(q, k, v):
        return sparse_attention(q, k, v, pattern, dropout=0.3, training=True).square().sum()

    explanation = torch._dynamo.explain(f)(q, k, v)
    assert explanation.graph_break_count == 0, [b.reason for b in explanation.break_reasons]
