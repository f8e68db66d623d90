"""Learnable patterns: gate modules, penalties, gated SparseAttnConv, and a train-then-prune demo."""
import math

import pytest
import torch
import torch.nn.functional as F

from graph_sparse_attn import SparseAttnConv, sparse_attention
from graph_sparse_attn.nn.gates import (
    EdgeGate,
    MLPGate,
    RelativePositionGate,
    hard_concrete,
    l0_penalty,
    relative_position_bucket,
)
from graph_sparse_attn.patterns import prune, sliding_window


def test_relative_position_bucket_is_exact_near_and_logarithmic_far():
    offsets = torch.arange(-3000, 3001)
    buckets = relative_position_bucket(offsets, num_buckets=32, max_distance=512)
    assert buckets.min() >= 0 and buckets.max() < 32
    near = offsets.abs() < 8
    assert torch.unique(buckets[near]).numel() == near.sum()  # each small offset has its own bucket
    pos = buckets[offsets >= 0]
    assert torch.all(pos[1:] >= pos[:-1])  # monotone in distance
    assert set(buckets[offsets < 0].tolist()).isdisjoint(set(buckets[offsets > 0].tolist()))
    assert buckets[offsets == 3000] == buckets[offsets == 512]


def test_gate_modules_shapes_ranges_and_gradients():
    edge_index = sliding_window(20, 3)
    rel = RelativePositionGate(heads=2, num_buckets=16, max_distance=64)
    per_edge = EdgeGate(edge_index.size(1), heads=2)
    mlp = MLPGate(edge_dim=5, heads=2)
    gates = [rel(edge_index), per_edge(), mlp(torch.randn(edge_index.size(1), 5))]
    for gate in gates:
        assert gate.shape == (edge_index.size(1), 2)
        assert ((gate > 0) & (gate < 1)).all()
        torch.testing.assert_close(gate.mean(), torch.tensor(0.9), atol=0.05, rtol=0)
    sum(g.sum() for g in gates).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for m in (rel, per_edge, mlp) for p in m.parameters())
    # the relative gate depends only on the offset, so it transfers to any length
    long_edges = sliding_window(500, 3)
    long_gate = rel(long_edges)
    offsets = long_edges[1] - long_edges[0]
    for off in range(-3, 4):
        assert torch.unique(long_gate[offsets == off], dim=0).size(0) == 1


@pytest.mark.parametrize("hard", [False, True])
@pytest.mark.parametrize("build", [lambda init, hard: EdgeGate(3, init=init, hard_concrete=hard),
                                   lambda init, hard: RelativePositionGate(init=init, hard_concrete=hard),
                                   lambda init, hard: MLPGate(2, init=init, hard_concrete=hard)])
def test_every_gate_starts_at_init_and_refuses_one_outside_0_1(build, hard):
    for init in (0.05, 0.25, 0.9):
        gate = build(init, hard).eval()
        logits = torch.full((4,), gate.init_logit)
        torch.testing.assert_close(gate._gate(logits), torch.full((4,), init))  # the evaluation gate starts at init
    for bad in (0.0, 1.0, 1.5, float("nan")):
        with pytest.raises(ValueError, match="init must be in \\(0, 1\\)"):
            build(bad, hard)


def test_hard_concrete_gates_hit_exact_zero_and_one_and_penalty_tracks_logits():
    logits = torch.full((10000,), 0.0)
    sample = hard_concrete(logits, training=True)
    assert (sample == 0).any() and (sample == 1).any() and ((sample > 0) & (sample < 1)).any()
    assert torch.equal(hard_concrete(logits, training=False), hard_concrete(logits, training=False))
    assert l0_penalty(torch.full((3,), -10.0)) < 0.01 < 0.99 < l0_penalty(torch.full((3,), 10.0))


@pytest.mark.parametrize("gate_mode", ["scale", "log"])
def test_gated_conv_matches_dense_formula(gate_mode):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(12, 6, dtype=torch.float64, generator=gen)
    edge_index = sliding_window(12, 2)
    edge_attr = torch.randn(edge_index.size(1), 3, dtype=torch.float64, generator=gen)
    gate = torch.rand(edge_index.size(1), 2, dtype=torch.float64, generator=gen)
    conv = SparseAttnConv(6, 4, heads=2, edge_dim=3, gate_mode=gate_mode, root_weight=False).double()
    out = conv(x, edge_index, edge_attr, edge_gate=gate)

    src, dst = edge_index
    q = conv.lin_query(x).view(-1, 2, 4)
    k = conv.lin_key(x).view(-1, 2, 4)[src] + conv.lin_edge(edge_attr).view(-1, 2, 4)
    v = conv.lin_value(x).view(-1, 2, 4)[src] + conv.lin_edge(edge_attr).view(-1, 2, 4)
    score = (q[dst] * k).sum(-1) / 2.0
    logits = score * gate if gate_mode == "scale" else score + gate.log()
    dense = torch.full((2, 12, 12), float("-inf"), dtype=torch.float64)
    dense[:, dst, src] = logits.t()
    probs = torch.softmax(dense, dim=-1)[:, dst, src].t()
    expected = torch.zeros(12, 2, 4, dtype=torch.float64).index_add(0, dst, probs[..., None] * v).reshape(12, 8)
    torch.testing.assert_close(out, expected)


def test_prune_keeps_edges_above_threshold_in_order():
    edge_index = sliding_window(10, 2)
    gate = torch.linspace(0, 1, edge_index.size(1))
    with pytest.warns(UserWarning, match="targets without edges"):
        kept = prune(edge_index, gate, 0.5)
    assert torch.equal(kept, edge_index[:, gate > 0.5])
    per_head = torch.stack([gate, 1 - gate], 1)
    with pytest.warns(UserWarning, match="targets without edges"):
        assert prune(edge_index, per_head, 0.9).size(1) == int(((gate > 0.9) | (1 - gate > 0.9)).sum())
    with pytest.raises(ValueError, match="gate"):
        prune(edge_index, gate[:-1], 0.5)
    with pytest.raises(TypeError, match="edge_index must have an integer dtype"):
        prune(edge_index.float(), gate)
    with pytest.raises(ValueError, match="non-negative node indices"):
        prune(edge_index - 1, gate)
    with pytest.raises(TypeError, match="gate must be a floating-point Tensor"):
        prune(edge_index, gate.tolist())
    with pytest.raises(ValueError, match="NaN"):  # would be dropped silently by the comparison
        prune(edge_index, torch.where(gate > 0.9, float("nan"), gate))
    with pytest.raises(TypeError, match="threshold must be a number"):
        prune(edge_index, gate, "0.5")


def test_prune_reports_emptied_targets_and_keeps_the_strongest_per_target():
    gen = torch.Generator().manual_seed(1)
    edge_index = torch.randint(0, 12, (2, 80), generator=gen)
    gate = torch.rand(80, 3, generator=gen).round(decimals=1)  # ties between edges of one target
    strength = gate.amax(1)
    for threshold in (0.0, 0.5, 0.8, 0.95):
        for k in (0, 1, 2, 5):
            # brute force: per target, its k strongest edges (earlier edge first on ties) plus those above threshold
            expected = strength > threshold
            for t in edge_index[1].unique().tolist():
                ids = [e for e in range(80) if edge_index[1, e] == t]
                for e in sorted(ids, key=lambda e: (-strength[e].item(), e))[:k]:
                    expected[e] = True
            emptied = sorted(set(edge_index[1].tolist()) - set(edge_index[1, expected].tolist()))
            kept, info = prune(edge_index, gate, threshold, min_per_target=k, return_info=True)
            assert torch.equal(info.mask, expected)
            assert torch.equal(kept, edge_index[:, expected])
            assert info.emptied_targets.tolist() == emptied
            if k > 0:
                assert emptied == []
            if emptied:
                with pytest.warns(UserWarning, match=f"left {len(emptied)} of"):
                    assert torch.equal(prune(edge_index, gate, threshold, min_per_target=k), kept)
    with pytest.raises(ValueError, match="min_per_target"):
        prune(edge_index, gate, 0.5, min_per_target=-1)


@pytest.mark.parametrize("edge_dim", [None, 3])
def test_log_gated_model_equals_pruned_model(edge_dim):
    """Gates of exactly 0 remove edges ("log" mode), so pruning at any threshold that keeps every
    non-zero gate is exact; with gates of exactly 0 or 1, even without gates after pruning."""
    gen = torch.Generator().manual_seed(2)
    num_nodes, heads = 15, 2
    edge_index = torch.randint(0, num_nodes, (2, 90), generator=gen)
    edge_attr = torch.randn(90, edge_dim, dtype=torch.float64, generator=gen) if edge_dim else None
    x = torch.randn(num_nodes, 6, dtype=torch.float64, generator=gen)
    conv = SparseAttnConv(6, 4, heads=heads, edge_dim=edge_dim, gate_mode="log").double().eval()
    # Hard-concrete gates in evaluation: logits beyond ±2.4 give exact 0s and 1s, the rest lie between.
    logits = torch.randn(90, generator=gen, dtype=torch.float64) * 4
    logits[edge_index[1] == 3] = -10.0  # target 3 is switched off entirely
    binary = hard_concrete(logits.sign() * 10, training=False)
    mixed = hard_concrete(logits, training=False)
    assert set(binary.unique().tolist()) == {0.0, 1.0}
    assert (mixed == 0).any() and (mixed == 1).any() and ((mixed > 0) & (mixed < 1)).any()
    assert (edge_index[1] == 3).any()

    def pruned_run(gate, threshold, keep_gate):
        kept, info = prune(edge_index, gate, threshold, return_info=True)
        attr = None if edge_attr is None else edge_attr[info.mask]
        return conv(x, kept, attr, edge_gate=gate[info.mask] if keep_gate else None), info

    gated = conv(x, edge_index, edge_attr, edge_gate=binary)
    root = conv.lin_skip(x)
    torch.testing.assert_close(gated[3], root[3], rtol=0, atol=0)  # attention part exactly zero
    for threshold in torch.linspace(0, 0.99, 12).tolist():
        out, info = pruned_run(binary, threshold, keep_gate=False)
        assert 3 in info.emptied_targets.tolist()
        torch.testing.assert_close(out, gated, rtol=1e-12, atol=1e-12)

    gated = conv(x, edge_index, edge_attr, edge_gate=mixed)
    smallest = mixed[mixed > 0].min().item()
    for threshold in [0.0, smallest / 2, smallest * 0.999]:
        torch.testing.assert_close(pruned_run(mixed, threshold, keep_gate=True)[0], gated, rtol=1e-12, atol=1e-12)
    # pruning a non-zero gate changes the model: the comparison above can fail
    assert not torch.allclose(pruned_run(mixed, smallest, keep_gate=True)[0], gated)


class CopyBack(torch.nn.Module):
    """One attention layer whose only way to find "the token `lag` back" is the relative gate."""

    def __init__(self, vocab: int, dim: int = 32):
        super().__init__()
        self.embed = torch.nn.Embedding(vocab, dim)
        self.qkv = torch.nn.Linear(dim, 3 * dim)
        self.gate = RelativePositionGate(heads=1, num_buckets=64, max_distance=64, init=0.5)
        self.head = torch.nn.Linear(dim, vocab)

    def forward(self, tokens, edge_index, positions, use_gate=True):
        q, k, v = self.qkv(self.embed(tokens)).unsqueeze(1).chunk(3, dim=-1)
        gate = self.gate(edge_index, positions) if use_gate else None
        out = sparse_attention(q, k, v, edge_index, edge_gate=gate, gate_mode="log")
        return self.head(out.squeeze(1))


def test_relative_gate_learns_the_right_offset_and_prunes_to_it():
    torch.manual_seed(0)
    vocab, lag, window, seq_len, batch_size = 10, 3, 16, 48, 16
    batch = torch.arange(batch_size).repeat_interleave(seq_len)
    positions = torch.arange(seq_len).repeat(batch_size)
    edge_index = sliding_window(seq_len * batch_size, window, batch=batch)
    model = CopyBack(vocab)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)

    def sample():
        tokens = torch.randint(0, vocab, (batch_size, seq_len))
        target = torch.roll(tokens, lag, dims=1).flatten()
        return tokens.flatten(), target, positions >= lag

    for _ in range(300):
        tokens, target, valid = sample()
        logits = model(tokens, edge_index, positions)
        loss = F.cross_entropy(logits[valid], target[valid]) + 0.05 * model.gate.penalty(edge_index, positions)
        opt.zero_grad()
        loss.backward()
        opt.step()

    model.eval()
    with torch.no_grad():
        gate = model.gate(edge_index, positions).squeeze(1)
        pruned, info = prune(edge_index, gate, 0.5, return_info=True)
        # only targets without a token `lag` back (the first `lag` positions) may lose all their edges
        assert bool((positions[info.emptied_targets] < lag).all())
        offsets = positions[pruned[1]] - positions[pruned[0]]
        all_offsets = positions[edge_index[1]] - positions[edge_index[0]]
        assert (offsets == lag).sum() == (all_offsets == lag).sum(), "the true offset must survive pruning"
        other_before, other_after = (all_offsets != lag).sum(), (offsets != lag).sum()
        assert other_after <= 0.1 * other_before, f"kept {other_after} of {other_before} wrong-offset edges"
        tokens, target, valid = sample()  # held-back samples
        accuracy = (model(tokens, pruned, positions, use_gate=False).argmax(-1) == target)[valid].float().mean()
        assert accuracy >= 0.95, f"accuracy on the pruned pattern {accuracy:.3f}"


@pytest.mark.parametrize(
    "call,error,match",
    [
        (lambda: EdgeGate(3.5), TypeError, "num_edges must be an int"),
        (lambda: EdgeGate(True), TypeError, "num_edges must be an int"),
        (lambda: EdgeGate(3, init="0.5"), TypeError, "init must be a float"),
        (lambda: EdgeGate(3, hard_concrete="false"), TypeError, "hard_concrete must be a bool"),
        (lambda: RelativePositionGate(1, num_buckets=8.0), TypeError, "num_buckets must be an int"),
        (lambda: MLPGate(4, hidden_channels=0), ValueError, "hidden_channels must be >= 1"),
        (lambda: RelativePositionGate(1)(torch.zeros(5, 2, dtype=torch.long)), ValueError, "edge_index must be an integer tensor"),
        (lambda: RelativePositionGate(1)(torch.zeros(2, 3)), ValueError, "edge_index must be an integer tensor"),
        (lambda: RelativePositionGate(1)(torch.zeros(2, 3, dtype=torch.long), torch.tensor([[0, 1], [2, 3]])), ValueError, "positions"),
        (lambda: RelativePositionGate(1)(torch.zeros(2, 3, dtype=torch.long), torch.tensor([0.0, 1.0])), ValueError, "positions"),
        (lambda: MLPGate(4)(torch.ones(3, 4, dtype=torch.long)), TypeError, "edge_attr must be a floating-point tensor"),
        (lambda: MLPGate(4)([[0.0] * 4]), TypeError, "edge_attr must be a floating-point tensor"),
        (lambda: RelativePositionGate(1)(torch.tensor([[-1], [0]]), torch.arange(3)), ValueError, "edge_index must index positions"),
        (lambda: RelativePositionGate(1)(torch.tensor([[0], [3]]), torch.arange(3)), ValueError, "edge_index must index positions"),
        (lambda: RelativePositionGate(1)(torch.ones(2, 3, dtype=torch.bool)), ValueError, "edge_index must be an integer tensor"),
        (lambda: prune(torch.zeros(2, 3, dtype=torch.long), torch.rand(3, 0)), ValueError, "H >= 1"),
        (lambda: prune(torch.zeros(2, 3, dtype=torch.long), torch.rand(3), return_info="yes"), TypeError, "return_info must be a bool"),
    ],
)
def test_bad_gate_arguments_are_named(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_penalties_of_no_gates_are_zero_not_nan():
    assert EdgeGate(0).penalty().item() == 0.0 and EdgeGate(0, hard_concrete=True).penalty().item() == 0.0
    assert RelativePositionGate(2).penalty(torch.empty(2, 0, dtype=torch.long)).item() == 0.0
