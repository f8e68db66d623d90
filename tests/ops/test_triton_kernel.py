"""The ``triton`` backend's plain forward/backward against autograd through the reference op and
against the ``csr`` backend.

On CPU the kernels run in Triton's interpreter (``tests/conftest.py`` sets ``TRITON_INTERPRET=1``),
which is slow: graphs stay small. ``GSA_TEST_DEVICE=cuda`` runs the same tests on the GPU.
"""
import pytest
import torch

pytest.importorskip("triton", reason="triton is not installed (pip install -e '.[test]' or '.[gpu]')")

from graph_sparse_attn.ops import csr_kernel, triton_kernel  # noqa: E402
from graph_sparse_attn.ops.pattern import CSRPattern  # noqa: E402
from graph_sparse_attn.ops.reference import reference_attention  # noqa: E402


@pytest.fixture(autouse=True)
def _runnable(device):
    if not triton_kernel.runs_on(device):
        pytest.skip("triton runs on CPU only in its interpreter (TRITON_INTERPRET=1, set by conftest without CUDA)")


def make_case(num_src, num_dst, num_edges, heads, dim, value_dim, *, seed, device, dtype=torch.float64,
              isolated=(), unique=True, edge_tensors=(), shared_heads=False, drop=0.0):
    """A random pattern (sources j → targets i, none into ``isolated``), inputs and per-edge tensors.

    ``edge_tensors`` names which of ``bias``/``gate`` to draw, ``[1, E]`` when ``shared_heads``
    else ``[H, E]``; ``drop > 0`` draws an inverted-dropout ``keep [H, E]``.
    """
    gen = torch.Generator().manual_seed(seed)
    targets = torch.tensor([i for i in range(num_dst) if i not in set(isolated)], dtype=torch.long)
    edge_index = torch.empty(2, 0, dtype=torch.long)
    if num_edges:
        src = torch.randint(0, num_src, (num_edges,), generator=gen)
        dst = targets[torch.randint(0, targets.numel(), (num_edges,), generator=gen)]
        edge_index = torch.stack([src, dst])
    if unique:
        edge_index = torch.unique(edge_index, dim=1)
        edge_index = edge_index[:, torch.randperm(edge_index.size(1), generator=gen)]
    pattern = CSRPattern.from_edge_index(edge_index, (num_src, num_dst)).to(device)
    num_edges = pattern.num_edges
    rand = lambda *shape: torch.randn(*shape, dtype=dtype, generator=gen).to(device)
    rows = 1 if shared_heads else heads
    case = dict(
        q=rand(num_dst, heads, dim), k=rand(num_src, heads, dim), v=rand(num_src, heads, value_dim),
        pattern=pattern, bias=None, gate=None, keep=None,
    )
    if "bias" in edge_tensors:
        case["bias"] = rand(rows, num_edges)
    if "gate" in edge_tensors:
        case["gate"] = torch.rand(rows, num_edges, dtype=dtype, generator=gen).to(device)
    if drop > 0:
        kept = torch.rand(heads, num_edges, generator=gen) >= drop
        case["keep"] = (kept.to(dtype) / (1 - drop)).to(device)
    return case


def reference_grads(case, grad_out):
    """``(out, dq, dk, dv, dlogits)`` by autograd through the reference op (scale 1: q is pre-scaled).

    ``dlogits`` is the gradient w.r.t. an added zero bias, i.e. dLoss/dlogit; ``keep`` multiplies
    the reference's softmax before aggregation.
    """
    pattern, heads = case["pattern"], case["q"].size(1)
    q, k, v = (case[n].detach().clone().requires_grad_() for n in "qkv")
    zero_bias = torch.zeros(pattern.num_edges, heads, dtype=q.dtype, device=q.device, requires_grad=True)
    bias = zero_bias if case["bias"] is None else zero_bias + case["bias"].t()
    gate = None if case["gate"] is None else case["gate"].t()
    edge_index = torch.stack([pattern.col.long(), pattern.row.long()])
    out, alpha, _ = reference_attention(q, k, v, edge_index, bias, gate, 1.0, 0.0)
    if case["keep"] is not None:
        messages = (alpha * case["keep"].t()).unsqueeze(-1) * v[edge_index[0]]
        out = torch.zeros_like(out).index_add(0, edge_index[1], messages)
    grads = torch.autograd.grad(out, (q, k, v, zero_bias), grad_out)
    return (out.detach(), *grads[:3], grads[3].t())


def reference_lse(case):
    """Row log-sum-exp of the logits, by a loop over targets (``+inf`` where a target has none)."""
    pattern, q, k = case["pattern"], case["q"], case["k"]
    logits = (q[pattern.row.long()] * k[pattern.col.long()]).sum(-1).t()
    if case["gate"] is not None:
        logits = logits * case["gate"]
    if case["bias"] is not None:
        logits = logits + case["bias"]
    lse = torch.full((q.size(1), q.size(0)), float("inf"), dtype=q.dtype, device=q.device)
    rowptr = pattern.rowptr.tolist()
    for i in range(q.size(0)):
        row = logits[:, rowptr[i] : rowptr[i + 1]]
        if row.numel():
            lse[:, i] = torch.logsumexp(row, dim=1)
    return lse


def run_triton(case, grad_out, need_dlogits=True):
    args = [case[n] for n in ("q", "k", "v", "pattern", "bias", "gate", "keep")]
    out, lse = triton_kernel.forward(*args)
    return (out, lse, *triton_kernel.backward(grad_out, *args[:3], out, lse, *args[3:], need_dlogits))


def check_against_reference(case):
    grad_out = torch.randn(case["q"].size(0), case["q"].size(1), case["v"].size(2), dtype=case["q"].dtype,
                           generator=torch.Generator().manual_seed(7)).to(case["q"].device)
    out, lse, dq, dk, dv, dlogits = run_triton(case, grad_out)
    ref_out, ref_dq, ref_dk, ref_dv, ref_dlogits = reference_grads(case, grad_out)
    torch.testing.assert_close(out, ref_out)
    torch.testing.assert_close(lse, reference_lse(case))
    for name, got, want in (("dq", dq, ref_dq), ("dk", dk, ref_dk), ("dv", dv, ref_dv), ("dlogits", dlogits, ref_dlogits)):
        torch.testing.assert_close(got, want, msg=lambda m: f"{name}: {m}")
    return out, lse


GRAPHS = {
    "square": (9, 9, 40),
    "bipartite_wide": (6, 11, 30),
    "bipartite_narrow": (13, 4, 35),
}
EDGE_OPTIONS = {
    "plain": dict(),
    "bias_gate_per_head": dict(edge_tensors=("bias", "gate")),
    "bias_gate_shared_dropout": dict(edge_tensors=("bias", "gate"), shared_heads=True, drop=0.3),
}


@pytest.mark.parametrize("options", EDGE_OPTIONS.keys())
@pytest.mark.parametrize("graph", GRAPHS.keys())
def test_matches_reference_autograd(graph, options, device):
    # Head count 3, head dims 5 and 3: nothing a power of two, so every tile is masked.
    num_src, num_dst, num_edges = GRAPHS[graph]
    case = make_case(num_src, num_dst, num_edges, 3, 5, 3, seed=len(graph) * 10 + len(options), device=device,
                     isolated=(1,), **EDGE_OPTIONS[options])
    out, lse = check_against_reference(case)
    # Target 1 has no edges: zeros and lse = +inf, never NaN.
    assert torch.equal(out[1], torch.zeros_like(out[1]))
    assert torch.isinf(lse[:, 1]).all() and (lse[:, 1] > 0).all()


def test_repeated_pairs(device):
    case = make_case(5, 4, 40, 2, 4, 4, seed=3, device=device, unique=False, edge_tensors=("bias",))
    assert case["pattern"].has_duplicates
    check_against_reference(case)


def test_rows_longer_than_one_chunk(device):
    # One target with 70 sources: its row streams through several chunks, so the online softmax
    # rescales its running sums; large logits make a wrong rescale visible.
    num_src = 70
    edge_index = torch.stack([torch.cat([torch.arange(num_src), torch.tensor([3, 9])]), torch.tensor([0] * num_src + [1, 2])])
    gen = torch.Generator().manual_seed(11)
    case = dict(
        q=(4 * torch.randn(3, 2, 6, dtype=torch.float64, generator=gen)).to(device),
        k=torch.randn(num_src, 2, 6, dtype=torch.float64, generator=gen).to(device),
        v=torch.randn(num_src, 2, 5, dtype=torch.float64, generator=gen).to(device),
        pattern=CSRPattern.from_edge_index(edge_index, (num_src, 3)).to(device), bias=None, gate=None, keep=None,
    )
    assert triton_kernel._blocks(case["pattern"].num_edges, 3, 2, 6, 5)["BLOCK_E"] < num_src
    check_against_reference(case)


def test_heads_split_across_programs(device):
    # Wide heads leave room for one head per tile: each head block is its own program (grid axis 1).
    case = make_case(7, 6, 25, 3, 130, 20, seed=13, device=device, isolated=(4,), edge_tensors=("bias", "gate"), drop=0.25)
    assert triton_kernel._blocks(case["pattern"].num_edges, 6, 3, 130, 20)["BLOCK_H"] < 3
    check_against_reference(case)


def test_all_logits_minus_inf_gives_zeros(device):
    case = make_case(6, 5, 20, 2, 3, 3, seed=5, device=device, edge_tensors=("bias",))
    rowptr = case["pattern"].rowptr.tolist()
    start, end = next((rowptr[i], rowptr[i + 1]) for i in range(5) if rowptr[i + 1] > rowptr[i])
    case["bias"][:, start:end] = float("-inf")
    target = case["pattern"].row[start].item()
    grad_out = torch.ones(5, 2, 3, dtype=torch.float64, device=device)
    out, lse, dq, dk, dv, dlogits = run_triton(case, grad_out)
    assert torch.equal(out[target], torch.zeros_like(out[target]))
    assert torch.isinf(lse[:, target]).all()
    for t in (out, dq, dk, dv, dlogits):
        assert torch.isfinite(t).all()


@pytest.mark.parametrize("num_src,num_dst", [(0, 0), (4, 0), (0, 3), (4, 5)])
def test_empty_graph(num_src, num_dst, device):
    case = make_case(num_src, num_dst, 0, 2, 3, 4, seed=0, device=device, edge_tensors=("bias", "gate"), drop=0.5)
    grad_out = torch.ones(num_dst, 2, 4, dtype=torch.float64, device=device)
    out, lse, dq, dk, dv, dlogits = run_triton(case, grad_out)
    assert out.shape == (num_dst, 2, 4) and lse.shape == (2, num_dst) and dlogits.shape == (2, 0)
    assert not out.any() and torch.isinf(lse).all()
    assert dq.shape == case["q"].shape and dk.shape == case["k"].shape and dv.shape == case["v"].shape
    assert not dq.any() and not dk.any() and not dv.any()


def test_matches_csr_backend_float32_and_is_deterministic(device):
    # Same contract, same shared dropout mask: the two backends agree (float32 tolerances), and
    # the triton backward, free of atomics, repeats bit for bit.
    case = make_case(12, 10, 60, 4, 8, 6, seed=9, device=device, dtype=torch.float32, isolated=(2,),
                     unique=False, edge_tensors=("bias", "gate"), drop=0.2)
    args = [case[n] for n in ("q", "k", "v", "pattern", "bias", "gate", "keep")]
    grad_out = torch.randn(10, 4, 6, generator=torch.Generator().manual_seed(1)).to(device)
    out, lse, *grads = run_triton(case, grad_out)
    ref_out, ref_lse = csr_kernel.forward(*args)
    ref_grads = csr_kernel.backward(grad_out, *args[:3], ref_out, ref_lse, *args[3:], True)
    torch.testing.assert_close(out, ref_out)
    torch.testing.assert_close(lse, ref_lse)
    for got, want in zip(grads, ref_grads):
        torch.testing.assert_close(got, want)
    again = run_triton(case, grad_out)
    assert all(torch.equal(a, b) for a, b in zip((out, lse, *grads), again))
    assert run_triton(case, grad_out, need_dlogits=False)[-1] is None


def test_rejects_cpu_without_interpreter_and_low_precision(monkeypatch, device):
    case = make_case(4, 4, 8, 1, 2, 2, seed=1, device=device)
    with pytest.raises(TypeError, match="float32 or float64"):
        triton_kernel.forward(case["q"].half(), case["k"].half(), case["v"].half(), case["pattern"], None, None, None)
    if device.type == "cpu":
        monkeypatch.delenv("TRITON_INTERPRET")
        with pytest.raises(ValueError, match="CUDA"):
            triton_kernel.forward(case["q"], case["k"], case["v"], case["pattern"], None, None, None)
