"""Attention kernels (bottom layer: knows nothing of layers or training).

`sparse_attention` (`attention`) runs multi-head attention over the edges of an ``edge_index``
pattern; `CSRPattern` (`pattern`) holds a pattern sorted once for reuse across layers, and
`adjacency` turns PyG's adjacency types into the edges attention takes. Kernel backends of one
semantics (``*_kernel``) sit behind `dispatch` (names and the ``"auto"`` rule): ``gather``, one
pass under autograd for small patterns, ``band``, dense masked attention over query blocks for
windows, and the fused ``csr``, ``compiled`` and ``triton``,
whose autograd `fused` registers as `torch.library` custom ops; ``reference`` is the
gather/scatter oracle. `edge_features` lets edge features enter attention.
"""
from .attention import sparse_attention
from .pattern import CSRPattern

__all__ = ["sparse_attention", "CSRPattern"]
