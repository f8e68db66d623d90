"""Shared helpers of the pattern builders: argument checks, batch segments and run-length edge assembly."""
from __future__ import annotations

import operator
from typing import NamedTuple, Optional, Union

import torch
from torch import Tensor

Device = Union[torch.device, str, None]


def check_size(value: int, name: str, *, minimum: int = 0) -> int:
    """Return ``value`` as a Python int, raising unless it is an integer ``>= minimum``."""
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an int, got bool")
    try:
        value = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an int, got {type(value).__name__}") from None
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    if value >= 2**63:  # beyond int64, where every index tensor lives
        raise ValueError(f"{name} must be < 2**63, got {value}")
    return value


def check_flag(value: bool, name: str) -> bool:
    """Return ``value``, raising unless it is a bool (a string such as ``"false"`` is truthy)."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__}")
    return value


def resolve_device(tensor: Optional[Tensor], device: Device, tensor_name: str = "batch") -> torch.device:
    """The device of ``tensor`` when given (``device`` must then agree), else ``device`` (default CPU)."""
    if tensor is None:
        return torch.device("cpu") if device is None else torch.device(device)
    if not isinstance(tensor, Tensor):
        raise TypeError(f"{tensor_name} must be a Tensor, got {type(tensor).__name__}")
    if device is not None and torch.device(device) != tensor.device:
        raise ValueError(f"device={device} disagrees with {tensor_name} on {tensor.device}")
    return tensor.device


def check_generator(generator: Optional[torch.Generator]) -> None:
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")


def worker_seed() -> Optional[int]:
    """The seed of the DataLoader worker running this code, ``None`` in the main process."""
    worker = torch.utils.data.get_worker_info()
    return None if worker is None else worker.seed


def seed_for_worker(seed: int, worker: int) -> int:
    """The seed a worker's random pattern draws start from: workers get copies of one random state
    and would otherwise repeat one another's draws."""
    return hash((seed, worker)) % 2**63


def check_batch(batch: Tensor, num_nodes: int, name: str = "batch", device: Optional[torch.device] = None,
                num_graphs: Optional[int] = None) -> Tensor:
    """Validate a PyG batch vector ``[N]`` (integer, non-negative, sorted, below ``num_graphs`` and on
    ``device`` when given; one host sync); return it as int64."""
    if not isinstance(batch, Tensor):
        raise TypeError(f"{name} must be a LongTensor [N], got {type(batch).__name__}")
    if batch.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"{name} must have an integer dtype (int64), got {batch.dtype}")
    if batch.dim() != 1 or batch.numel() != num_nodes:
        raise ValueError(f"{name} must have shape [num_nodes]=[{num_nodes}], got {list(batch.shape)}")
    if device is not None and batch.device != device:
        raise ValueError(f"{name} is on {batch.device} but the features are on {device}")
    batch = batch.long()
    if num_nodes:
        first, last, unsorted = torch.stack([batch[0], batch[-1], (batch[1:] < batch[:-1]).any()]).tolist()
        if first < 0:
            raise ValueError(f"{name} must be non-negative, got {int(batch.min())}")
        if unsorted:
            raise ValueError(f"{name} must be sorted (non-decreasing), as PyG's Batch produces it")
        if num_graphs is not None and last >= num_graphs:
            raise ValueError(f"{name} holds graph {last} but num_graphs is {num_graphs}")
    return batch


class Segments(NamedTuple):
    """Per-node view of the contiguous segments (sequences/graphs) of a batch, each ``[N]``.

    ``start[i]``: global index of the first node of ``i``'s segment; ``length[i]``: that segment's
    size; ``pos[i] = i - start[i]``: the position of ``i`` inside it.
    """

    start: Tensor
    length: Tensor
    pos: Tensor


def segments(num_nodes: int, batch: Optional[Tensor], device: torch.device) -> Segments:
    """`Segments` of a batch vector ``[N]``; ``batch=None`` is one segment of all ``num_nodes`` nodes."""
    index = torch.arange(num_nodes, device=device)
    if batch is None:
        return Segments(torch.zeros_like(index), torch.full_like(index, num_nodes), index)
    batch = check_batch(batch, num_nodes)
    # Consecutive runs rather than bincount, so unused or huge sequence ids cost nothing.
    _, segment, counts = torch.unique_consecutive(batch, return_inverse=True, return_counts=True)
    start = (torch.cumsum(counts, 0) - counts)[segment]
    return Segments(start, counts[segment], index - start)


def ceil_div(numerator: Tensor, denominator: Union[int, Tensor]) -> Tensor:
    """Elementwise ``ceil(numerator / denominator)`` for integer tensors and a positive denominator."""
    return -torch.div(-numerator, denominator, rounding_mode="floor")


def runs_to_edge_index(target: Tensor, first: Tensor, length: Tensor, step: Union[int, Tensor]) -> Tensor:
    r"""Concatenate runs of sources into an ``edge_index [2, E]``.

    Run ``r`` contributes the edges ``(first[r] + step[r] \cdot t) \to target[r]`` for
    ``t = 0 .. length[r] - 1``; the output lists the runs one after the other.

    Args:
        target, first, length: ``[R]`` int64 (``length >= 0``).
        step: an int, or ``[R]`` int64 per run.

    Runs may come in any order (the output keeps it); patterns are sorted by (target, source)
    when the runs are ordered by target and, within a target, ascending and non-overlapping.

    Both output rows are written as differences at run starts followed by in-place cumulative
    sums, because building 10^8-edge patterns is bound by memory traffic and per-edge
    temporaries (``repeat_interleave``, gathers) would multiply it.
    """
    if not bool((length > 0).all()):
        kept = (length > 0).nonzero().flatten()
        target, first, length = target[kept], first[kept], length[kept]
        if isinstance(step, Tensor):
            step = step[kept]
    run_start = torch.cumsum(length, 0) - length
    num_edges = int(run_start[-1] + length[-1]) if length.numel() else 0
    out = torch.empty(2, num_edges, dtype=torch.long, device=target.device)
    if num_edges == 0:
        return out
    src, dst = out[0], out[1]
    last = first + step * (length - 1)
    if isinstance(step, Tensor):
        src.zero_()
        src.index_copy_(0, run_start, _differences(step, step))
        src.cumsum_(0)
    else:
        src.fill_(step)
    src.index_copy_(0, run_start, _differences(first, last))
    src.cumsum_(0)
    dst.zero_()
    dst.index_copy_(0, run_start, _differences(target, target))
    dst.cumsum_(0)
    return out


def _differences(value: Tensor, previous_end: Tensor) -> Tensor:
    # value[r] - previous_end[r - 1], with an implicit 0 before the first run.
    delta = value.clone()
    delta[1:] -= previous_end[:-1]
    return delta


def rows_to_edge_index(sources: Tensor, valid: Tensor) -> Tensor:
    """Edges ``sources[i, k] -> i`` where ``valid[i, k]``, from ``[N, K]`` tensors, in row-major order
    (a sorted pattern when each row is ascending)."""
    if bool(valid.all()):
        target = torch.arange(sources.size(0), device=sources.device).repeat_interleave(sources.size(1))
        return torch.stack([sources.flatten(), target])
    kept = valid.flatten().nonzero().flatten()
    return torch.stack([sources.flatten()[kept], torch.div(kept, sources.size(1), rounding_mode="floor")])


def grid_union(first: Tensor, count: Tensor, step: Union[int, Tensor], extras: Optional[Tensor], sentinel: int) -> Tensor:
    r"""Edges to every target ``i`` from the sorted union of an arithmetic grid and extra sources.

    Target ``i`` receives ``first[i] + step[i] \cdot t`` for ``t < count[i]`` and every entry of
    ``extras[i]`` below ``sentinel``. The union is formed per target without sorting edges: the
    extras split the grid into pieces, and the runs "piece, extra, piece, ..., extra, piece"
    (an extra already on the grid or repeated becomes an empty run) are already in order.

    Args:
        first, count: ``[N]`` grid start and size per target (targets are ``0 .. N-1``).
        step: positive int or ``[N]`` grid step per target.
        extras: ``[N, M]`` extra sources, each row ascending, padded at the end with ``sentinel``;
            or ``None``.
        sentinel: a value larger than every real source.

    Returns:
        ``[2, E]`` sorted by (target, source), without duplicates.
    """
    num_targets = first.numel()
    if extras is None or extras.size(1) == 0:
        return runs_to_edge_index(torch.arange(num_targets, device=first.device), first, count, step)
    col_step = step.unsqueeze(1) if isinstance(step, Tensor) else step
    first_, count_ = first.unsqueeze(1), count.unsqueeze(1)
    valid = extras < sentinel
    offset = extras - first_
    # Grid index of the first grid point >= each extra; the pieces lie between consecutive ones.
    rank = torch.where(valid, ceil_div(offset, col_step).clamp_(min=0).minimum(count_), count_)
    on_grid = valid & (offset >= 0) & (offset % col_step == 0) & (rank < count_)
    kept_extra = valid & ~on_grid
    kept_extra[:, 1:] &= extras[:, 1:] != extras[:, :-1]
    # Runs piece_0, extra_1, piece_1, ..., extra_M, piece_M; piece_k holds the grid indices
    # [rank_k, rank_(k+1)) with rank_0 = 0 and rank_(M+1) = count.
    runs_per_target = 2 * extras.size(1) + 1
    run_first = torch.empty(num_targets, runs_per_target, dtype=torch.long, device=first.device)
    run_length = torch.empty_like(run_first)
    run_first[:, 0] = first
    torch.add(first_, rank * col_step, out=run_first[:, 2::2])
    run_first[:, 1::2] = extras
    run_length[:, 0] = rank[:, 0]
    torch.sub(rank[:, 1:], rank[:, :-1], out=run_length[:, 2:-1:2])
    torch.sub(count, rank[:, -1], out=run_length[:, -1])
    run_length[:, 1::2] = kept_extra
    # Most runs are empty; select the others here, where their target is a division away.
    kept = run_length.flatten().nonzero().flatten()
    run_target = torch.div(kept, runs_per_target, rounding_mode="floor")
    run_step = step[run_target] if isinstance(step, Tensor) else step
    return runs_to_edge_index(run_target, run_first.flatten()[kept], run_length.flatten()[kept], run_step)
