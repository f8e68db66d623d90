"""Positional patterns by name, so models, data loaders and the CLI can share one spelling.

``build_pattern("longformer", n, batch=batch, window=64, global_indices=[0])`` equals
``longformer(n, 64, [0], batch=batch)``. :func:`parse_pattern` reads the CLI form
``"longformer:window=64,global_indices=0"``; :func:`check_pattern` refuses a bad spec before any data.
"""
from __future__ import annotations

import inspect
from typing import Any, Callable, Dict, Mapping, Optional, Tuple

import torch
from torch import Tensor

from . import positional

POSITIONAL_PATTERNS: Dict[str, Callable[..., Tensor]] = {
    "window": positional.sliding_window,
    "strided": positional.strided,
    "fixed": positional.fixed,
    "log_sparse": positional.log_sparse,
    "block_local": positional.block_local,
    "global_tokens": positional.global_tokens,
    "random": positional.random,
    "longformer": positional.longformer,
    "bigbird": positional.bigbird,
}
RANDOM_PATTERNS = frozenset({"random", "bigbird"})
# Other spellings `parse_pattern` accepts: the Python name of the window builder.
PATTERN_ALIASES = {"sliding_window": "window"}
# Builder arguments the caller of a pattern supplies (its sequences, device and draws), never its spec.
_SUPPLIED = frozenset({"num_nodes", "batch", "device", "generator"})


def check_pattern(name: str, params: Mapping[str, Any]) -> None:
    """Refuse a pattern spec ``(name, params)`` before any data: an unknown name, parameters the
    pattern does not take or lacks, and values its builder refuses (checked by building it over a
    one-position sequence, with a private generator so the global RNG is not drawn from).

    Raises ``ValueError`` (``TypeError`` for a value of the wrong type) that names the pattern.
    """
    if name not in POSITIONAL_PATTERNS:
        raise ValueError(f"unknown pattern {name!r}; choose from {sorted(POSITIONAL_PATTERNS)}")
    fn = POSITIONAL_PATTERNS[name]
    signature = inspect.signature(fn).parameters
    takes = [p for p in signature if p not in _SUPPLIED]
    unknown = sorted(set(params) - set(takes))
    if unknown:
        raise ValueError(f"pattern {name!r} takes no parameter(s) {unknown}; it takes {takes}")
    missing = [p for p in takes if signature[p].default is inspect.Parameter.empty and p not in params]
    if missing:
        raise ValueError(f"pattern {name!r} needs parameter(s) {missing}, e.g. {name}:{missing[0]}=...")
    extra = {"generator": torch.Generator()} if name in RANDOM_PATTERNS else {}
    try:
        fn(1, **params, **extra)
    except (TypeError, ValueError) as error:
        raise type(error)(f"pattern {name!r}: {error}") from None


def build_pattern(name: str, num_nodes: int, *, batch: Optional[Tensor] = None, **params: Any) -> Tensor:
    """Build the positional pattern ``name`` over ``num_nodes`` positions (see `POSITIONAL_PATTERNS`).

    Returns ``edge_index [2, E]`` sorted by (target, source).
    """
    if name not in POSITIONAL_PATTERNS:
        raise ValueError(f"unknown pattern {name!r}; choose from {sorted(POSITIONAL_PATTERNS)}")
    fn = POSITIONAL_PATTERNS[name]
    accepted = inspect.signature(fn).parameters
    unknown = set(params) - set(accepted)
    if unknown:
        raise ValueError(f"pattern {name!r} takes no parameter(s) {sorted(unknown)}; it takes {[p for p in accepted if p not in ('num_nodes', 'batch')]}")
    return fn(num_nodes, batch=batch, **params)


def parse_pattern(spec: str) -> Tuple[str, Dict[str, Any]]:
    """Parse ``"name:key=value,key=value"`` (values: ints, floats, ``true``/``false``, ``a+b`` lists of ints)
    and check it (:func:`check_pattern`); ``name`` may be an alias of `PATTERN_ALIASES` (``sliding_window``).
    Every refusal is a ``ValueError`` (a non-string spec: ``TypeError``)."""
    if not isinstance(spec, str):
        raise TypeError(f"pattern spec must be a string like 'window:window=64', got {type(spec).__name__}")
    name, _, rest = spec.partition(":")
    name = PATTERN_ALIASES.get(name.strip(), name.strip())
    if name not in POSITIONAL_PATTERNS:
        raise ValueError(f"unknown pattern {name!r}; choose from {sorted(POSITIONAL_PATTERNS)}")
    params: Dict[str, Any] = {}
    for item in filter(None, rest.split(",")):
        key, eq, value = item.partition("=")
        if not eq:
            raise ValueError(f"pattern parameter {item!r} must look like key=value")
        key = key.strip()
        try:
            parsed = _parse_value(value.strip())
        except ValueError as error:
            raise ValueError(f"pattern parameter {key!r} of {spec!r}: {error}") from None
        if key in params:
            raise ValueError(f"pattern parameter {key!r} is given twice in {spec!r}")
        params[key] = [parsed] if key.endswith("indices") and isinstance(parsed, int) else parsed
    try:
        check_pattern(name, params)
    except TypeError as error:  # text has no types: a value of the wrong kind is a malformed spec
        raise ValueError(str(error)) from None
    return name, params


def _parse_value(text: str) -> Any:
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    if "+" in text:
        try:
            return [int(v) for v in text.split("+")]
        except ValueError:
            raise ValueError(f"cannot read pattern parameter value {text!r}: a+b lists hold integers") from None
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    raise ValueError(f"cannot read pattern parameter value {text!r}")
