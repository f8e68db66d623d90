"""Atomic file writes: a process killed at any moment leaves either the old file or the new one.

The one home of this knowledge, at the bottom of the package (it imports nothing from it), so
that checkpoints (`train`) and dataset caches (`data`) share it.
"""
from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import IO, Any, Callable, Union

__all__ = ["atomic_write", "atomic_write_text", "atomic_save", "check_path"]

PathLike = Union[str, os.PathLike]


def check_path(value: Any, name: str) -> Path:
    """``value`` as a :class:`~pathlib.Path`, or a ``TypeError`` naming ``name`` unless it is a ``str`` or path."""
    if not isinstance(value, (str, os.PathLike)):
        raise TypeError(f"{name} must be a path (str or os.PathLike), got {type(value).__name__}")
    return Path(value)


def atomic_write(path: PathLike, write: Callable[[IO], None], *, binary: bool = True) -> Path:
    """Call ``write(handle)`` on a fresh temporary file beside ``path``, fsync it, then rename it over ``path``.

    The temporary name is unique per process and call and opened with ``open(..., "x")`` (not
    ``tempfile``), so the result gets the umask's permissions. If ``write`` raises (a failed
    download's checksum, say), the temporary file is removed and ``path`` is left as it was.
    Text mode writes ``\\n`` line ends on every platform. Returns ``path``.
    """
    path = Path(path)
    if not callable(write):
        raise TypeError(f"write must be a callable taking a file handle, got {type(write).__name__}")
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp")
    try:
        with open(temporary, "xb" if binary else "x", **({} if binary else {"encoding": "utf-8", "newline": "\n"})) as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    return path


def atomic_write_text(text: str, path: PathLike) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return atomic_write(path, lambda handle: handle.write(text), binary=False)


def atomic_save(obj: Any, path: PathLike) -> Path:
    """``torch.save(obj)`` to ``path`` atomically."""
    import torch

    return atomic_write(path, lambda handle: torch.save(obj, handle))
