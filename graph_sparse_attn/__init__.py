"""graph_sparse_attn: exact, memory-lean sparse attention over ``edge_index`` patterns.

Layers: ``ops`` and ``patterns`` at the bottom, ``nn`` and ``data`` above them, ``train`` on top.
"""
from .nn import SparseAttnConv
from .ops import CSRPattern, sparse_attention

__version__ = "0.1.0"

__all__ = ["CSRPattern", "SparseAttnConv", "sparse_attention"]
