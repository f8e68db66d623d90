"""Long Range Arena ListOps: generator, vocabulary, evaluator and cached splits.

A ListOps expression is a tree of list operators over the digits ``0``..``9``; its label is
the digit the tree evaluates to (10 classes). The generator follows the LRA specification
(Tay et al. 2021, ``lra_benchmarks/data/listops.py``):

* operators ``[MIN``, ``[MAX``, ``[MED`` (median) and ``[SM`` (sum modulo 10), each closed by ``]``;
* a node at depth ``d < max_depth`` (the root has depth 1) is an operator with probability 0.25,
  otherwise — and always at ``d = max_depth`` — a uniform digit;
* an operator takes a uniform number of arguments in ``[2, max_args]`` and a uniform operator;
* a tree is kept when its token count ``L`` (operators, digits and ``]``) satisfies
  ``min_length < L < max_length`` — LRA's strict test, so the defaults give ``501 <= L <= 1999``;
* trees are de-duplicated over the whole dataset before it is cut into train/val/test, so no
  expression appears twice, within or across splits.

Median: LRA (and Nangia & Bowman 2018) compute ``int(np.median(args))``; for an even count that is
the mean of the two middle values rounded down (digits are non-negative), e.g. ``MED(1, 2) = 1``.

Expressions are written in LRA's tokenised form, space separated without parentheses:
``[MAX 2 9 [MIN 4 7 ] 0 ]``. :func:`evaluate_expression` also reads LRA's raw source strings and
the original ListOps files of Nangia & Bowman, which wrap every argument in parentheses:
``( ( ( [MAX 2 ) 9 ) ] )``.
"""
from __future__ import annotations

import random
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from tqdm import tqdm

from ..io import atomic_write, check_path
from ..patterns._utils import check_size
from .sequence import PackedSequences

PAD = 0
CLS = 1
OPERATORS: Tuple[str, ...] = ("[MIN", "[MAX", "[MED", "[SM")
CLOSE = "]"
DIGITS: Tuple[str, ...] = tuple(str(value) for value in range(10))
VOCAB: List[str] = ["<pad>", "<cls>", *DIGITS, *OPERATORS, CLOSE]
TOKEN_IDS: Dict[str, int] = {token: index for index, token in enumerate(VOCAB)}
NUM_CLASSES = 10
SPLITS: Tuple[str, ...] = ("train", "val", "test")
BRANCH_PROBABILITY = 0.25

_DIGIT_BASE = TOKEN_IDS["0"]
_OPERATOR_BASE = TOKEN_IDS[OPERATORS[0]]
_CLOSE_ID = TOKEN_IDS[CLOSE]
_PARENTHESES = frozenset({"(", ")"})
_TSV_HEADER = "Source\tTarget"
# Normal generation accepts about one tree in twelve; this many misses in a row means the bounds
# admit fewer distinct trees than were asked for.
_MAX_CONSECUTIVE_MISSES = 100_000


def _median(args: Sequence[int]) -> int:
    ordered = sorted(args)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) // 2


def _sum_mod_10(args: Sequence[int]) -> int:
    return sum(args) % 10


# Indexed like OPERATORS.
_OPERATOR_FUNCTIONS: Tuple[Callable[[Sequence[int]], int], ...] = (min, max, _median, _sum_mod_10)
_FUNCTION_BY_NAME: Dict[str, Callable[[Sequence[int]], int]] = dict(zip(OPERATORS, _OPERATOR_FUNCTIONS))


# ---------------------------------------------------------------------------- vocabulary
def _token_ids(text: str) -> bytes:
    """Token ids of ``text`` as one byte each (every id is below 256); parentheses are dropped."""
    try:
        return bytes(TOKEN_IDS[token] for token in text.split() if token not in _PARENTHESES)
    except KeyError as error:
        raise ValueError(f"text contains the unknown token {error.args[0]!r}; ListOps tokens are {VOCAB[2:]} and parentheses") from None


def tokenize(text: str) -> Tensor:
    """Token ids ``[L]`` (int64) of a whitespace-separated expression, indexing :data:`VOCAB`.

    Parentheses (LRA's raw form, Nangia & Bowman's files) are dropped; no ``<cls>`` is added
    (the collator prepends it). The structure is not checked: see :func:`evaluate_expression`.
    """
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    return torch.tensor(list(_token_ids(text)), dtype=torch.long)


def detokenize(tokens: Tensor) -> str:
    """The space-separated expression of token ids ``tokens [L]``; ``<pad>`` and ``<cls>`` are skipped."""
    if not isinstance(tokens, Tensor) or tokens.dtype.is_floating_point or tokens.dtype.is_complex or tokens.dtype == torch.bool:
        raise TypeError(f"tokens must be an integer Tensor, got {tokens.dtype if isinstance(tokens, Tensor) else type(tokens).__name__}")
    if tokens.dim() != 1:
        raise ValueError(f"tokens must have shape [L], got {list(tokens.shape)}")
    ids = tokens.tolist()
    if any(not 0 <= index < len(VOCAB) for index in ids):
        raise ValueError(f"tokens must lie in [0, {len(VOCAB)}), got values in [{min(ids)}, {max(ids)}]")
    return " ".join(VOCAB[index] for index in ids if index not in (PAD, CLS))


# ---------------------------------------------------------------------------- evaluation
def evaluate_expression(text: str) -> int:
    """The value (0..9) of a ListOps expression.

    Reads LRA's tokenised form ``[MAX 2 9 [MIN 4 7 ] 0 ]`` as well as the parenthesised form of
    LRA's raw strings and of Nangia & Bowman's files, ``( ( ( [MAX 2 ) 9 ) ] )``; both use the
    same four operators with ``MED(args) = int(np.median(args))``. Evaluation keeps an explicit
    stack, so nesting depth is unlimited. A bare digit is an expression.

    Raises:
        ValueError: on an unknown token, an operator without arguments, a ``]`` or ``)`` that
            closes nothing, an unclosed operator or parenthesis, tokens after the complete
            expression, or empty text.
    """
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    open_operators: List[Tuple[str, int, List[int]]] = []
    open_parentheses = 0
    result: Optional[int] = None
    for position, token in enumerate(text.split()):
        if token == "(":
            open_parentheses += 1
            continue
        if token == ")":
            if open_parentheses == 0:
                raise ValueError(f"')' at token {position} closes no '('")
            open_parentheses -= 1
            continue
        if result is not None:
            raise ValueError(f"token {token!r} at position {position} follows the complete expression")
        if token in _FUNCTION_BY_NAME:
            open_operators.append((token, position, []))
            continue
        if token == CLOSE:
            if not open_operators:
                raise ValueError(f"']' at token {position} closes no operator")
            operator, start, args = open_operators.pop()
            if not args:
                raise ValueError(f"operator {operator} at token {start} has no arguments")
            value = _FUNCTION_BY_NAME[operator](args)
        elif token in DIGITS:
            value = int(token)
        else:
            raise ValueError(f"unknown token {token!r} at position {position}; ListOps tokens are {VOCAB[2:]} and parentheses")
        if open_operators:
            open_operators[-1][2].append(value)
        else:
            result = value
    if open_operators:
        operator, start, _ = open_operators[-1]
        raise ValueError(f"{len(open_operators)} operator(s) left open; the innermost is {operator} at token {start}")
    if open_parentheses:
        raise ValueError(f"{open_parentheses} '(' left open")
    if result is None:
        raise ValueError("the expression is empty")
    return result


# ---------------------------------------------------------------------------- generation
def _draw_tree(draw: Callable[[], float], max_depth: int, max_args: int, max_length: int) -> Optional[Tuple[bytes, int]]:
    """One LRA tree in pre-order as token-id bytes with its value, or ``None`` once it is known to reach ``max_length`` tokens.

    Pre-order with a stack of open operators replaces LRA's recursion. Abandoning an unfinished
    tree that already has ``max_length`` tokens only drops trees LRA's length test rejects, so the
    kept trees have the same distribution; a finished tree may still be too long or too short.
    """
    tokens = bytearray()
    open_operators: List[List] = []  # [operator index, arguments still to draw, values drawn]
    while True:
        if len(open_operators) + 1 < max_depth and draw() <= BRANCH_PROBABILITY:
            operator = int(draw() * len(OPERATORS))
            tokens.append(_OPERATOR_BASE + operator)
            open_operators.append([operator, 2 + int(draw() * (max_args - 1)), []])
            continue
        value = int(draw() * 10)
        tokens.append(_DIGIT_BASE + value)
        while open_operators:
            frame = open_operators[-1]
            frame[2].append(value)
            frame[1] -= 1
            if frame[1]:
                break
            open_operators.pop()
            tokens.append(_CLOSE_ID)
            value = _OPERATOR_FUNCTIONS[frame[0]](frame[2])
        else:
            return bytes(tokens), value
        if len(tokens) >= max_length:
            return None


def _longest_possible_tree(max_depth: int, max_args: int) -> int:
    length = 1
    for _ in range(max_depth - 1):
        length = 2 + max_args * length
    return length


def generate_listops(
    num_samples: int,
    *,
    seed: int = 0,
    min_length: int = 500,
    max_length: int = 2000,
    max_depth: int = 10,
    max_args: int = 10,
    progress: bool = False,
) -> List[Tuple[str, int]]:
    """``num_samples`` distinct LRA ListOps expressions with their labels, reproducible by ``seed``.

    Each expression has ``L`` tokens with ``min_length < L < max_length`` (LRA's strict bounds),
    nesting at most ``max_depth`` levels counting the digits (at most ``max_depth - 1`` nested
    operators) and at most ``max_args`` arguments per operator. Order is generation order.

    Returns:
        ``[(expression, label)]`` with expressions in the tokenised form ``[MAX 2 9 ]``.
    """
    check_size(num_samples, "num_samples")
    check_size(seed, "seed")
    check_size(min_length, "min_length")
    check_size(max_length, "max_length", minimum=min_length + 2)
    check_size(max_depth, "max_depth", minimum=1)
    check_size(max_args, "max_args", minimum=2)
    if _longest_possible_tree(max_depth, max_args) <= min_length:
        raise ValueError(
            f"no tree with max_depth={max_depth} and max_args={max_args} has more than min_length={min_length} tokens "
            f"(the longest has {_longest_possible_tree(max_depth, max_args)})"
        )
    draw = random.Random(seed).random
    labels: Dict[bytes, int] = {}  # insertion-ordered, so the split is reproducible too
    misses = 0
    with tqdm(total=num_samples, desc="ListOps", unit="expr", disable=not progress) as bar:
        while len(labels) < num_samples:
            tree = _draw_tree(draw, max_depth, max_args, max_length)
            if tree is None or not min_length < len(tree[0]) < max_length or tree[0] in labels:
                misses += 1
                if misses == _MAX_CONSECUTIVE_MISSES:
                    raise RuntimeError(
                        f"found only {len(labels)} of {num_samples} distinct expressions with {min_length} < length < {max_length}, "
                        f"max_depth={max_depth}, max_args={max_args}; widen the bounds or ask for fewer"
                    )
                continue
            misses = 0
            labels[tree[0]] = tree[1]
            bar.update()
    return [(" ".join(VOCAB[index] for index in tokens), label) for tokens, label in labels.items()]


# ---------------------------------------------------------------------------- cached splits
class ListOpsDataset(PackedSequences):
    """ListOps samples ``(tokens [L] int64, label)`` with labels in ``0..9``, stored packed (see `PackedSequences`)."""


def cache_directory(
    root: Union[str, Path],
    *,
    num_train: int = 96000,
    num_val: int = 2000,
    num_test: int = 2000,
    seed: int = 0,
    min_length: int = 500,
    max_length: int = 2000,
    max_depth: int = 10,
    max_args: int = 10,
) -> Path:
    """``<root>/listops/<name>``: the folder holding ``{train,val,test}.tsv`` of one generated dataset."""
    name = f"train{num_train}_val{num_val}_test{num_test}_len{min_length}-{max_length}_depth{max_depth}_args{max_args}_seed{seed}"
    return check_path(root, "root") / "listops" / name


def _write_tsv_atomically(path: Path, rows: Sequence[Tuple[str, int]]) -> None:
    """LRA's TSV layout: a ``Source<TAB>Target`` header, then ``expression<TAB>label`` rows."""

    def write(handle) -> None:
        handle.write(_TSV_HEADER + "\n")
        handle.writelines(f"{expression}\t{label}\n" for expression, label in rows)

    atomic_write(path, write, binary=False)


def _read_tsv(path: Path) -> ListOpsDataset:
    with open(path, encoding="ascii") as handle:
        header = handle.readline().rstrip("\n")
        if header != _TSV_HEADER:
            raise ValueError(f"{path} must start with the header {_TSV_HEADER!r}, got {header!r}")
        chunks, labels = [], []
        for line_number, line in enumerate(handle, start=2):
            expression, tab, label = line.rstrip("\n").rpartition("\t")
            if not tab or label not in DIGITS:
                raise ValueError(f"{path}:{line_number} must be 'expression<TAB>label' with a label in 0..9")
            try:
                chunks.append(_token_ids(expression))
            except ValueError as error:
                raise ValueError(f"{path}:{line_number}: {error}") from None
            labels.append(int(label))
    lengths = torch.tensor([len(chunk) for chunk in chunks], dtype=torch.long)
    offsets = torch.cat([lengths.new_zeros(1), lengths.cumsum(0)])
    tokens = torch.frombuffer(bytearray(b"".join(chunks)), dtype=torch.uint8) if offsets[-1] > 0 else torch.zeros(0, dtype=torch.uint8)
    return ListOpsDataset(tokens, offsets, torch.tensor(labels, dtype=torch.long))


def load_listops(
    root: Union[str, Path],
    split: str,
    *,
    num_train: int = 96000,
    num_val: int = 2000,
    num_test: int = 2000,
    seed: int = 0,
    min_length: int = 500,
    max_length: int = 2000,
    max_depth: int = 10,
    max_args: int = 10,
    progress: bool = True,
) -> ListOpsDataset:
    """One split (``"train"``, ``"val"`` or ``"test"``) of a generated LRA ListOps dataset.

    The first call generates all three splits at once with :func:`generate_listops` (so they are
    disjoint) and writes them atomically to :func:`cache_directory` as ``{train,val,test}.tsv``;
    later calls with the same arguments read those files. LRA's sizes are the defaults.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    sizes = {"train": check_size(num_train, "num_train"), "val": check_size(num_val, "num_val"), "test": check_size(num_test, "num_test")}
    directory = cache_directory(root, num_train=num_train, num_val=num_val, num_test=num_test, seed=seed, min_length=min_length,
                                max_length=max_length, max_depth=max_depth, max_args=max_args)
    if not all((directory / f"{name}.tsv").is_file() for name in SPLITS):
        samples = generate_listops(sum(sizes.values()), seed=seed, min_length=min_length, max_length=max_length,
                                   max_depth=max_depth, max_args=max_args, progress=progress)
        directory.mkdir(parents=True, exist_ok=True)
        start = 0
        for name in SPLITS:
            _write_tsv_atomically(directory / f"{name}.tsv", samples[start:start + sizes[name]])
            start += sizes[name]
    return _read_tsv(directory / f"{split}.tsv")
