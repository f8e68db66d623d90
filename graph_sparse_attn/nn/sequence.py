"""`SequenceTransformer`: token sequences as graphs of disjoint chains, classified by a sparse Transformer."""
from __future__ import annotations

import math
from typing import Optional, Union

import torch
from torch import Tensor, nn
from torch_geometric.nn import global_mean_pool

from ..ops import CSRPattern
from ..patterns import check_pattern
from ..patterns._utils import check_batch, check_flag, check_size
from ..transforms import positional_pattern
from .dropout import Dropout
from .gates import RelativePositionGate
from .layers import SparseTransformerLayer

DEFAULT_PATTERN = ("longformer", {"window": 64, "global_indices": [0]})
POSITIONS = ("learned", "sinusoidal")


def sequence_starts(batch: Tensor, num_graphs: Optional[int] = None) -> Tensor:
    """``[B]`` index of the first token of each sequence, for a sorted batch vector ``[T]``
    (with ``num_graphs`` given, without a host sync)."""
    if num_graphs is None:
        counts = torch.bincount(batch)
    else:
        counts = torch.zeros(num_graphs, dtype=torch.long, device=batch.device).index_add_(0, batch, torch.ones_like(batch, dtype=torch.long))
    return torch.cumsum(counts, 0) - counts


def positions_in_sequence(batch: Tensor, num_graphs: Optional[int] = None) -> Tensor:
    """``[T]`` position of each token within its sequence, for a sorted batch vector ``[T]``."""
    return torch.arange(batch.numel(), device=batch.device) - sequence_starts(batch, num_graphs)[batch]


class SinusoidalPositions(nn.Module):
    """Fixed sinusoidal position encodings (Vaswani et al. 2017): ``pos [T] → [T, dim]``, any length."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim

    def reset_parameters(self) -> None:
        """No parameters: the encoding is fixed."""

    def forward(self, pos: Tensor) -> Tensor:
        """``[T, dim]`` float32, whatever the model's dtype: frequencies and angles in bfloat16 would
        blur positions beyond a few hundred (the caller casts the sum)."""
        inv_freq = torch.exp(-math.log(10000.0) * torch.arange(0, self.dim, 2, device=pos.device, dtype=torch.float32) / self.dim)
        angles = pos.float().unsqueeze(-1) * inv_freq
        return torch.stack([angles.sin(), angles.cos()], dim=-1).flatten(-2)[..., : self.dim]


class SequenceTransformer(nn.Module):
    r"""Sequence classifier over a sparse attention pattern, batched without padding.

    A batch of ``B`` variable-length sequences is one graph of ``T`` tokens in disjoint chains
    (``batch [T]`` says which sequence each token belongs to), so no compute is spent on pad
    tokens. Tokens are embedded, position information added (positions restart at each
    sequence), then ``depth`` :class:`SparseTransformerLayer` blocks run over the pattern, and
    a head classifies the pooled sequence (the first token, e.g. ``[CLS]``, or the mean).

    Args:
        vocab_size: number of token ids.
        num_classes: output classes.
        dim: model width. depth: number of blocks. heads: attention heads.
        ffn_dim: feed-forward width (default ``4 * dim``).
        position: ``"learned"`` (absolute, up to ``max_length``) or ``"sinusoidal"``.
        max_length: longest sequence for learned positions.
        pooling: ``"cls"`` (first token of each sequence) or ``"mean"``.
        pattern: ``(name, params)`` of a positional pattern (`patterns.registry`) used when no
            ``edge_index`` is passed; default ``longformer`` (window ±64 + the first token
            global), since purely local patterns collapse on ListOps.
        gate: learn a relative-position gate per layer (a learnable pattern, ``gate_mode="log"``).
        knn: use dynamic kNN attention with this many keys per query instead of the pattern.
        pattern_seed: seed of the generator a random own pattern (``random``, ``bigbird``) is drawn
            from, sequence after sequence (``None``: the global RNG); equal to
            ``AddPositionalPattern(..., seed=pattern_seed)`` on the same sequences in the same order.
        dropout, attn_dropout: residual/FFN dropout and attention-weight dropout.
        backend: attention kernel, as in :func:`~graph_sparse_attn.sparse_attention` (``"auto"``).
        activation: of the feed-forward blocks, ``"gelu"`` or ``"relu"``.

    Shapes: ``forward(tokens [T], batch [T], edge_index [2, E] | CSRPattern = None, pos [T] = None, *,
    num_graphs: int = None) -> [B, num_classes]``. ``edge_index`` is the pattern the batch carries
    (a collator's ``edge_index``, or ``attn_index`` from
    :class:`~graph_sparse_attn.transforms.AddPositionalPattern`); without it the model builds
    its own. ``B`` is ``num_graphs``, else ``max(batch) + 1``: pass ``batch.num_graphs`` where the last
    sequences of a batch may be empty (no CLS token), or their rows are missing. With a ``CSRPattern`` and ``num_graphs`` given, its only host sync checks the token ids
    and positions (one, skipped under ``torch.compile``); ``knn`` models take no ``edge_index``.
    """

    def __init__(
        self,
        vocab_size: int,
        num_classes: int,
        *,
        dim: int = 128,
        depth: int = 4,
        heads: int = 4,
        ffn_dim: Optional[int] = None,
        position: str = "learned",
        max_length: int = 4096,
        pooling: str = "cls",
        pattern: Optional[tuple] = None,
        gate: bool = False,
        knn: Optional[int] = None,
        pattern_seed: Optional[int] = None,
        dropout: float = 0.1,
        attn_dropout: float = 0.0,
        backend: str = "auto",
        activation: str = "gelu",
    ) -> None:
        super().__init__()
        if position not in POSITIONS:
            raise ValueError(f"position must be one of {POSITIONS}, got {position!r}")
        if pooling not in ("cls", "mean"):
            raise ValueError(f"pooling must be 'cls' or 'mean', got {pooling!r}")
        sizes = {"vocab_size": vocab_size, "num_classes": num_classes, "dim": dim, "depth": depth, "heads": heads, "max_length": max_length}
        for name, size in sizes.items():
            if isinstance(size, bool) or not isinstance(size, int) or size <= 0:
                raise ValueError(f"{name} must be a positive int, got {size!r}")
        self.vocab_size, self.num_classes, self.dim, self.depth, self.heads = vocab_size, num_classes, dim, depth, heads
        check_flag(gate, "gate")
        if knn is not None:
            check_size(knn, "knn", minimum=1)
        if knn is not None and (pattern is not None or gate):
            raise ValueError("knn attention builds its pattern from the queries each step: pattern and gate do not apply with it")
        if pattern is not None and not (isinstance(pattern, (tuple, list)) and len(pattern) == 2 and isinstance(pattern[1], dict)):
            raise TypeError(f"pattern must be (name, params), e.g. ('window', {{'window': 64}}), got {pattern!r}")
        self.position, self.pooling, self.max_length = position, pooling, max_length
        self.pattern_name, self.pattern_params = pattern or DEFAULT_PATTERN
        check_pattern(self.pattern_name, self.pattern_params)
        self.knn = knn
        self.generator = None if pattern_seed is None else torch.Generator().manual_seed(pattern_seed)

        self.embed = nn.Embedding(vocab_size, dim)
        self.pos_embed = nn.Embedding(max_length, dim) if position == "learned" else SinusoidalPositions(dim)
        self.dropout = Dropout(dropout)
        gate_mode = "log" if gate else "scale"
        self.layers = nn.ModuleList(
            SparseTransformerLayer(dim, heads, ffn_dim=ffn_dim, dropout=dropout, attn_dropout=attn_dropout, gate_mode=gate_mode, knn=knn,
                                   backend=backend, activation=activation)
            for _ in range(depth)
        )
        self.gates = nn.ModuleList(RelativePositionGate(heads) for _ in range(depth)) if gate else None
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # Learned tables both start at std 0.02 (GPT-2). Fixed sinusoids have RMS 1/√2, so tokens
        # start at std 1 beside them, as in LRA's Transformer; at 0.02 the positions drowned them
        # out (LRA Text stayed at chance for an epoch).
        learned = isinstance(self.pos_embed, nn.Embedding)
        nn.init.normal_(self.embed.weight, std=0.02 if learned else 1.0)
        if learned:
            nn.init.normal_(self.pos_embed.weight, std=0.02)
        for module in [*self.layers, *(self.gates or []), self.norm, self.head]:
            module.reset_parameters()

    def pattern(self, batch: Tensor, num_graphs: Optional[int] = None) -> Tensor:
        """The model's own pattern for the sequences of ``batch [T]``, used when ``forward`` is
        given none (:func:`~graph_sparse_attn.transforms.positional_pattern`, as
        :class:`~graph_sparse_attn.transforms.AddPositionalPattern` builds it per sequence).
        Training draws a random pattern from the ``pattern_seed`` generator (or the global RNG);
        evaluation draws each sequence's from a generator seeded 0, so predictions are repeatable,
        do not depend on the batch, and leave the training draws untouched."""
        draws = {"generator": self.generator} if self.training else {"seed_per_graph": 0}
        return positional_pattern(self.pattern_name, batch.numel(), batch=batch, num_graphs=num_graphs,
                                  **draws, **self.pattern_params)

    def forward(self, tokens: Tensor, batch: Tensor, edge_index: Union[Tensor, CSRPattern, None] = None,
                pos: Optional[Tensor] = None, *, num_graphs: Optional[int] = None) -> Tensor:
        if tokens.dim() != 1 or tokens.dtype != torch.long:
            raise TypeError(f"tokens must be a LongTensor [T], got {tokens.dtype} {list(tokens.shape)}")
        if not isinstance(batch, Tensor) or batch.shape != tokens.shape or batch.is_floating_point():
            raise ValueError(f"batch must be a LongTensor of shape [T]={list(tokens.shape)}, got {batch!r:.80}")
        if pos is not None and (pos.shape != tokens.shape or pos.is_floating_point()):
            raise ValueError(f"pos must be a LongTensor of shape [T]={list(tokens.shape)}, got {pos.dtype} {list(pos.shape)}")
        if self.knn is not None and edge_index is not None:
            raise ValueError("edge_index does not apply to a knn model: it builds its pattern from the queries each step")
        if not torch.compiler.is_compiling():
            batch = check_batch(batch, tokens.numel(), num_graphs=num_graphs)
        if num_graphs is None:
            num_graphs = int(batch[-1]) + 1 if batch.numel() else 0
        pos = positions_in_sequence(batch, num_graphs) if pos is None else pos
        if not torch.compiler.is_compiling():
            self._check_values(tokens, pos, batch, num_graphs)
        if edge_index is None and self.knn is None:
            edge_index = self.pattern(batch, num_graphs)

        pattern = None
        if edge_index is not None:
            # Sorted once here and handed to every layer in sorted order; the gates are computed
            # on the sorted edges, so no per-edge tensor is ever permuted.
            pattern = edge_index if isinstance(edge_index, CSRPattern) else CSRPattern.from_edge_index(edge_index, tokens.numel())
            if pattern.num_src != tokens.numel() or pattern.num_dst != tokens.numel():
                raise ValueError(f"edge_index must span the T={tokens.numel()} tokens, got {pattern.num_src}x{pattern.num_dst}")
            pattern = pattern.sorted()
        sorted_edges = None if self.gates is None or pattern is None else torch.stack([pattern.col, pattern.row]).long()
        embedded = self.embed(tokens)
        x = self.dropout(embedded + self.pos_embed(pos).to(embedded.dtype))
        for i, layer in enumerate(self.layers):
            gate = self.gates[i](sorted_edges, pos) if self.gates is not None else None
            x = layer(x, pattern, batch, edge_gate=gate)
        x = self.norm(x)
        if self.pooling == "cls":
            pooled = x[sequence_starts(batch, num_graphs)]  # first token of each sequence
        else:
            pooled = global_mean_pool(x, batch, num_graphs)
        return self.head(pooled)

    def _check_values(self, tokens: Tensor, pos: Tensor, batch: Tensor, num_graphs: int) -> None:
        """Token ids in ``[0, vocab_size)``, positions in ``[0, max_length)`` (learned) or
        non-negative (sinusoidal), and with ``"cls"`` pooling no empty sequence: one host sync, as
        embedding lookups would fail obscurely and an empty sequence would pool its neighbour's token."""
        if not tokens.numel():
            return
        shortest = torch.bincount(batch, minlength=num_graphs).min() if self.pooling == "cls" and num_graphs else tokens.new_ones(())
        low, high, first, last, shortest = torch.stack([tokens.min(), tokens.max(), pos.min(), pos.max(), shortest]).tolist()
        if shortest == 0:
            raise ValueError(f"every sequence of batch needs a token to pool with pooling='cls' (num_graphs={num_graphs})")
        if low < 0 or high >= self.vocab_size:
            raise ValueError(f"tokens must lie in [0, vocab_size={self.vocab_size}), got values in [{low}, {high}]")
        if first < 0:
            raise ValueError(f"pos must be non-negative, got {first}")
        if self.position == "learned" and last >= self.max_length:
            raise ValueError(f"a sequence is longer than max_length={self.max_length} (learned positions)")

    def gate_penalty(self, edge_index: Union[Tensor, CSRPattern], pos: Tensor) -> Tensor:
        """Sum of the layers' gate sparsity penalties over the pattern ``forward`` was given (zero without gates)."""
        if self.gates is None:
            return torch.zeros(())
        if isinstance(edge_index, CSRPattern):
            edge_index = edge_index.edge_index
        return sum(g.penalty(edge_index, pos) for g in self.gates)

    def extra_repr(self) -> str:
        pattern = f"knn={self.knn}" if self.knn else f"pattern={self.pattern_name}{self.pattern_params}"
        return f"vocab_size={self.vocab_size}, num_classes={self.num_classes}, dim={self.dim}, depth={self.depth}, heads={self.heads}, {pattern}, position={self.position!r}, pooling={self.pooling!r}"
