"""Datasets and token-sequences-as-graphs (above `ops`/`patterns`, below `train`).

`listops` (LRA ListOps generator and evaluator), `imdb` (LRA Text, byte level) and
`sequence.SequenceGraphCollator` (batches of disjoint chains with their pattern built once).
"""
from .sequence import SequenceGraphCollator

__all__ = ["SequenceGraphCollator"]
