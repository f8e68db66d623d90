"""LRA ListOps: generator statistics, cache, tokeniser and evaluator against brute force and real data."""
import gzip
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from graph_sparse_attn.data import listops
from graph_sparse_attn.data.listops import (
    CLS,
    OPERATORS,
    PAD,
    VOCAB,
    detokenize,
    evaluate_expression,
    generate_listops,
    load_listops,
    tokenize,
)

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data"
NANGIA_BOWMAN = SHARED / "listops_nangia_bowman" / "test_d20s.tsv.gz"
TINY = dict(num_train=200, num_val=50, num_test=50, seed=0, min_length=30, max_length=200, progress=False)


# ---------------------------------------------------------------------------- independent references
def parse_tree(text):
    """Recursive-descent parse of an expression into ``int`` leaves and ``(operator, [children])`` nodes."""
    tokens = [token for token in text.split() if token not in ("(", ")")]

    def parse(position):
        token = tokens[position]
        if token.isdigit():
            return int(token), position + 1
        assert token in OPERATORS, token
        children, position = [], position + 1
        while tokens[position] != "]":
            child, position = parse(position)
            children.append(child)
        return (token, children), position + 1

    tree, end = parse(0)
    assert end == len(tokens)
    return tree


def brute_value(tree):
    if isinstance(tree, int):
        return tree
    operator, children = tree
    args = [brute_value(child) for child in children]
    return {"[MIN": min, "[MAX": max, "[MED": lambda a: int(np.median(a)), "[SM": lambda a: int(np.sum(a)) % 10}[operator](args)


def depth(tree):
    return 1 if isinstance(tree, int) else 1 + max(depth(child) for child in tree[1])


def operator_nodes(tree):
    if isinstance(tree, int):
        return []
    return [tree] + [node for child in tree[1] for node in operator_nodes(child)]


def random_tree(rng, depth_left):
    """Small random trees, 1 to 5 arguments (one more than LRA allows at the low end)."""
    if depth_left == 0 or rng.random() < 0.4:
        return rng.randrange(10)
    return rng.choice(OPERATORS), [random_tree(rng, depth_left - 1) for _ in range(rng.randint(1, 5))]


def render_lra_tokens(tree):
    if isinstance(tree, int):
        return str(tree)
    return " ".join([tree[0], *(render_lra_tokens(child) for child in tree[1]), "]"])


def render_parenthesised(tree):
    """LRA's raw ``to_string`` / Nangia & Bowman's syntax: ``( ( ( [MAX 2 ) 9 ) ] )``."""
    if isinstance(tree, int):
        return str(tree)
    operator, children = tree
    text = f"( {operator} {render_parenthesised(children[0])} )"
    for child in children[1:]:
        text = f"( {text} {render_parenthesised(child)} )"
    return f"( {text} ] )"


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    load_listops(root, "train", **TINY)
    return root


@pytest.fixture(scope="module")
def tiny_splits(tiny_root):
    return {split: load_listops(tiny_root, split, **TINY) for split in ("train", "val", "test")}


# ---------------------------------------------------------------------------- generator
def test_tiny_dataset_statistics(tiny_splits):
    assert [len(tiny_splits[split]) for split in ("train", "val", "test")] == [200, 50, 50]
    labels, operators, seen = set(), set(), set()
    for split in tiny_splits.values():
        for tokens, label in split:
            assert tokens.dtype == torch.long and tokens.dim() == 1
            assert TINY["min_length"] < tokens.numel() < TINY["max_length"]
            text = detokenize(tokens)
            tree = parse_tree(text)
            assert depth(tree) <= 10
            assert all(2 <= len(children) <= 10 for _, children in operator_nodes(tree))
            operators.update(operator for operator, _ in operator_nodes(tree))
            assert label == brute_value(tree) == evaluate_expression(text)
            labels.add(label)
            seen.add(text)
    assert operators == set(OPERATORS)
    assert labels == set(range(10))
    assert len(seen) == 300  # distinct within and across splits


def test_depth_and_argument_caps_bind():
    samples = generate_listops(100, seed=5, min_length=10, max_length=60, max_depth=4, max_args=3)
    trees = [parse_tree(text) for text, _ in samples]
    assert max(depth(tree) for tree in trees) == 4
    assert {len(children) for tree in trees for _, children in operator_nodes(tree)} == {2, 3}
    assert all(label == brute_value(tree) for tree, (_, label) in zip(trees, samples))


def test_length_bounds_are_strict_and_reached():
    lengths = {len(text.split()) for text, _ in generate_listops(300, seed=2, min_length=4, max_length=12)}
    assert min(lengths) == 5 and max(lengths) == 11


def test_lra_bounds():
    samples = generate_listops(50, seed=1)
    lengths = [len(text.split()) for text, _ in samples]
    assert min(lengths) > 500 and max(lengths) < 2000
    for text, label in samples:
        tree = parse_tree(text)
        assert depth(tree) <= 10
        assert max(len(children) for _, children in operator_nodes(tree)) <= 10
        assert label == brute_value(tree)
    assert len(set(text for text, _ in samples)) == 50


def test_reproducible_by_seed():
    small = dict(min_length=20, max_length=80)
    assert generate_listops(40, seed=3, **small) == generate_listops(40, seed=3, **small)
    assert generate_listops(40, seed=3, **small) != generate_listops(40, seed=4, **small)


def test_files_are_lra_tsv_and_match_the_dataset(tiny_root, tiny_splits):
    directory = listops.cache_directory(tiny_root, **{key: value for key, value in TINY.items() if key != "progress"})
    assert sorted(path.name for path in directory.iterdir()) == ["test.tsv", "train.tsv", "val.tsv"]  # no temporary files left
    for split, dataset in tiny_splits.items():
        lines = (directory / f"{split}.tsv").read_text().splitlines()
        assert lines[0] == "Source\tTarget"
        assert len(lines) == len(dataset) + 1
        for line, (tokens, label) in zip(lines[1:], dataset):
            expression, stored_label = line.split("\t")
            assert "(" not in expression
            assert expression == detokenize(tokens)
            assert int(stored_label) == label == evaluate_expression(expression)


@pytest.mark.parametrize("line,message", [("[MAX 1 2 ]\t12", "must be 'expression<TAB>label'"),
                                          ("[MAXX 1 2 ]\t2", "unknown token")])
def test_a_malformed_cache_file_is_named_with_its_line(tmp_path, line, message):
    path = tmp_path / "val.tsv"
    path.write_text(f"Source\tTarget\n[MIN 3 4 ]\t3\n{line}\n")
    with pytest.raises(ValueError, match=f"val.tsv:3.*{message}"):
        listops._read_tsv(path)


def test_second_load_reads_the_cache(tiny_root, tiny_splits, monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("regenerated although the files exist")

    monkeypatch.setattr(listops, "generate_listops", fail)
    again = load_listops(tiny_root, "val", **TINY)
    assert [(tokens.tolist(), label) for tokens, label in again] == [(tokens.tolist(), label) for tokens, label in tiny_splits["val"]]
    with pytest.raises(AssertionError, match="regenerated"):
        load_listops(tiny_root, "val", **{**TINY, "seed": 1})


def test_dataset_indexing(tiny_splits):
    dataset = tiny_splits["test"]
    assert torch.equal(dataset[-1][0], dataset[len(dataset) - 1][0])
    with pytest.raises(IndexError):
        dataset[len(dataset)]
    assert len(list(dataset)) == len(dataset)


def test_generator_argument_errors(tmp_path):
    with pytest.raises(ValueError, match="max_length"):
        generate_listops(5, min_length=10, max_length=11)
    with pytest.raises(ValueError, match="no tree"):
        generate_listops(5, min_length=10, max_length=40, max_depth=2, max_args=2)
    with pytest.raises(ValueError, match="num_samples"):
        generate_listops(-1)
    with pytest.raises(TypeError, match="seed"):
        generate_listops(5, seed=1.5)
    with pytest.raises(RuntimeError, match="distinct"):
        generate_listops(11, min_length=0, max_length=2)  # only the ten one-digit trees fit
    with pytest.raises(ValueError, match="split"):
        load_listops(tmp_path, "validation", **TINY)


# ---------------------------------------------------------------------------- evaluator
def test_evaluator_matches_brute_force_in_both_syntaxes():
    rng = random.Random(0)
    for _ in range(500):
        tree = random_tree(rng, 5)
        expected = brute_value(tree)
        assert evaluate_expression(render_lra_tokens(tree)) == expected
        assert evaluate_expression(render_parenthesised(tree)) == expected


def test_median_of_an_even_count_rounds_down():
    assert evaluate_expression("[MED 1 2 ]") == 1
    assert evaluate_expression("[MED 9 0 3 8 ]") == 5
    assert evaluate_expression("[SM 9 9 9 ]") == 7


def test_deep_nesting_needs_no_recursion():
    depth_ = 50_000
    assert evaluate_expression("[SM " * depth_ + "7 " + "] " * depth_) == 7


@pytest.mark.parametrize(
    "text, message",
    [
        ("", "empty"),
        ("   ", "empty"),
        ("[MAX ]", "no arguments"),
        ("[MAX 1 [MIN 2 3 ]", "left open"),
        ("1 2", "follows"),
        ("[MAX 1 2 ] 3", "follows"),
        ("]", "closes no operator"),
        ("[MAX 1 12 ]", "unknown token '12'"),
        ("[FIRST 1 2 ]", "unknown token"),
        ("( [MAX 1 2 ]", "'(' left open"),
        ("[MAX 1 2 ] )", "closes no '('"),
    ],
)
def test_malformed_expressions_raise(text, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace("[", r"\[")):
        evaluate_expression(text)


def test_evaluator_rejects_non_strings():
    with pytest.raises(TypeError, match="text"):
        evaluate_expression(b"[MAX 1 2 ]")


@pytest.mark.skipif(not NANGIA_BOWMAN.is_file(), reason=f"real ListOps sample not found at {NANGIA_BOWMAN}")
def test_evaluator_agrees_with_every_nangia_bowman_label():
    with gzip.open(NANGIA_BOWMAN, "rt") as handle:
        rows = [line.rstrip("\n").split("\t") for line in handle]
    assert len(rows) == 10_000
    operators = set()
    for label, expression in rows:
        assert evaluate_expression(expression) == int(label), expression
        stripped = detokenize(tokenize(expression))
        assert evaluate_expression(stripped) == int(label)
        operators.update(token for token in stripped.split() if token.startswith("["))
    assert operators == set(OPERATORS)


# ---------------------------------------------------------------------------- vocabulary
def test_vocabulary_layout():
    assert VOCAB[PAD] == "<pad>" and VOCAB[CLS] == "<cls>"
    assert len(VOCAB) == len(set(VOCAB)) == 2 + 10 + 4 + 1
    assert set(VOCAB[2:]) == {str(digit) for digit in range(10)} | set(OPERATORS) | {"]"}


def test_tokenize_round_trip(tiny_splits):
    for tokens, _ in tiny_splits["val"]:
        assert torch.equal(tokenize(detokenize(tokens)), tokens)
    text = "[MAX 2 9 [MIN 4 7 ] 0 ]"
    tokens = tokenize(text)
    assert tokens.dtype == torch.long
    assert [VOCAB[index] for index in tokens.tolist()] == text.split()
    assert torch.equal(tokenize("( ( ( [MAX 2 ) 9 ) ] )"), tokenize("[MAX 2 9 ]"))
    assert detokenize(torch.cat([torch.tensor([CLS]), tokenize(text), torch.tensor([PAD, PAD])])) == text


def test_tokenizer_errors():
    with pytest.raises(ValueError, match="unknown token '\\[FOO'"):
        tokenize("[FOO 1 ]")
    with pytest.raises(TypeError, match="text"):
        tokenize(None)
    with pytest.raises(ValueError, match="tokens must lie in"):
        detokenize(torch.tensor([len(VOCAB)]))
    with pytest.raises(ValueError, match="shape"):
        detokenize(torch.zeros(2, 2, dtype=torch.long))
    with pytest.raises(TypeError, match="integer"):
        detokenize(torch.zeros(3))
