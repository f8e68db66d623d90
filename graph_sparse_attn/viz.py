"""Pictures of attention patterns (mask images, weighted graph drawings) and training curves (matplotlib, PNG)."""
from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence

import matplotlib

matplotlib.use("Agg")  # files, not windows: works on headless machines
import matplotlib.pyplot as plt  # noqa: E402
import networkx as nx  # noqa: E402
import torch  # noqa: E402
from torch import Tensor  # noqa: E402

from .io import PathLike, atomic_write  # noqa: E402
from .ops.pattern import check_edge_index  # noqa: E402

__all__ = ["mask_image", "plot_mask", "compare_patterns", "draw_graph", "plot_curves"]


def mask_image(edge_index: Tensor, num_nodes: int, resolution: int = 512) -> Tensor:
    """Density image ``[R, R]`` of a pattern: the fraction of (target, source) cells that are edges.

    Below ``resolution`` nodes each pixel is one (i, j) pair; above, pixels pool square blocks
    of ``ceil(N / resolution)`` nodes a side, so a million-node pattern still renders, and
    ``R = ceil(N / block) <= resolution`` pixels span exactly the ``N`` nodes.
    """
    if num_nodes <= 0:
        raise ValueError(f"num_nodes must be positive, got {num_nodes}")
    if resolution < 1:
        raise ValueError(f"resolution must be >= 1, got {resolution}")
    # An index outside [0, num_nodes) would land in a neighbouring row's cell.
    src, dst = check_edge_index(edge_index, num_nodes, num_nodes).cpu()
    block = -(-num_nodes // min(num_nodes, resolution))
    size = -(-num_nodes // block)  # every pixel row holds nodes: the image spans [0, N) and no more
    cells = torch.zeros(size * size, dtype=torch.float64)
    cells.index_add_(0, (dst // block) * size + src // block, torch.ones(src.numel(), dtype=torch.float64))
    return (cells / block**2).clamp_max(1.0).view(size, size)


def plot_mask(
    edge_index: Tensor,
    num_nodes: int,
    path: Optional[PathLike] = None,
    *,
    title: Optional[str] = None,
    ax: Optional[plt.Axes] = None,
    resolution: int = 512,
) -> plt.Figure:
    """Show a pattern as its attention mask (rows: targets ``i``, columns: sources ``j``).

    Saves a PNG to ``path`` when given and returns the figure.
    """
    fig, ax = (ax.figure, ax) if ax is not None else plt.subplots(figsize=(4.5, 4.5))
    image = mask_image(edge_index, num_nodes, resolution)
    extent = (0, num_nodes, num_nodes, 0)
    ax.imshow(image.numpy(), cmap="Greys", vmin=0, vmax=1, interpolation="nearest", extent=extent)
    ax.set(xlabel="source j (key)", ylabel="target i (query)")
    ax.set_title(title or f"{edge_index.size(1):,} edges, {num_nodes:,} nodes", fontsize=9)
    if path is not None:
        fig.savefig(path, dpi=120, bbox_inches="tight")
    return fig


def compare_patterns(patterns: Mapping[str, Tensor], num_nodes: int, path: Optional[PathLike] = None, *, columns: int = 4) -> plt.Figure:
    """Side-by-side mask images of named patterns on the same nodes; saves a PNG to ``path``."""
    if not patterns:
        raise ValueError("patterns must name at least one edge_index")
    rows = -(-len(patterns) // columns)
    cols = min(columns, len(patterns))
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 3.6 * rows), squeeze=False)
    for ax, (name, edge_index) in zip(axes.flat, patterns.items()):
        plot_mask(edge_index, num_nodes, ax=ax, title=f"{name} ({edge_index.size(1):,} edges)")
    for ax in list(axes.flat)[len(patterns):]:
        ax.axis("off")
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=120, bbox_inches="tight")
    return fig


def draw_graph(
    edge_index: Tensor,
    num_nodes: Optional[int] = None,
    path: Optional[PathLike] = None,
    *,
    weights: Optional[Tensor] = None,
    ax: Optional[plt.Axes] = None,
    seed: int = 0,
    max_width: float = 4.0,
) -> plt.Figure:
    """Draw a small pattern as a directed graph, edge width ∝ ``weights`` (attention or gate).

    Args:
        edge_index: ``[2, E]`` edges ``j → i``.
        num_nodes: node count (default ``max index + 1``).
        path: save a PNG here.
        weights: ``[E]`` or ``[E, H]`` (averaged over heads), e.g. ``alpha`` or a gate.
        seed: seed of the spring layout, for reproducible pictures.
        max_width: line width of the largest weight.
    """
    if num_nodes is None:
        num_nodes = int(edge_index.max()) + 1 if edge_index.numel() else 0
    edge_index = check_edge_index(edge_index, num_nodes, num_nodes)
    if weights is not None:
        weights = weights.detach().float().cpu()
        weights = weights.mean(-1) if weights.dim() == 2 else weights
        if weights.shape != (edge_index.size(1),):
            raise ValueError(f"weights must have shape [E] or [E, H] with E={edge_index.size(1)}, got {list(weights.shape)}")
    graph = nx.DiGraph()
    graph.add_nodes_from(range(num_nodes))
    src, dst = edge_index.cpu().tolist()
    graph.add_edges_from((j, i) for j, i in zip(src, dst) if i != j)
    widths = [1.0] * graph.number_of_edges()
    if weights is not None:
        scale = max_width / max(float(weights.max()), 1e-12)
        lookup = {(j, i): float(w) * scale for j, i, w in zip(src, dst, weights.tolist())}
        widths = [lookup[e] for e in graph.edges()]
    fig, ax = (ax.figure, ax) if ax is not None else plt.subplots(figsize=(6, 6))
    layout = nx.spring_layout(graph, seed=seed)
    nx.draw_networkx(graph, layout, ax=ax, width=widths, node_size=220, font_size=7, arrowsize=8, node_color="#9ecae1")
    ax.axis("off")
    if path is not None:
        fig.savefig(path, dpi=120, bbox_inches="tight")
    return fig


def plot_curves(history: Sequence[Mapping[str, Any]], metric: str, path: PathLike) -> None:
    """Training loss and validation metric per epoch (test where validation improved), saved as a PNG.

    ``history``: one record per epoch with ``epoch``, ``train_loss``, ``val_<metric>`` and
    ``test_<metric>`` (None where the test split was not scored), as in ``metrics.jsonl``.
    """
    epochs = [r["epoch"] for r in history]
    fig, (ax_loss, ax_metric) = plt.subplots(1, 2, figsize=(10, 3.6))
    try:
        ax_loss.plot(epochs, [r["train_loss"] for r in history], "o-")
        ax_loss.set(xlabel="epoch", ylabel="training loss")
        for split, style in (("val", "o-"), ("test", "s")):
            scored = [r for r in history if r[f"{split}_{metric}"] is not None]
            ax_metric.plot([r["epoch"] for r in scored], [r[f"{split}_{metric}"] for r in scored], style, label=split)
        ax_metric.set(xlabel="epoch", ylabel=metric)
        ax_metric.legend()
        for ax in (ax_loss, ax_metric):
            ax.grid(alpha=0.3)
        fig.tight_layout()
        # Rewritten every epoch of a run: atomically, as the run's other files.
        atomic_write(path, lambda handle: fig.savefig(handle, format="png", dpi=110))
    finally:
        plt.close(fig)
