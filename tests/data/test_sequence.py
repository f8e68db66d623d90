"""Token sequences as graphs: the collated batch against per-sequence brute force."""
import numpy as np
import pytest
import torch

from graph_sparse_attn.data.sequence import PackedSequences, SequenceGraphCollator
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


def counting_builds(monkeypatch):
    built = []

    def build(name, length, **params):
        built.append(length)
        return build_pattern(name, length, **params)

    monkeypatch.setattr("graph_sparse_attn.data.sequence.build_pattern", build)
    return built


def test_fixed_patterns_are_cached_per_length_and_random_ones_are_not(monkeypatch):
    built = counting_builds(monkeypatch)
    fixed = SequenceGraphCollator("window", {"window": 1})
    first, again = fixed.pattern_for_length(10), fixed.pattern_for_length(10)
    assert built == [10]  # one build for both calls
    assert first.dtype == again.dtype == torch.long and torch.equal(first, again)
    assert torch.equal(first, build_pattern("window", 10, window=1))
    rand = SequenceGraphCollator("random", {"num_random": 2})
    assert rand.pattern_for_length(10) is not rand.pattern_for_length(10)


def test_the_cached_spec_cannot_change_under_the_cache():
    params = {"window": 1, "global_indices": [0]}
    collate = SequenceGraphCollator("longformer", params)
    collate.pattern_for_length(10)
    params["global_indices"].append(5)  # the caller's list: not the collator's
    collate.pattern_params["global_indices"].append(7)  # a copy
    for length in (10, 11):  # cached and fresh alike
        assert torch.equal(collate.pattern_for_length(length), longformer(length, 1, [0]))
    with pytest.raises(AttributeError):
        collate.pattern = "window"


def test_cache_is_bounded_in_bytes_and_drops_the_least_recently_used(monkeypatch):
    built = counting_builds(monkeypatch)
    # window=1 over n nodes has 3n - 2 edges: 8 bytes each as int32 pairs.
    bytes_of = lambda n: 8 * (3 * n - 2)
    collate = SequenceGraphCollator("window", {"window": 1}, cache_bytes=bytes_of(100) + bytes_of(60))
    built.clear()
    for length in (100, 50, 100, 60, 100, 50):
        assert torch.equal(collate.pattern_for_length(length), build_pattern("window", length, window=1))
    # 60 evicts 50 (least recently used), not the recently used 100; 50 is then built again.
    assert built == [100, 50, 60, 50]
    assert collate._cached_bytes <= collate.cache_bytes
    too_big = SequenceGraphCollator("window", {"window": 1}, cache_bytes=bytes_of(10) - 1)
    built.clear()
    too_big.pattern_for_length(10), too_big.pattern_for_length(10)
    assert built == [10, 10]


def test_memory_is_linear_in_tokens_not_batch_times_longest():
    collate = SequenceGraphCollator("window", {"window": 4})
    batch = collate([(torch.zeros(3000, dtype=torch.long), 0)] + [(torch.zeros(5, dtype=torch.long), 0)] * 50)
    assert batch.edge_index.size(1) <= 9 * batch.x.numel()


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="unknown pattern"):
        SequenceGraphCollator("spiral")
    with pytest.raises(TypeError, match="tokens"):
        SequenceGraphCollator("window", {"window": 1})([(torch.zeros(3), 0)])
    with pytest.raises(ValueError, match="cache_bytes"):
        SequenceGraphCollator("window", {"window": 1}, cache_bytes=-1)
    with pytest.raises(TypeError, match="cache_bytes"):
        SequenceGraphCollator("window", {"window": 1}, cache_bytes=1.5)
    with pytest.raises(TypeError, match="tokens"):  # a list of floats is not cast to ids
        SequenceGraphCollator("window", {"window": 1})([([1.5, 2.0], 0)])
    for cls_token, error in ((1.5, TypeError), (-1, ValueError), ("a", TypeError)):
        with pytest.raises(error, match="cls_token"):
            SequenceGraphCollator("window", {"window": 1}, cls_token=cls_token)
    assert SequenceGraphCollator("window", {"window": 1})([([], 0), ([3, 4], 1)]).x.tolist() == [3, 4]
    with pytest.raises(ValueError, match="samples is empty"):
        SequenceGraphCollator("window", {"window": 1})([])
    for label in ("a", None, 1.5, True):
        with pytest.raises(TypeError, match="label must be an int class id"):
            SequenceGraphCollator("window", {"window": 1})([([1, 2], label)])
    labels = [np.int64(1), torch.tensor(0), 2]  # as labels come out of NumPy arrays and tensors
    assert SequenceGraphCollator("window", {"window": 1})([([1, 2], label) for label in labels]).y.tolist() == [1, 0, 2]


def test_packed_sequences_refuse_offsets_that_do_not_tile_the_tokens():
    tokens, labels = torch.arange(4, dtype=torch.uint8), torch.tensor([0, 1, 0])
    assert [len(t) for t, _ in PackedSequences(tokens, torch.tensor([0, 1, 3, 4]), labels)] == [1, 2, 1]
    for offsets in (torch.tensor([0, 3, 1, 4]), torch.tensor([1, 2, 3, 4])):  # falling; not from 0 (token 0 lost)
        with pytest.raises(ValueError, match="offsets must rise from 0 to T = 4"):
            PackedSequences(tokens, offsets, labels)
    with pytest.raises(TypeError, match="offsets must be a Tensor"):
        PackedSequences(tokens, [0, 1, 3, 4], labels)
    with pytest.raises(TypeError, match="labels must be an integer Tensor"):
        PackedSequences(tokens, torch.tensor([0, 1, 3, 4]), torch.tensor([1.7, 0.0, 1.0]))
    for token_offset, error in ((1.5, TypeError), ("a", TypeError), (-1, ValueError)):
        with pytest.raises(error, match="token_offset"):
            PackedSequences(tokens, torch.tensor([0, 1, 3, 4]), labels, token_offset=token_offset)


def test_plain_token_lists_collate_like_tensors():
    collate = SequenceGraphCollator("window", {"window": 2}, cls_token=1)
    from_lists = collate([([5, 6, 7, 8], 3), ([9, 4], 1)])
    from_tensors = collate([(torch.tensor([5, 6, 7, 8]), 3), (torch.tensor([9, 4]), 1)])
    for key in ("x", "pos", "batch", "edge_index", "y"):
        assert torch.equal(from_lists[key], from_tensors[key]), key


def test_a_seeded_random_pattern_differs_between_loader_workers_and_is_reproducible():
    samples = [(torch.arange(12), 0)] * 4

    def draws():
        torch.manual_seed(0)  # the DataLoader derives its workers' seeds from it
        collate = SequenceGraphCollator("random", {"num_random": 2}, generator=torch.Generator().manual_seed(3))
        return [batch.edge_index for batch in torch.utils.data.DataLoader(samples, batch_size=1, num_workers=2, collate_fn=collate)]

    first = draws()
    # Workers take batches in turn: copies of one generator would repeat each other's draws.
    assert not torch.equal(first[0], first[1])
    assert all(torch.equal(a, b) for a, b in zip(first, draws()))
