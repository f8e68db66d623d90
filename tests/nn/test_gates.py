"""Learnable patterns: gate modules, penalties, gated SparseAttnConv, and a train-then-prune demo."""

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
    kept = prune(edge_index, gate, 0.5)
    assert torch.equal(kept, edge_index[:, gate > 0.5])
    per_head = torch.stack([gate, 1 - gate], 1)
    assert prune(edge_index, per_head, 0.9).size(1) == int(((gate > 0.9) | (1 - gate > 0.9)).sum())
    with pytest.raises(ValueError, match="gate"):
        prune(edge_index, gate[:-1], 0.5)


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
        pruned = prune(edge_index, gate, 0.5)
        offsets = positions[pruned[1]] - positions[pruned[0]]
        all_offsets = positions[edge_index[1]] - positions[edge_index[0]]
        assert (offsets == lag).sum() == (all_offsets == lag).sum(), "the true offset must survive pruning"
        other_before, other_after = (all_offsets != lag).sum(), (offsets != lag).sum()
        assert other_after <= 0.1 * other_before, f"kept {other_after} of {other_before} wrong-offset edges"
        tokens, target, valid = sample()  # held-back samples
        accuracy = (model(tokens, pruned, positions, use_gate=False).argmax(-1) == target)[valid].float().mean()
        assert accuracy >= 0.95, f"accuracy on the pruned pattern {accuracy:.3f}"
