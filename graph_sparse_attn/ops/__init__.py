"""Attention kernels (bottom layer: knows nothing of layers or training).

`sparse_attention` runs multi-head attention over the edges of an ``edge_index`` pattern with
two backends of one semantics: ``csr`` (memory-lean, hand-written backward) and ``reference``
(gather/scatter oracle). `CSRPattern` holds a pattern sorted once for reuse across layers.
"""
from .attention import sparse_attention
from .pattern import CSRPattern

__all__ = ["sparse_attention", "CSRPattern"]
