"""Autograd for the kernel backends, registered as `torch.library` custom ops.

``graph_sparse_attn::attention`` returns ``(out, lse)`` and ``graph_sparse_attn::attention_backward``
its gradients; both dispatch to the backend module named by their first argument (see
`ops.dispatch`). As custom ops they are opaque to ``torch.compile``: a compiled user model calls
them without graph breaks, whatever the backend does inside (sparse tensors, triton launches,
its own compiled kernels). The pattern travels as its index tensors.

Per-edge tensors are head-major ``[1|H, E]`` in the pattern's sorted order. Dropout draws its
mask from a one-element seed tensor, so the backward pass (and `sparse_attention`'s returned
weights) regenerate exactly the mask the forward pass used without storing it.
"""
from __future__ import annotations

import functools
import weakref
from typing import Any, Callable, Optional, Tuple

import torch
from torch import Tensor

from . import csr_kernel
from .dispatch import kernel_module
from .pattern import CSRPattern

_NO_SEED: Optional[Tensor] = None
_HALF = (torch.float16, torch.bfloat16)
# The CSRPattern behind each live rowptr tensor, so backends can cache layouts per pattern object.
_patterns: "weakref.WeakValueDictionary[int, CSRPattern]" = weakref.WeakValueDictionary()


def fused_attention(
    backend: str, q: Tensor, k: Tensor, v: Tensor, pattern: CSRPattern,
    bias: Optional[Tensor], gate: Optional[Tensor], dropout_p: float, seed: Optional[Tensor],
) -> Tuple[Tensor, Tensor]:
    """``(out [N_dst, H, Dv], lse [H, N_dst])`` of kernel ``backend``, differentiable in q, k, v, bias, gate.

    ``q`` is already scaled; ``lse`` is not differentiable.
    """
    if not torch.compiler.is_compiling():
        _patterns[id(pattern.rowptr)] = pattern
    return torch.ops.graph_sparse_attn.attention(
        backend, q, k, v, *_pattern_tensors(pattern), pattern.num_src, pattern.has_duplicates, bias, gate, dropout_p, seed
    )


def _pattern_tensors(pattern: CSRPattern) -> Tuple[Tensor, ...]:
    return pattern.rowptr, pattern.col, pattern.row, pattern.colptr, pattern.row_t, pattern.perm_t


def _pattern(rowptr: Tensor, col: Tensor, row: Tensor, colptr: Tensor, row_t: Tensor, perm_t: Tensor,
             num_src: int, has_duplicates: bool) -> CSRPattern:
    known = _patterns.get(id(rowptr))
    if known is not None and known.rowptr is rowptr and known.col is col:
        return known
    return CSRPattern(rowptr=rowptr, col=col, row=row, perm=None, colptr=colptr, row_t=row_t, perm_t=perm_t,
                      num_src=num_src, num_dst=rowptr.numel() - 1, has_duplicates=has_duplicates)


def autocast_off(attend: Callable) -> Callable:
    """Run ``attend`` as autocast runs its float32 ops: half-precision tensor arguments become
    float32, and autocast is off inside (on the device of the first tensor argument).

    `sparse_attention` computes in float32 for half inputs anyway; under ``torch.autocast`` its
    kernels' products would drop back to half precision (and CPU's sparse products have no
    bfloat16 kernel), and half edge features made by autocast's linear layers would not match
    float32 weights. The entry points and the custom ops' bodies (backward runs them inside the
    caller's autocast region too) take this decorator."""

    @functools.wraps(attend)
    def run(*args: Any, **kwargs: Any) -> Any:
        device = next((arg.device.type for arg in args if isinstance(arg, Tensor)), None)
        if device is None or not torch.is_autocast_enabled(device):
            return attend(*args, **kwargs)
        widen = lambda value: value.float() if isinstance(value, Tensor) and value.dtype in _HALF else value  # noqa: E731
        with torch.autocast(device, enabled=False):
            return attend(*map(widen, args), **{name: widen(value) for name, value in kwargs.items()})

    return run


def _dropout_keep(seed: Optional[Tensor], like: Tensor, dropout_p: float) -> Optional[Tensor]:
    """The ``[H, E]`` dropout multipliers drawn from ``seed`` (``None`` without dropout)."""
    if dropout_p == 0 or seed is None:
        return None
    return csr_kernel.dropout_scale(tuple(like.shape), dropout_p, like, seed=int(seed))


@torch.library.custom_op("graph_sparse_attn::attention", mutates_args=())
@autocast_off
def _attention_op(
    backend: str, q: Tensor, k: Tensor, v: Tensor,
    rowptr: Tensor, col: Tensor, row: Tensor, colptr: Tensor, row_t: Tensor, perm_t: Tensor,
    num_src: int, has_duplicates: bool, bias: Optional[Tensor], gate: Optional[Tensor], dropout_p: float, seed: Optional[Tensor],
) -> Tuple[Tensor, Tensor]:
    pattern = _pattern(rowptr, col, row, colptr, row_t, perm_t, num_src, has_duplicates)
    keep = _dropout_keep(seed, q.new_empty(()).expand(q.size(1), col.numel()), dropout_p)
    out, lse = kernel_module(backend).forward(q, k, v, pattern, bias, gate, keep)
    return out.contiguous(), lse.contiguous()


@_attention_op.register_fake
def _(backend, q, k, v, rowptr, col, row, colptr, row_t, perm_t, num_src, has_duplicates, bias, gate, dropout_p, seed):
    return q.new_empty(q.size(0), q.size(1), v.size(2)), q.new_empty(q.size(1), q.size(0))


@torch.library.custom_op("graph_sparse_attn::attention_backward", mutates_args=())
@autocast_off
def _attention_backward_op(
    backend: str, grad_out: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor,
    rowptr: Tensor, col: Tensor, row: Tensor, colptr: Tensor, row_t: Tensor, perm_t: Tensor,
    num_src: int, has_duplicates: bool, bias: Optional[Tensor], gate: Optional[Tensor], dropout_p: float,
    seed: Optional[Tensor], need_dlogits: bool, need_dgate: bool,
) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    pattern = _pattern(rowptr, col, row, colptr, row_t, perm_t, num_src, has_duplicates)
    keep = _dropout_keep(seed, q.new_empty(()).expand(q.size(1), col.numel()), dropout_p)
    dq, dk, dv, dlogits = kernel_module(backend).backward(
        grad_out.contiguous(), q, k, v, out, lse, pattern, bias, gate, keep, need_dlogits or need_dgate
    )
    # d logit / d gate = the unscaled-by-gate score q·k, recomputed only when a gate is learned.
    with csr_kernel._quiet_sparse():
        dgate = dlogits * csr_kernel.sddmm(pattern, q, k) if need_dgate else q.new_empty(0)
    # Custom-op outputs must have the strides their fake kernels promise: contiguous.
    grads = (dq, dk, dv, dlogits if need_dlogits else q.new_empty(0), dgate)
    return tuple(g.contiguous() for g in grads)


@_attention_backward_op.register_fake
def _(backend, grad_out, q, k, v, out, lse, rowptr, col, row, colptr, row_t, perm_t, num_src, has_duplicates, bias, gate,
      dropout_p, seed, need_dlogits, need_dgate):
    edge_grad = lambda needed: q.new_empty(q.size(1), col.numel()) if needed else q.new_empty(0)  # noqa: E731
    # Contiguous, as the real kernel returns them (empty_like would copy a permuted input's strides).
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape), edge_grad(need_dlogits), edge_grad(need_dgate)


def _setup_context(ctx, inputs, output) -> None:
    backend, q, k, v, rowptr, col, row, colptr, row_t, perm_t, num_src, has_duplicates, bias, gate, dropout_p, seed = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse, rowptr, col, row, colptr, row_t, perm_t, bias, gate, seed)
    ctx.backend, ctx.num_src, ctx.has_duplicates, ctx.dropout_p = backend, num_src, has_duplicates, dropout_p


def _backward(ctx, grad_out: Tensor, grad_lse: Tensor):
    q, k, v, out, lse, rowptr, col, row, colptr, row_t, perm_t, bias, gate, seed = ctx.saved_tensors
    need_bias = bias is not None and ctx.needs_input_grad[12]
    need_gate = gate is not None and ctx.needs_input_grad[13]
    dq, dk, dv, dlogits, dgate = torch.ops.graph_sparse_attn.attention_backward(
        ctx.backend, grad_out, q, k, v, out, lse, rowptr, col, row, colptr, row_t, perm_t, ctx.num_src, ctx.has_duplicates,
        bias, gate, ctx.dropout_p, seed, need_bias, need_gate,
    )
    grad_bias = _reduce_heads(dlogits, bias) if need_bias else None
    grad_gate = _reduce_heads(dgate, gate) if need_gate else None
    return (None, dq, dk, dv) + (None,) * 8 + (grad_bias, grad_gate, None, None)


def _reduce_heads(grad: Tensor, like: Tensor) -> Tensor:
    """Sum a ``[H, E]`` gradient over heads for a per-edge tensor shared by all heads (``[1, E]``)."""
    return grad.sum(0, keepdim=True) if like.size(0) == 1 and grad.size(0) != 1 else grad


torch.library.register_autograd("graph_sparse_attn::attention", _backward, setup_context=_setup_context)


def _no_double_backward(ctx, *grads):
    raise RuntimeError(
        "sparse_attention: the fused backends (csr, compiled, triton) differentiate once; for higher-order "
        "gradients (create_graph=True, then backward again) use backend='gather'"
    )


# The backward kernels build no graph: without this, a second backward through them would fail
# with a hint to register autograd, addressed to the library rather than its user.
torch.library.register_autograd("graph_sparse_attn::attention_backward", _no_double_backward)


@torch.library.custom_op("graph_sparse_attn::edge_softmax", mutates_args=())
@autocast_off
def _edge_softmax_op(
    q: Tensor, k: Tensor, rowptr: Tensor, col: Tensor, row: Tensor, colptr: Tensor, row_t: Tensor, perm_t: Tensor,
    num_src: int, has_duplicates: bool, bias: Optional[Tensor], gate: Optional[Tensor], lse: Tensor,
) -> Tensor:
    pattern = _pattern(rowptr, col, row, colptr, row_t, perm_t, num_src, has_duplicates)
    with csr_kernel._quiet_sparse():
        scores = csr_kernel.sddmm(pattern, q, k)
    return csr_kernel.logits(scores, bias, gate).sub(csr_kernel.per_edge(lse, pattern)).exp_().contiguous()


@_edge_softmax_op.register_fake
def _(q, k, rowptr, col, row, colptr, row_t, perm_t, num_src, has_duplicates, bias, gate, lse):
    return q.new_empty(q.size(1), col.numel())


@torch.library.custom_op("graph_sparse_attn::edge_softmax_backward", mutates_args=())
@autocast_off
def _edge_softmax_backward_op(
    grad_probs: Tensor, probs: Tensor, q: Tensor, k: Tensor, rowptr: Tensor, col: Tensor, row: Tensor, colptr: Tensor,
    row_t: Tensor, perm_t: Tensor, num_src: int, has_duplicates: bool, gate: Optional[Tensor], need_dgate: bool,
) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    pattern = _pattern(rowptr, col, row, colptr, row_t, perm_t, num_src, has_duplicates)
    with csr_kernel._quiet_sparse():
        # dS = P ⊙ (dP − rowsum(P ⊙ dP)): the Jacobian of a softmax over each target's edges.
        grad_probs = grad_probs.contiguous()
        row_dot = csr_kernel.segment_sum(probs * grad_probs, pattern)
        grad_logits = (grad_probs - csr_kernel.per_edge(row_dot, pattern)).mul_(probs)
        grad_scores = grad_logits * gate if gate is not None else grad_logits
        grad_q, grad_k = csr_kernel.sddmm_backward(pattern, grad_scores, q, k)
        grad_gate = grad_logits * csr_kernel.sddmm(pattern, q, k) if need_dgate else q.new_empty(0)
    return grad_q.contiguous(), grad_k.contiguous(), grad_logits.contiguous(), grad_gate.contiguous()


@_edge_softmax_backward_op.register_fake
def _(grad_probs, probs, q, k, rowptr, col, row, colptr, row_t, perm_t, num_src, has_duplicates, gate, need_dgate):
    return q.new_empty(q.shape), k.new_empty(k.shape), probs.new_empty(probs.shape), probs.new_empty(probs.shape if need_dgate else 0)


def _setup_edge_softmax(ctx, inputs, output) -> None:
    q, k, rowptr, col, row, colptr, row_t, perm_t, num_src, has_duplicates, bias, gate, lse = inputs
    ctx.save_for_backward(output, q, k, rowptr, col, row, colptr, row_t, perm_t, bias, gate)
    ctx.num_src, ctx.has_duplicates = num_src, has_duplicates


def _edge_softmax_backward(ctx, grad_probs: Tensor):
    probs, q, k, rowptr, col, row, colptr, row_t, perm_t, bias, gate = ctx.saved_tensors
    need_gate = gate is not None and ctx.needs_input_grad[11]
    grad_q, grad_k, grad_logits, grad_gate = torch.ops.graph_sparse_attn.edge_softmax_backward(
        grad_probs, probs, q, k, rowptr, col, row, colptr, row_t, perm_t, ctx.num_src, ctx.has_duplicates, gate, need_gate
    )
    grad_bias = _reduce_heads(grad_logits, bias) if bias is not None and ctx.needs_input_grad[10] else None
    return (grad_q, grad_k) + (None,) * 8 + (grad_bias, _reduce_heads(grad_gate, gate) if need_gate else None, None)


torch.library.register_autograd("graph_sparse_attn::edge_softmax", _edge_softmax_backward, setup_context=_setup_edge_softmax)
torch.library.register_autograd("graph_sparse_attn::edge_softmax_backward", _no_double_backward)


def edge_softmax(
    q: Tensor, k: Tensor, pattern: CSRPattern, bias: Optional[Tensor], gate: Optional[Tensor], lse: Tensor
) -> Tensor:
    """``softmax`` of ``q·k ⊙ gate + bias`` over each target's edges, ``[H, E]`` in sorted order, from ``lse``.

    Differentiable in ``q``, ``k``, ``bias`` and ``gate`` with the softmax's own Jacobian (``lse`` is a constant).
    """
    return torch.ops.graph_sparse_attn.edge_softmax(
        q, k, *_pattern_tensors(pattern), pattern.num_src, pattern.has_duplicates, bias, gate, lse.detach()
    )


@torch.library.custom_op("graph_sparse_attn::dropped_weights", mutates_args=())
def _dropped_weights_op(alpha: Tensor, dropout_p: float, seed: Tensor) -> Tensor:
    return (alpha * _dropout_keep(seed, alpha, dropout_p)).contiguous()


@_dropped_weights_op.register_fake
def _(alpha, dropout_p, seed):
    return alpha.new_empty(alpha.shape)


def _setup_dropped_weights(ctx, inputs, output) -> None:
    _, dropout_p, seed = inputs
    ctx.save_for_backward(seed)
    ctx.dropout_p = dropout_p


def _dropped_weights_backward(ctx, grad: Tensor):
    (seed,) = ctx.saved_tensors
    return torch.ops.graph_sparse_attn.dropped_weights(grad, ctx.dropout_p, seed), None, None


torch.library.register_autograd("graph_sparse_attn::dropped_weights", _dropped_weights_backward, setup_context=_setup_dropped_weights)


def dropped_weights(alpha: Tensor, dropout_p: float, seed: Tensor) -> Tensor:
    """``alpha [H, E]`` (sorted order) times the dropout multipliers the kernels drew from ``seed``: the
    weights a fused call used. A custom op, so that regenerating the mask from ``seed`` (a host read)
    breaks no ``torch.compile`` graph."""
    return torch.ops.graph_sparse_attn.dropped_weights(alpha, dropout_p, seed)
