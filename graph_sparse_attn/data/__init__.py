"""Datasets and token-sequences-as-graphs (above `ops`/`patterns`, below `train`).

`listops` (LRA ListOps generator and evaluator), `imdb` (LRA Text, byte level), `lrgb`
(Peptides-func and its AP metric), `sampling` (`NeighborSampler`, neighbour-sampled mini-batches
of large graphs) and `sequence` (batches of disjoint chains with their pattern
built once, `SequenceGraphCollator`; packed token storage, `PackedSequences`).
"""
from .sampling import NeighborSampler
from .sequence import PackedSequences, SequenceGraphCollator

__all__ = ["NeighborSampler", "PackedSequences", "SequenceGraphCollator"]
