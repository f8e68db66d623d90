"""Patterns by name: the registry builds exactly what the functions build, and parses CLI specs."""
import pytest
import torch

from graph_sparse_attn import patterns
from graph_sparse_attn.patterns import build_pattern, parse_pattern


def test_build_pattern_equals_the_named_function():
    batch = torch.tensor([0] * 7 + [1] * 5)
    assert torch.equal(build_pattern("longformer", 12, batch=batch, window=2, global_indices=[0]),
                       patterns.longformer(12, 2, [0], batch=batch))
    assert torch.equal(build_pattern("window", 12, window=3, dilation=2), patterns.sliding_window(12, 3, dilation=2))


def test_parse_pattern_reads_typed_values():
    assert parse_pattern("bigbird:window=32,global_indices=0+5,num_random=4") == (
        "bigbird", {"window": 32, "global_indices": [0, 5], "num_random": 4})
    assert parse_pattern("longformer:window=8,global_indices=0") == ("longformer", {"window": 8, "global_indices": [0]})
    assert parse_pattern("window:window=4,causal=true") == ("window", {"window": 4, "causal": True})
    assert parse_pattern("log_sparse") == ("log_sparse", {})
    assert parse_pattern("sliding_window:window=8") == ("window", {"window": 8})  # the builder's Python name
    assert parse_pattern(" window : window = 2 ") == ("window", {"window": 2})  # spaces around the name too


@pytest.mark.parametrize("spec,match", [("spiral", "unknown pattern"), ("window:width=3", "takes no parameter"),
                                        ("window:window", "key=value"), ("window:window=abc", "cannot read")])
def test_bad_specs_are_refused(spec, match):
    with pytest.raises(ValueError, match=match):
        parse_pattern(spec)


def test_unreadable_values_name_their_key_and_non_strings_are_type_errors():
    with pytest.raises(ValueError, match="pattern parameter 'window' of 'window:window=abc': cannot read"):
        parse_pattern("window:window=abc")
    for spec in (None, 5):
        with pytest.raises(TypeError, match="pattern spec must be a string"):
            parse_pattern(spec)


def test_build_pattern_refuses_unknown_names_and_parameters():
    with pytest.raises(ValueError, match="unknown pattern"):
        build_pattern("spiral", 4)
    with pytest.raises(ValueError, match="takes no parameter"):
        build_pattern("window", 4, width=2)


@pytest.mark.parametrize("name,params,error,match", [
    ("window", {}, ValueError, r"needs parameter\(s\) \['window'\]"),
    ("bigbird", {"window": 3}, ValueError, r"needs parameter\(s\) \['global_indices', 'num_random'\]"),
    ("window", {"window": 2, "num_nodes": 5}, ValueError, "takes no parameter"),  # the caller's, never the spec's
    ("random", {"num_random": 2, "generator": 3}, ValueError, "takes no parameter"),
    ("window", {"window": -1}, ValueError, "pattern 'window': window must be >= 0"),
    ("window", {"window": 1.5}, TypeError, "pattern 'window': window must be an int"),
    ("longformer", {"window": 2, "global_indices": [-1]}, ValueError, "pattern 'longformer'"),
])
def test_check_pattern_refuses_specs_before_any_data(name, params, error, match):
    with pytest.raises(error, match=match):
        patterns.check_pattern(name, params)


def test_check_pattern_leaves_the_global_rng_alone():
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    patterns.check_pattern("bigbird", {"window": 2, "global_indices": [0], "num_random": 3})
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.parametrize("spec,match", [("window", "needs parameter"), ("window:window=-2", "must be >= 0"),
                                        ("window:window=true", "must be an int, got bool"),
                                        ("longformer:window=2,global_indices=a+b", "lists hold integers"),
                                        ("window:window=1,window=64", "given twice"),
                                        ("window:window=99999999999999999999", "window must be < 2\\*\\*63"),
                                        ("window:window=1,causal=0.5", "causal must be a bool"),
                                        ("window:window=1,causal=2", "causal must be a bool")])
def test_parse_pattern_refuses_bad_values_as_value_errors(spec, match):
    with pytest.raises(ValueError, match=match):
        parse_pattern(spec)
