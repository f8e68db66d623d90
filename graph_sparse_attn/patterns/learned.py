"""Export a learned (gated) pattern as a smaller fixed pattern."""
from __future__ import annotations

from torch import Tensor


def prune(edge_index: Tensor, gate: Tensor, threshold: float = 0.5) -> Tensor:
    """Keep the edges whose gate exceeds ``threshold`` (for any head, when gates are per head).

    Args:
        edge_index: ``[2, E]`` pattern the gates belong to.
        gate: ``[E]`` or ``[E, H]`` gate values (e.g. ``σ(P)`` from a gate module).
        threshold: edges with every gate ``<= threshold`` are dropped.

    Returns:
        ``[2, E']`` the kept edges, in their original order (a sorted pattern stays sorted).
    """
    if edge_index.dim() != 2 or edge_index.size(0) != 2:
        raise ValueError(f"edge_index must have shape [2, E], got {list(edge_index.shape)}")
    if gate.dim() not in (1, 2) or gate.size(0) != edge_index.size(1):
        raise ValueError(f"gate must have shape [E] or [E, H] with E={edge_index.size(1)}, got {list(gate.shape)}")
    keep = gate.detach() > threshold
    if keep.dim() == 2:
        keep = keep.any(dim=1)
    return edge_index[:, keep]
