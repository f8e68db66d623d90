r"""Learnable attention patterns: modules that produce edge gates :math:`\sigma(P) \in [0, 1]`.

A gate re-weights each edge of a fixed pattern inside `sparse_attention` (``edge_gate=``):
``gate_mode="scale"`` gives :math:`\mathrm{softmax}(QK^\top \odot \sigma(P) / \sqrt{d})` and
``gate_mode="log"`` multiplies each edge's unnormalised weight by :math:`\sigma(P)`, so a gate
near 0 removes the edge. Train with a sparsity penalty (:func:`l1_penalty`, or hard-concrete
gates with :func:`l0_penalty`), then export the learned pattern with
:func:`graph_sparse_attn.patterns.prune` and run inference on the smaller ``edge_index``.

Every gate module returns logits :math:`P` from ``logits(...)`` and gates from ``forward(...)``:
deterministic :math:`\sigma(P)`, or hard-concrete samples in training when ``hard_concrete=True``.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor, nn

from ..ops.checks import check_on_device
from ..patterns._utils import check_flag, check_size

# Hard-concrete stretch interval and temperature (Louizos et al. 2018).
_GAMMA, _ZETA, _BETA = -0.1, 1.1, 2.0 / 3.0


def hard_concrete(logits: Tensor, training: bool) -> Tensor:
    r"""Hard-concrete gates in ``[0, 1]`` (exact zeros and ones have non-zero probability).

    In training, :math:`s = \sigma((\log u - \log(1-u) + P)/\beta)` with :math:`u \sim U(0,1)`;
    in evaluation, the deterministic :math:`s = \sigma(P)`. Then :math:`s` is stretched to
    :math:`(\gamma, \zeta) = (-0.1, 1.1)` and clamped to ``[0, 1]``.
    """
    if training:
        u = torch.rand_like(logits).clamp(1e-6, 1 - 1e-6)
        s = torch.sigmoid((torch.log(u) - torch.log1p(-u) + logits) / _BETA)
    else:
        s = torch.sigmoid(logits)
    return (s * (_ZETA - _GAMMA) + _GAMMA).clamp(0.0, 1.0)


def l0_penalty(logits: Tensor) -> Tensor:
    r"""Expected number of non-zero hard-concrete gates, averaged: :math:`\mathrm{mean}\,\sigma(P - \beta\log(-\gamma/\zeta))`."""
    if logits.numel() == 0:  # no gates: nothing to penalise (a mean would be NaN)
        return logits.new_zeros(())
    return torch.sigmoid(logits - _BETA * math.log(-_GAMMA / _ZETA)).mean()


def l1_penalty(gate: Tensor) -> Tensor:
    """Mean absolute gate value, the L1 sparsity penalty on gates in ``[0, 1]``."""
    return gate.abs().mean() if gate.numel() else gate.new_zeros(())


class _Gate(nn.Module):
    def __init__(self, hard_concrete: bool, init: float) -> None:
        super().__init__()
        if isinstance(init, bool) or not isinstance(init, (int, float)):
            raise TypeError(f"init must be a float in (0, 1), got {type(init).__name__}")
        if not 0.0 < init < 1.0:  # NaN fails this too
            raise ValueError(f"init must be in (0, 1), got {init}")
        self.hard_concrete, self.init = check_flag(hard_concrete, "hard_concrete"), init

    @property
    def init_logit(self) -> float:
        """The logit whose evaluation gate is ``init``: :math:`\\log(p / (1 - p))` with :math:`p = \\text{init}`,
        or for hard-concrete gates :math:`p = (\\text{init} - \\gamma) / (\\zeta - \\gamma)`, undoing the stretch."""
        p = (self.init - _GAMMA) / (_ZETA - _GAMMA) if self.hard_concrete else self.init
        return math.log(p / (1 - p))

    def _gate(self, logits: Tensor) -> Tensor:
        return hard_concrete(logits, self.training) if self.hard_concrete else torch.sigmoid(logits)

    def penalty(self, *args, **kwargs) -> Tensor:
        """Sparsity penalty of the current gates: L0 for hard-concrete gates, else L1."""
        return self._penalty_of(self.logits(*args, **kwargs))

    def _penalty_of(self, logits: Tensor) -> Tensor:
        return l0_penalty(logits) if self.hard_concrete else l1_penalty(torch.sigmoid(logits))


class EdgeGate(_Gate):
    r"""One learnable gate per edge (and head) of a fixed graph: :math:`g_e = \sigma(P_e)`.

    Args:
        num_edges: number of edges ``E`` of the pattern it gates.
        heads: gates per edge (``1`` shares one gate across heads).
        init: initial gate value in ``(0, 1)``.
        hard_concrete: sample hard-concrete gates in training (L0 sparsity).

    Shapes: ``forward() -> [E, heads]``.
    """

    def __init__(self, num_edges: int, heads: int = 1, *, init: float = 0.9, hard_concrete: bool = False) -> None:
        super().__init__(hard_concrete, init)
        self.num_edges, self.heads = check_size(num_edges, "num_edges"), check_size(heads, "heads", minimum=1)
        self.weight = nn.Parameter(torch.empty(num_edges, heads))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.constant_(self.weight, self.init_logit)

    def logits(self) -> Tensor:
        return self.weight

    def forward(self) -> Tensor:
        return self._gate(self.weight)

    def extra_repr(self) -> str:
        return f"num_edges={self.num_edges}, heads={self.heads}, hard_concrete={self.hard_concrete}"


def relative_position_bucket(offset: Tensor, num_buckets: int, max_distance: int) -> Tensor:
    """Bucket signed offsets ``i − j``: exact for small ``|offset|``, log-spaced up to ``max_distance``.

    Half of the buckets serve each sign; within a sign, the first half of them hold the exact
    distances ``0 .. n−1`` and the rest cover ``n .. max_distance`` logarithmically, so any
    length maps into ``num_buckets`` (T5-style). Returns ``[E]`` in ``[0, num_buckets)``.
    """
    per_sign = num_buckets // 2
    exact = per_sign // 2
    distance = offset.abs()
    log_bucket = exact + (
        torch.log(distance.clamp_min(1).float() / exact) / math.log(max_distance / exact) * (per_sign - exact)
    ).long()
    bucket = torch.where(distance < exact, distance, log_bucket.clamp_max(per_sign - 1))
    return bucket + per_sign * (offset < 0).long()


class RelativePositionGate(_Gate):
    r"""Per-head gates on relative positions: :math:`g_{ij,h} = \sigma(P_{h,\,b(i-j)})`.

    :math:`b` buckets the signed offset (:func:`relative_position_bucket`), so the gate
    generalises to any sequence length. ``positions`` are the nodes' positions within their
    sequences (default: ``arange(N)``).

    Args:
        heads: number of attention heads ``H``.
        num_buckets: buckets over both signs (even, ≥ 4).
        max_distance: offsets at or beyond this share the last bucket of their sign.
        init: initial gate value in ``(0, 1)``.
        hard_concrete: sample hard-concrete gates in training (L0 sparsity).

    Shapes: ``forward(edge_index [2, E], positions [N] = None) -> [E, H]``.
    """

    def __init__(
        self, heads: int = 1, *, num_buckets: int = 64, max_distance: int = 1024, init: float = 0.9, hard_concrete: bool = False
    ) -> None:
        super().__init__(hard_concrete, init)
        heads = check_size(heads, "heads", minimum=1)
        num_buckets, max_distance = check_size(num_buckets, "num_buckets"), check_size(max_distance, "max_distance")
        if num_buckets < 4 or num_buckets % 2:
            raise ValueError(f"num_buckets must be an even number >= 4, got {num_buckets}")
        if max_distance <= num_buckets // 4:
            raise ValueError(f"max_distance must exceed num_buckets // 4 = {num_buckets // 4}, got {max_distance}")
        self.heads, self.num_buckets, self.max_distance = heads, num_buckets, max_distance
        self.weight = nn.Parameter(torch.empty(num_buckets, heads))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.constant_(self.weight, self.init_logit)

    def bucket(self, edge_index: Tensor, positions: Optional[Tensor] = None) -> Tensor:
        """``[E]`` bucket of each edge's offset ``pos[i] − pos[j]``."""
        if not isinstance(edge_index, Tensor) or edge_index.is_floating_point() or edge_index.dtype == torch.bool \
                or edge_index.dim() != 2 or edge_index.size(0) != 2:
            raise ValueError(f"edge_index must be an integer tensor [2, E], got {edge_index!r:.60}")
        if positions is not None:
            if not isinstance(positions, Tensor) or positions.is_floating_point() or positions.dtype == torch.bool or positions.dim() != 1:
                raise ValueError(f"positions must be an integer tensor [N], got {positions!r:.60}")
            check_on_device(((edge_index >= 0) & (edge_index < positions.numel())).all(),
                            f"edge_index must index positions: nodes in [0, {positions.numel()})")
        src, dst = edge_index
        offset = dst - src if positions is None else positions[dst] - positions[src]
        return relative_position_bucket(offset, self.num_buckets, self.max_distance)

    def logits(self, edge_index: Tensor, positions: Optional[Tensor] = None) -> Tensor:
        return self.weight[self.bucket(edge_index, positions)]

    def forward(self, edge_index: Tensor, positions: Optional[Tensor] = None) -> Tensor:
        return self._gate(self.logits(edge_index, positions))

    def penalty(self, edge_index: Optional[Tensor] = None, positions: Optional[Tensor] = None) -> Tensor:
        """Sparsity penalty over the edges of ``edge_index``, or over all buckets when omitted."""
        return self._penalty_of(self.weight if edge_index is None else self.logits(edge_index, positions))

    def extra_repr(self) -> str:
        return f"heads={self.heads}, num_buckets={self.num_buckets}, max_distance={self.max_distance}, hard_concrete={self.hard_concrete}"


class MLPGate(_Gate):
    r"""Gates computed from edge features: :math:`g_{ij} = \sigma(\mathrm{MLP}(\mathbf{e}_{ij}))`.

    Args:
        edge_dim: edge feature size ``F``.
        heads: gates per edge.
        hidden_channels: width of the hidden layer.
        init: initial gate value in ``(0, 1)`` (through the output bias).
        hard_concrete: sample hard-concrete gates in training (L0 sparsity).

    Shapes: ``forward(edge_attr [E, F]) -> [E, heads]``.
    """

    def __init__(self, edge_dim: int, heads: int = 1, *, hidden_channels: int = 32, init: float = 0.9, hard_concrete: bool = False) -> None:
        super().__init__(hard_concrete, init)
        self.edge_dim, self.heads = check_size(edge_dim, "edge_dim", minimum=1), check_size(heads, "heads", minimum=1)
        hidden_channels = check_size(hidden_channels, "hidden_channels", minimum=1)
        self.mlp = nn.Sequential(nn.Linear(edge_dim, hidden_channels), nn.GELU(), nn.Linear(hidden_channels, heads))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for layer in (self.mlp[0], self.mlp[2]):
            layer.reset_parameters()
        nn.init.constant_(self.mlp[2].bias, self.init_logit)

    def logits(self, edge_attr: Tensor) -> Tensor:
        if not isinstance(edge_attr, Tensor) or not edge_attr.is_floating_point():
            raise TypeError(f"edge_attr must be a floating-point tensor [E, {self.edge_dim}], got {getattr(edge_attr, 'dtype', type(edge_attr).__name__)}")
        if edge_attr.dim() != 2 or edge_attr.size(1) != self.edge_dim:
            raise ValueError(f"edge_attr must have shape [E, {self.edge_dim}], got {list(edge_attr.shape)}")
        return self.mlp(edge_attr)

    def forward(self, edge_attr: Tensor) -> Tensor:
        return self._gate(self.logits(edge_attr))
