"""Attention patterns as ``edge_index [2, E]`` (bottom layer: knows nothing of layers or training).

Row 0 is the source ``j`` (key/value), row 1 the target ``i`` (query). Fixed patterns come from
positions (`positional`) or graph structure (`structural`), compose with `combine`, and are
sorted by (target, source) without duplicates. Dynamic patterns are built per input
(`dynamic`: exact chunked kNN, LSH buckets); learned gates are exported with `prune`.
"""
from .combine import (
    causal,
    from_dense_mask,
    from_networkx,
    intersection,
    sort_and_dedup,
    to_dense_mask,
    to_networkx,
    union,
)
from .dynamic import knn, lsh_buckets, lsh_knn, recall_at_k
from .learned import PruneInfo, prune
from .positional import (
    bigbird,
    block_local,
    fixed,
    global_tokens,
    log_sparse,
    longformer,
    random,
    sliding_window,
    strided,
)
from .registry import POSITIONAL_PATTERNS, build_pattern, check_pattern, parse_pattern
from .structural import VirtualNodes, add_virtual_nodes, expander, graph_edges, k_hop

__all__ = [
    "sliding_window", "strided", "fixed", "log_sparse", "block_local", "global_tokens", "random", "longformer", "bigbird",
    "graph_edges", "k_hop", "expander", "add_virtual_nodes", "VirtualNodes",
    "union", "intersection", "causal", "sort_and_dedup", "to_dense_mask", "from_dense_mask", "to_networkx", "from_networkx",
    "knn", "lsh_knn", "lsh_buckets", "recall_at_k",
    "prune", "PruneInfo", "POSITIONAL_PATTERNS", "build_pattern", "check_pattern", "parse_pattern",
]
