"""graph_sparse_attn: exact, memory-lean sparse attention over ``edge_index`` patterns.

Layers: ``ops`` and ``patterns`` at the bottom, ``transforms`` (pattern recipes per graph or
sequence) above them, ``nn`` and ``data`` above that, ``train`` on top; ``io`` and ``viz`` are
leaves any layer may use (checked by ``tests/test_layering.py``).
"""
from . import data, nn, ops, patterns, transforms
from .data import NeighborSampler, SequenceGraphCollator
from .nn import (
    EdgeGate,
    GraphTransformer,
    KNNAttention,
    MLPGate,
    RelativePositionGate,
    SequenceTransformer,
    SparseAttnConv,
    SparseMultiheadAttention,
    SparseTransformerLayer,
)
from .ops import CSRPattern, sparse_attention

__version__ = "0.1.0"

__all__ = [
    "data", "nn", "ops", "patterns", "transforms",
    "CSRPattern", "sparse_attention",
    "SparseAttnConv", "SparseMultiheadAttention", "SparseTransformerLayer", "KNNAttention",
    "SequenceTransformer", "GraphTransformer", "EdgeGate", "RelativePositionGate", "MLPGate",
    "NeighborSampler", "SequenceGraphCollator",
]
