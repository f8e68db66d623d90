"""`backend="auto"` and forced backends: the documented rule, the compiler fallback, refusals."""
import warnings

import pytest
import torch

from graph_sparse_attn import patterns, sparse_attention
from graph_sparse_attn.ops import compiled_kernel, dispatch


def test_auto_rule_on_cpu(monkeypatch):
    cpu, width = torch.device("cpu"), 64
    tiny, middle = dispatch.GATHER_MAX_ELEMENTS // width, dispatch.GATHER_MAX_ELEMENTS // width + 1
    dense = 4 * dispatch.GATHER_SPARSE_MAX_DEGREE  # mean in-degree of `middle` over `middle // dense` targets
    assert dispatch.resolve_backend("auto", cpu, tiny, 1, width) == "gather"
    assert dispatch.resolve_backend("auto", cpu, middle, middle // dense, width) == "csr"
    # Sparse graphs (molecule batches) keep the gathered pass up to GATHER_SPARSE_MAX_ELEMENTS.
    sparse_max = dispatch.GATHER_SPARSE_MAX_ELEMENTS // width
    num_dst = -(-sparse_max // dispatch.GATHER_SPARSE_MAX_DEGREE)  # the fewest targets at that mean degree
    assert dispatch.resolve_backend("auto", cpu, sparse_max, num_dst, width) == "gather"
    assert dispatch.resolve_backend("auto", cpu, sparse_max, num_dst - 1, width) == "csr"
    assert dispatch.resolve_backend("auto", cpu, sparse_max + 1, 10 * sparse_max, width) == "csr"
    monkeypatch.setattr(dispatch, "COMPILED_MIN_EDGES", middle)
    expected = "compiled" if compiled_kernel.available() else "csr"
    assert dispatch.resolve_backend("auto", cpu, middle, middle // dense, width) == expected
    # "auto" never picks what a forced backend would be refused on: compiled is CPU-only.
    assert dispatch.resolve_backend("auto", torch.device("mps"), middle, middle // dense, width) == "csr"


@pytest.mark.parametrize("available", [True, False])
def test_backend_for_steps_takes_compiled_only_for_long_cpu_runs_with_a_compiler(monkeypatch, available):
    monkeypatch.setattr(compiled_kernel, "available", lambda: available)
    cpu, cuda, long = torch.device("cpu"), torch.device("cuda"), dispatch.COMPILED_MIN_STEPS
    assert dispatch.backend_for_steps("auto", cpu, long) == ("compiled" if available else "auto")
    assert dispatch.backend_for_steps("auto", cpu, long - 1) == "auto"
    assert dispatch.backend_for_steps("auto", cuda, long) == "auto"
    assert dispatch.backend_for_steps("csr", cpu, long) == "csr"  # a forced backend stays
    assert dispatch.backend_for_steps("auto", cpu, long, windows=True) == "auto"  # band serves windows
    with pytest.raises(ValueError, match="backend must be one of"):
        dispatch.backend_for_steps("fast", cpu, long)


def test_forced_compiled_without_a_compiler_falls_back_to_csr_and_warns_once(monkeypatch):
    monkeypatch.setattr(compiled_kernel, "available", lambda: False)
    monkeypatch.setattr(dispatch, "_warned", set())
    q = k = v = torch.randn(16, 2, 4)
    edge_index = patterns.random(16, 4, generator=torch.Generator().manual_seed(1))
    with pytest.warns(RuntimeWarning, match="no C\\+\\+ compiler|none was found"):
        out = sparse_attention(q, k, v, edge_index, backend="compiled")
    torch.testing.assert_close(out, sparse_attention(q, k, v, edge_index, backend="csr"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # said once only
        sparse_attention(q, k, v, edge_index, backend="compiled")


def test_forced_triton_outside_cuda_and_its_interpreter_is_refused(monkeypatch):
    pytest.importorskip("triton")
    dispatch.kernel_module("triton")  # triton reads the variable when kernels are defined: define them first
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    q = k = v = torch.randn(8, 2, 4)
    with pytest.raises(ValueError, match="triton"):
        sparse_attention(q, k, v, torch.tensor([[0, 1], [1, 0]]), backend="triton")


def test_forced_compiled_off_cpu_is_refused():
    with pytest.raises(ValueError, match="compiled.*CPU"):
        dispatch.resolve_backend("compiled", torch.device("cuda"), 256, 16, 64)
