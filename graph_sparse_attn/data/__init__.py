"""Datasets and token-sequences-as-graphs (above `ops`/`patterns`, below `train`).

`listops` (LRA ListOps generator and evaluator), `imdb` (LRA Text, byte level), `lrgb`
(Peptides-func and its AP metric) and `sequence` (batches of disjoint chains with their pattern
built once, `SequenceGraphCollator`; packed token storage, `PackedSequences`).
"""
from .sequence import PackedSequences, SequenceGraphCollator

__all__ = ["PackedSequences", "SequenceGraphCollator"]
