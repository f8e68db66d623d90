"""Layers and models built on the attention kernels (`ops`) and patterns (`patterns`).

`SparseAttnConv` (drop-in `TransformerConv`), learnable gates (`gates`), Transformer blocks
(`SparseTransformerLayer`, `KNNAttention`) and models (`SequenceTransformer`, `GraphTransformer`).
"""
from .conv import SparseAttnConv
from .dropout import Dropout, dropout
from .gates import EdgeGate, MLPGate, RelativePositionGate, hard_concrete, l0_penalty, l1_penalty
from .graph import GraphTransformer
from .layers import FeedForward, KNNAttention, SparseMultiheadAttention, SparseTransformerLayer
from .sequence import SequenceTransformer, SinusoidalPositions

__all__ = [
    "SparseAttnConv",
    "Dropout",
    "dropout",
    "EdgeGate",
    "MLPGate",
    "RelativePositionGate",
    "hard_concrete",
    "l0_penalty",
    "l1_penalty",
    "GraphTransformer",
    "FeedForward",
    "KNNAttention",
    "SparseMultiheadAttention",
    "SparseTransformerLayer",
    "SequenceTransformer",
    "SinusoidalPositions",
]
