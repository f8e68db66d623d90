"""`edge_feature_attention`: its projected and adjoint forms against per-edge keys/values written out densely."""
import math

import pytest
import torch

from graph_sparse_attn.ops import CSRPattern, edge_features
from graph_sparse_attn.ops.edge_features import edge_feature_attention


def per_edge_reference(query, key, value, edge_index, edge_attr, weight, bias):
    """``softmax_j(q_i·(k_j + W e_ij)/√C + b_ij)`` and ``Σ_j α_ij (v_j + W e_ij)``, gathered per edge."""
    return gated_reference(query, key, value, edge_index, edge_attr, weight, bias,
                           torch.ones(edge_index.size(1), dtype=query.dtype), "scale")


def gated_reference(query, key, value, edge_index, edge_attr, weight, bias, gate, gate_mode):
    """`per_edge_reference` with an edge gate: ``s (q·(k + W e)) g + b`` ("scale") or ``s q·(k + W e) + log g + b`` ("log")."""
    src, dst = edge_index
    heads, channels, _ = weight.shape
    edge_proj = torch.einsum("ef,hcf->ehc", edge_attr, weight)
    scores = (query[dst] * (key[src] + edge_proj)).sum(-1) / math.sqrt(channels)
    gate = gate.unsqueeze(-1)
    logits = (scores * gate if gate_mode == "scale" else scores + torch.log(gate)) + bias
    alpha = torch.zeros_like(logits)
    for i in dst.unique():
        alpha[dst == i] = torch.softmax(logits[dst == i], dim=0)
    messages = alpha.unsqueeze(-1) * (value[src] + edge_proj)
    return torch.zeros(query.size(0), heads, channels, dtype=query.dtype).index_add(0, dst, messages), alpha


@pytest.mark.parametrize("projected", [True, False])
@pytest.mark.parametrize("presorted", [True, False])
def test_both_forms_match_per_edge_reference(monkeypatch, projected, presorted):
    monkeypatch.setattr(edge_features, "PROJECTED_MAX_ELEMENTS", 1 << 40 if projected else 0)
    gen = torch.Generator().manual_seed(0)
    num_nodes, heads, channels, edge_dim = 9, 2, 3, 4
    edge_index = torch.unique(torch.randint(0, num_nodes, (2, 40), generator=gen), dim=1)
    edge_index = edge_index[:, torch.randperm(edge_index.size(1), generator=gen)]
    edge_index = edge_index[:, edge_index[1] != 4]  # one target without edges
    make = lambda *shape: torch.randn(*shape, dtype=torch.float64, generator=gen).requires_grad_()  # noqa: E731
    q, k, v = (make(num_nodes, heads, channels) for _ in range(3))
    edge_attr, weight, bias = make(edge_index.size(1), edge_dim), make(heads, channels, edge_dim), make(edge_index.size(1), heads)

    pattern = CSRPattern.from_edge_index(edge_index, num_nodes)
    if presorted:  # a model that sorted its per-edge tensors once hands every layer the sorted view
        out, alpha = edge_feature_attention(q, k, v, pattern.sorted(), pattern.caller_to_sorted(edge_attr), weight,
                                            edge_bias=pattern.caller_to_sorted(bias), need_weights=True)
        alpha = pattern.sorted_to_caller(alpha)
    else:
        out, alpha = edge_feature_attention(q, k, v, pattern, edge_attr, weight, edge_bias=bias, need_weights=True)
    ref_out, ref_alpha = per_edge_reference(q, k, v, edge_index, edge_attr, weight, bias)
    torch.testing.assert_close(out, ref_out)
    torch.testing.assert_close(alpha, ref_alpha)
    inputs = (q, k, v, edge_attr, weight, bias)
    loss, ref_loss = (o.square().sum() + (a * a.detach()).sum() for o, a in ((out, alpha), (ref_out, ref_alpha)))
    for g, r in zip(torch.autograd.grad(loss, inputs), torch.autograd.grad(ref_loss, inputs)):
        torch.testing.assert_close(g, r)


def test_backend_reaches_the_kernel_and_reference_checks_the_bias_form(monkeypatch):
    # `backend` picks the kernel of the projected form too: "compiled" runs its edge-value kernels,
    # and "reference" (which has no per-edge values) computes the equal edge-bias form.
    from graph_sparse_attn.ops import attention, compiled_kernel

    gen = torch.Generator().manual_seed(3)
    edge_index = torch.randint(0, 6, (2, 20), generator=gen)
    pattern = CSRPattern.from_edge_index(edge_index, 6)
    q, k, v = (torch.randn(6, 2, 3, dtype=torch.float64, generator=gen) for _ in range(3))
    attr, weight = torch.randn(20, 5, dtype=torch.float64, generator=gen), torch.randn(2, 3, 5, dtype=torch.float64, generator=gen)
    calls = []
    monkeypatch.setattr(attention, "resolve_backend", lambda backend, *args: calls.append(backend) or "compiled")
    monkeypatch.setattr(compiled_kernel, "attention_with_edge_values", lambda *args: calls.append("kernel") or q.new_full((6, 2, 3), 7.0))
    out, _ = edge_feature_attention(q, k, v, pattern, attr, weight, backend="compiled")
    assert calls == ["compiled", "kernel"] and torch.equal(out, torch.full((6, 2, 3), 7.0, dtype=torch.float64))
    monkeypatch.undo()
    ref, _ = edge_feature_attention(q, k, v, pattern, attr, weight, backend="reference")
    expected, _ = per_edge_reference(q, k, v, edge_index, attr, weight, torch.zeros(20, 2, dtype=torch.float64))
    torch.testing.assert_close(ref, expected)
    with pytest.raises(ValueError, match="backend must be one of"):
        edge_feature_attention(q, k, v, pattern, attr, weight, backend="fast")


@pytest.mark.parametrize("projected", [True, False])
def test_a_table_of_distinct_features_equals_the_features_per_edge(monkeypatch, projected):
    # Categorical features given as a table [U, F] and each edge's row: the same attention, and the
    # same gradients into the table as into the per-edge features gathered from it.
    if not projected:
        monkeypatch.setattr(edge_features, "PROJECTED_MAX_ELEMENTS", 0)
    gen = torch.Generator().manual_seed(5)
    edge_index = torch.randint(0, 7, (2, 30), generator=gen)
    pattern = CSRPattern.from_edge_index(edge_index, 7)
    q, k, v = (torch.randn(7, 2, 3, dtype=torch.float64, generator=gen) for _ in range(3))
    table = torch.randn(4, 5, dtype=torch.float64, generator=gen, requires_grad=True)
    weight = torch.randn(2, 3, 5, dtype=torch.float64, generator=gen)
    index = torch.randint(0, 4, (30,), generator=gen)
    by_table, _ = edge_feature_attention(q, k, v, pattern, table, weight, edge_attr_index=index)
    per_edge, _ = edge_feature_attention(q, k, v, pattern, table[index], weight)
    torch.testing.assert_close(by_table, per_edge)
    grad_out = torch.randn(by_table.shape, dtype=torch.float64, generator=gen)
    torch.testing.assert_close(*(torch.autograd.grad(out, table, grad_out)[0] for out in (by_table, per_edge)))
    with pytest.raises(ValueError, match="edge_attr_index must have shape"):
        edge_feature_attention(q, k, v, pattern, table, weight, edge_attr_index=index[:-1])
    with pytest.raises(ValueError, match=r"\[U, edge_dim\]"):
        edge_feature_attention(q, k, v, pattern, table[:, :4], weight, edge_attr_index=index)


@pytest.mark.parametrize("backend", ["gather", "csr", "compiled"])
@pytest.mark.parametrize("projected", [True, False])
@pytest.mark.parametrize("extras", ["none", "bias+weights", "gate-scale", "gate-log"])
def test_every_backend_and_form_matches_the_gated_reference(monkeypatch, backend, projected, extras):
    # Each (backend, form, option) combination takes its own path through `attention_with_weights`
    # (compiled edge-value kernels, gathered pass, fused kernels with an edge bias): all must agree
    # with the per-edge reference, gradients included.
    monkeypatch.setattr(edge_features, "PROJECTED_MAX_ELEMENTS", 1 << 40 if projected else 0)
    gen = torch.Generator().manual_seed(11)
    num_nodes, heads, channels, edge_dim = 8, 2, 3, 4
    edge_index = torch.randint(0, num_nodes, (2, 30), generator=gen)
    edge_index = edge_index[:, edge_index[1] != 2]  # one target without edges; repeated pairs kept
    num_edges = edge_index.size(1)
    make = lambda *shape: torch.randn(*shape, dtype=torch.float64, generator=gen).requires_grad_()  # noqa: E731
    q, k, v = (make(num_nodes, heads, channels) for _ in range(3))
    edge_attr, weight = make(num_edges, edge_dim), make(heads, channels, edge_dim)
    bias = make(num_edges, heads) if extras == "bias+weights" else torch.zeros(num_edges, heads, dtype=torch.float64)
    gate = (torch.rand(num_edges, dtype=torch.float64, generator=gen) * 0.9 + 0.05).requires_grad_()
    gate_mode = extras[len("gate-"):] if extras.startswith("gate") else "scale"
    kwargs = {"edge_bias": bias} if extras == "bias+weights" else {"edge_gate": gate, "gate_mode": gate_mode} if extras != "none" else {}
    out, alpha = edge_feature_attention(q, k, v, edge_index, edge_attr, weight, need_weights=extras == "bias+weights",
                                        backend=backend, **kwargs)
    ref_gate = gate if extras.startswith("gate") else torch.ones(num_edges, dtype=torch.float64)
    ref_out, ref_alpha = gated_reference(q, k, v, edge_index, edge_attr, weight, bias, ref_gate, gate_mode)
    torch.testing.assert_close(out, ref_out)
    inputs = [q, k, v, edge_attr, weight] + ([bias] if extras == "bias+weights" else [gate] if extras != "none" else [])
    loss, ref_loss = out.square().sum(), ref_out.square().sum()
    if alpha is not None:
        torch.testing.assert_close(alpha, ref_alpha)
        loss, ref_loss = loss + (alpha * alpha.detach()).sum(), ref_loss + (ref_alpha * ref_alpha.detach()).sum()
    for g, r in zip(torch.autograd.grad(loss, inputs), torch.autograd.grad(ref_loss, inputs)):
        torch.testing.assert_close(g, r)


@pytest.mark.parametrize("backend", ["gather", "csr", "compiled"])
@pytest.mark.parametrize("projected", [True, False])
def test_every_backend_and_form_applies_one_dropout_mask(monkeypatch, backend, projected):
    """One draw, checked exactly. Every target has one edge, so each output head is either dropped (0)
    or ``(v_j + W e_ij)/(1 − p)``: the values and (in the adjoint form, added apart from the kernel) the
    edge-feature term must be dropped together and scaled by ``1/(1 − p)``."""
    monkeypatch.setattr(edge_features, "PROJECTED_MAX_ELEMENTS", 1 << 40 if projected else 0)
    gen = torch.Generator().manual_seed(12)
    num_nodes, heads = 40, 2
    edge_index = torch.stack([torch.randint(0, num_nodes, (num_nodes,), generator=gen), torch.randperm(num_nodes, generator=gen)])
    q, k, v = (torch.randn(num_nodes, heads, 3, dtype=torch.float64, generator=gen) for _ in range(3))
    attr, weight = torch.randn(num_nodes, 4, dtype=torch.float64, generator=gen), torch.randn(heads, 3, 4, dtype=torch.float64, generator=gen)
    exact, _ = edge_feature_attention(q, k, v, edge_index, attr, weight, backend=backend)
    src, dst = edge_index
    message = torch.zeros_like(exact).index_add(0, dst, v[src] + torch.einsum("ef,hcf->ehc", attr, weight))
    torch.testing.assert_close(exact, message)
    evaluated, _ = edge_feature_attention(q, k, v, edge_index, attr, weight, dropout=0.5, training=False, backend=backend)
    torch.testing.assert_close(evaluated, exact)
    out, _ = edge_feature_attention(q, k, v, edge_index, attr, weight, dropout=0.25, backend=backend)
    kept = out.abs().sum(-1) != 0  # [N, H]
    assert 0.5 < kept.double().mean() < 0.95  # 80 heads of messages, each kept with probability 0.75
    torch.testing.assert_close(out[kept], message[kept] / 0.75)


def test_second_order_gradients_are_exact_or_refused(monkeypatch):
    # The compiled edge-values kernel's backward builds no graph: double backward through it used
    # to drop the attention terms silently; it now refuses, and gather stays exact.
    monkeypatch.setattr(edge_features, "PROJECTED_MAX_ELEMENTS", 10**9)  # the projected form, which compiled fuses
    torch.manual_seed(0)
    edge_index = torch.tensor([[0, 1, 2, 3, 1], [1, 2, 3, 0, 0]])
    x = torch.randn(4, 6, dtype=torch.float64, requires_grad=True)
    lin = torch.nn.Linear(6, 18, dtype=torch.float64)
    attr, weight = torch.randn(5, 4, dtype=torch.float64), torch.randn(2, 3, 4, dtype=torch.float64, requires_grad=True)

    def second_order(backend):
        q, k, v = lin(x).view(4, 3, 2, 3).unbind(1)
        out, _ = edge_feature_attention(q, k, v, edge_index, attr, weight, backend=backend)
        (grad_x,) = torch.autograd.grad(out.square().sum(), x, create_graph=True)
        return torch.autograd.grad(grad_x.square().sum(), (lin.weight, weight))

    gather = second_order("gather")
    assert all(g.abs().sum() > 0 for g in gather)
    with pytest.raises(RuntimeError, match="differentiate"):
        second_order("compiled")


def test_bad_edge_weights_and_features_are_named():
    q, k, v = torch.randn(4, 2, 3), torch.randn(5, 2, 3), torch.randn(5, 2, 3)
    edge_index = torch.tensor([[0, 4, 2], [1, 3, 0]])
    cases = [
        (dict(edge_attr=torch.randn(3, 4), edge_weight=torch.randn(2, 4)), ValueError, "edge_weight must be a tensor \\[H, C, F\\]"),
        (dict(edge_attr=torch.randn(3, 4), edge_weight=torch.randn(3, 3, 4)), ValueError, "edge_weight must be a tensor"),
        (dict(edge_attr=torch.randn(3, 4), edge_weight=[[0.0]]), ValueError, "edge_weight must be a tensor"),
        (dict(edge_attr=torch.randn(3, 4, dtype=torch.float64), edge_weight=torch.randn(2, 3, 4)), TypeError, "edge_attr must have edge_weight's dtype"),
        (dict(edge_attr=torch.ones(3, 4, dtype=torch.long), edge_weight=torch.randn(2, 3, 4)), TypeError, "edge_attr must be a floating-point"),
    ]
    for kwargs, error, match in cases:
        with pytest.raises(error, match=match):
            edge_feature_attention(q, k, v, edge_index, **kwargs)


@pytest.mark.parametrize("projected", [True, False])
def test_both_forms_take_and_refuse_the_same_inputs(monkeypatch, projected):
    monkeypatch.setattr(edge_features, "PROJECTED_MAX_ELEMENTS", 1 << 40 if projected else 0)
    q, k, v = torch.randn(4, 2, 3), torch.randn(5, 2, 3), torch.randn(5, 2, 3)
    edge_index = torch.tensor([[0, 4, 2], [1, 3, 0]])
    wide = dict(edge_attr=torch.randn(3, 4, dtype=torch.float64), edge_weight=torch.randn(2, 3, 4, dtype=torch.float64))
    out, _ = edge_feature_attention(q, k, v, edge_index, **wide)  # float64 features beside float32 queries
    expected, _ = edge_feature_attention(q, k, v, edge_index, **{name: t.float() for name, t in wide.items()})
    assert out.dtype == torch.float32 and torch.allclose(out, expected, atol=1e-5)
    features = {name: t.float() for name, t in wide.items()}
    for kwargs, error, match in [
        (dict(edge_bias=torch.ones(3, dtype=torch.long)), TypeError, "edge_bias must be a floating-point tensor"),
        (dict(edge_bias=[0.0, 0.0, 0.0]), TypeError, "edge_bias must be a floating-point tensor"),
        (dict(edge_gate=[1.0, 1.0, 1.0]), TypeError, "edge_gate must be a floating-point tensor"),
        (dict(edge_attr=torch.randn(2, 4), edge_attr_index=torch.tensor([0, 2, 1])), ValueError,
         "edge_attr_index must hold rows of edge_attr in \\[0, 2\\)"),
    ]:
        with pytest.raises(error, match=match):
            edge_feature_attention(q, k, v, edge_index, **{**features, **kwargs})
