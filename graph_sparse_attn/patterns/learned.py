"""Export a learned (gated) pattern as a smaller fixed pattern."""
from __future__ import annotations

import math
import warnings
from typing import NamedTuple, Tuple, Union

import torch
from torch import Tensor

from ._utils import check_flag


class PruneInfo(NamedTuple):
    """What :func:`prune` kept and whom it left without edges.

    Attributes:
        mask: ``[E]`` bool, the kept edges: index per-edge tensors (``edge_attr``, the gates
            themselves) with it to go along with the pruned ``edge_index``.
        emptied_targets: ``[K]`` sorted ids of the targets that had edges before and have none
            after (they output zeros, exactly as a ``"log"``-gated model whose gates are all 0).
    """

    mask: Tensor
    emptied_targets: Tensor


def prune(
    edge_index: Tensor,
    gate: Tensor,
    threshold: float = 0.5,
    *,
    min_per_target: int = 0,
    return_info: bool = False,
) -> Union[Tensor, Tuple[Tensor, PruneInfo]]:
    """Keep the edges whose gate exceeds ``threshold`` (for any head, when gates are per head).

    In ``gate_mode="log"`` a gate of exactly 0 removes its edge and a gate of exactly 1 leaves its
    logit unchanged, so when every gate is 0 or 1 and all heads agree (``[E]`` or ``[E, 1]`` gates)
    the pruned pattern (without gates) gives the gated model's outputs for any ``threshold`` in
    ``[0, 1)``; per-head gates keep an edge any head keeps, so pass ``gate[info.mask]`` along; with other gate values, pass
    ``gate[info.mask]`` to the pruned model and it agrees for any ``threshold`` below the smallest
    non-zero gate.

    A target whose edges are all dropped outputs zeros. ``prune`` warns with their number (unless
    ``return_info`` is set, which returns them instead); ``min_per_target=k`` keeps each target's
    ``k`` strongest edges (by their largest gate over heads; ties to the earlier edge) whatever
    their gates, so no target that had edges is emptied when ``k >= 1``.

    Args:
        edge_index: ``[2, E]`` pattern the gates belong to.
        gate: ``[E]`` or ``[E, H]`` gate values (e.g. ``σ(P)`` or hard-concrete gates).
        threshold: edges with every gate ``<= threshold`` are dropped.
        min_per_target: keep at least this many edges of each target (all it has, if fewer).
        return_info: also return a :class:`PruneInfo` (the kept-edge mask and emptied targets).

    Returns:
        ``[2, E']`` the kept edges, in their original order (a sorted pattern stays sorted), and
        with ``return_info`` the pair ``(edge_index, PruneInfo)``.
    """
    if not isinstance(edge_index, Tensor) or edge_index.dim() != 2 or edge_index.size(0) != 2:
        raise ValueError(f"edge_index must be a tensor of shape [2, E], got {getattr(edge_index, 'shape', type(edge_index).__name__)}")
    if edge_index.is_floating_point() or edge_index.is_complex() or edge_index.dtype == torch.bool:
        raise TypeError(f"edge_index must have an integer dtype (int64), got {edge_index.dtype}")
    if edge_index.numel() and int(edge_index.min()) < 0:
        raise ValueError(f"edge_index must hold non-negative node indices, got {int(edge_index.min())}")
    if not isinstance(gate, Tensor) or not gate.is_floating_point():
        raise TypeError(f"gate must be a floating-point Tensor [E] or [E, H], got {getattr(gate, 'dtype', type(gate).__name__)}")
    if gate.dim() not in (1, 2) or gate.size(0) != edge_index.size(1) or (gate.dim() == 2 and gate.size(1) == 0):
        raise ValueError(f"gate must have shape [E] or [E, H] with E={edge_index.size(1)} and H >= 1, got {list(gate.shape)}")
    check_flag(return_info, "return_info")
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)):
        raise TypeError(f"threshold must be a number, got {threshold!r}")
    if math.isnan(threshold):
        raise ValueError("threshold must be a number, got nan")
    if bool(gate.detach().isnan().any()):
        raise ValueError("gate holds NaN values: a NaN gate can neither keep nor drop its edge")
    if isinstance(min_per_target, bool) or not isinstance(min_per_target, int) or min_per_target < 0:
        raise ValueError(f"min_per_target must be a non-negative int, got {min_per_target!r}")
    strength = gate.detach() if gate.dim() == 1 else gate.detach().amax(dim=1)
    keep = strength > threshold
    target = edge_index[1]
    if min_per_target > 0:
        keep |= _rank_in_target(target, strength) < min_per_target
    emptied = _emptied_targets(target, keep)
    if return_info:
        return edge_index[:, keep], PruneInfo(keep, emptied)
    if emptied.numel() > 0:
        warnings.warn(
            f"prune(threshold={threshold}) left {emptied.numel()} of {torch.unique(target).numel()} targets "
            "without edges; they output zeros (min_per_target=1 keeps each target's strongest edge, "
            "return_info=True lists them)",
            stacklevel=2,
        )
    return edge_index[:, keep]


def _rank_in_target(target: Tensor, strength: Tensor) -> Tensor:
    """``[E]`` rank of each edge among its target's edges, strongest first (0 = strongest)."""
    num_edges = target.numel()
    # Sort by strength (descending), then stably by target: edges grouped by target, strongest first.
    by_strength = torch.sort(strength, descending=True, stable=True).indices
    order = by_strength[torch.sort(target[by_strength], stable=True).indices]
    grouped = target[order]
    starts = torch.ones(num_edges, dtype=torch.bool, device=target.device)
    starts[1:] = grouped[1:] != grouped[:-1]
    position = torch.arange(num_edges, device=target.device)
    group_start = torch.cummax(torch.where(starts, position, torch.zeros_like(position)), dim=0).values
    rank = torch.empty_like(position)
    rank[order] = position - group_start
    return rank


def _emptied_targets(target: Tensor, keep: Tensor) -> Tensor:
    before = torch.unique(target)
    after = torch.unique(target[keep])
    return before[~torch.isin(before, after)]
