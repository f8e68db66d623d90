"""Token sequences as graphs: the collated batch against per-sequence brute force."""
import pytest
import torch

from graph_sparse_attn.data.sequence import SequenceGraphCollator
from graph_sparse_attn.patterns import longformer
from graph_sparse_attn.patterns.registry import build_pattern


def test_batch_is_disjoint_chains_with_per_sequence_patterns():
    collate = SequenceGraphCollator("longformer", {"window": 2, "global_indices": [0]}, cls_token=99)
    samples = [(torch.tensor([5, 6, 7]), 1), (torch.tensor([8] * 6), 0), (torch.tensor([4]), 2)]
    batch = collate(samples)
    assert batch.x.tolist() == [99, 5, 6, 7, 99, 8, 8, 8, 8, 8, 8, 99, 4]
    assert batch.pos.tolist() == [0, 1, 2, 3, 0, 1, 2, 3, 4, 5, 6, 0, 1]
    assert batch.batch.tolist() == [0] * 4 + [1] * 7 + [2] * 2
    assert batch.y.tolist() == [1, 0, 2]
    expected = longformer(13, 2, [0], batch=batch.batch)
    assert torch.equal(batch.edge_index, expected)
    assert not ((batch.batch[batch.edge_index[0]] != batch.batch[batch.edge_index[1]]).any())


def test_fixed_patterns_are_cached_per_length_and_random_ones_are_not():
    fixed = SequenceGraphCollator("window", {"window": 1})
    first, again = fixed.pattern_for_length(10), fixed.pattern_for_length(10)
    assert fixed._cached.cache_info().hits == 1
    assert first.dtype == again.dtype == torch.long and torch.equal(first, again)
    assert torch.equal(first, build_pattern("window", 10, window=1))
    rand = SequenceGraphCollator("random", {"num_random": 2})
    assert rand.pattern_for_length(10) is not rand.pattern_for_length(10)


def test_memory_is_linear_in_tokens_not_batch_times_longest():
    collate = SequenceGraphCollator("window", {"window": 4})
    batch = collate([(torch.zeros(3000, dtype=torch.long), 0)] + [(torch.zeros(5, dtype=torch.long), 0)] * 50)
    assert batch.edge_index.size(1) <= 9 * batch.x.numel()


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="unknown pattern"):
        SequenceGraphCollator("spiral")
    with pytest.raises(TypeError, match="tokens"):
        SequenceGraphCollator("window", {"window": 1})([(torch.zeros(3), 0)])


def test_plain_token_lists_collate_like_tensors():
    collate = SequenceGraphCollator("window", {"window": 2}, cls_token=1)
    from_lists = collate([([5, 6, 7, 8], 3), ([9, 4], 1)])
    from_tensors = collate([(torch.tensor([5, 6, 7, 8]), 3), (torch.tensor([9, 4]), 1)])
    for key in ("x", "pos", "batch", "edge_index", "y"):
        assert torch.equal(from_lists[key], from_tensors[key]), key
