import math

import pytest
import torch

from graph_sparse_attn.nn import Dropout, dropout


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_drop_rate_matches_p_in_every_lane_of_the_random_words(p):
    # Elements i, i+4, i+8, ... share a lane of the 64-bit draws; a biased lane (e.g. the sign bit of
    # a non-negative draw) would drop at the wrong rate in one of the four.
    torch.manual_seed(0)
    x = torch.ones(4 * 250_000)
    dropped = dropout(x, p) == 0
    sigma = math.sqrt(p * (1 - p) / 250_000)
    for lane in range(4):
        assert abs(dropped[lane::4].float().mean().item() - p) < 5 * sigma


@pytest.mark.parametrize("p", [0.1, 0.3])
def test_kept_elements_are_scaled_so_the_expectation_is_unchanged(p):
    torch.manual_seed(1)
    x = torch.randn(300, 70, dtype=torch.float64)
    y = dropout(x, p)
    kept = y != 0
    threshold = round(p * 2**16)
    torch.testing.assert_close(y[kept], x[kept] * 2**16 / (2**16 - threshold), rtol=1e-15, atol=0)
    assert abs(2**16 / (2**16 - threshold) - 1 / (1 - p)) < 1e-4


def test_p_that_rounds_to_one_is_torch_dropout_so_the_rounding_bound_holds():
    # p = 0.999999 rounded to a multiple of 2^-16 is 1: clamping it to 1 - 2^-16 kept 15x too many.
    torch.manual_seed(2)
    p = 0.999999
    kept = (dropout(torch.ones(2_000_000, dtype=torch.float64), p) != 0).double().mean().item()
    assert kept < 1e-5  # expected 1e-6 (2 of 2M); the clamp kept about 1.5e-5


def test_gradient_flows_through_the_same_mask_and_scale():
    torch.manual_seed(2)
    x = torch.randn(64, 33, dtype=torch.float64, requires_grad=True)
    y = dropout(x, 0.25)
    grad = torch.randn_like(y)
    y.backward(grad)
    torch.testing.assert_close(x.grad, grad * y.detach() / x.detach())


def test_reproducible_from_the_global_seed_and_fresh_on_each_call():
    x = torch.ones(1000)
    torch.manual_seed(3)
    first, second = dropout(x, 0.5), dropout(x, 0.5)
    torch.manual_seed(3)
    assert torch.equal(dropout(x, 0.5), first)
    assert not torch.equal(first, second)


def test_identity_when_not_training_or_p_zero_and_zeros_at_p_one():
    x = torch.randn(5, 6)
    assert dropout(x, 0.5, training=False) is x
    assert dropout(x, 0.0) is x
    assert torch.equal(dropout(x, 1.0), torch.zeros_like(x))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_keeps_shape_and_dtype_of_non_contiguous_input(dtype):
    x = torch.randn(8, 6, 5, dtype=dtype).transpose(0, 2)
    y = dropout(x, 0.5)
    assert y.shape == x.shape and y.dtype == dtype
    kept = y != 0
    assert torch.equal(y[kept], x[kept] * 2)


def test_low_precision_rounds_once_like_torch_dropout():
    torch.manual_seed(4)
    x = torch.randn(5000, dtype=torch.bfloat16)
    y = dropout(x, 0.1)
    kept = y != 0
    assert torch.equal(y[kept], (x[kept].float() * (2**16 / (2**16 - round(0.1 * 2**16)))).bfloat16())


def test_module_follows_train_and_eval():
    module = Dropout(0.5)
    x = torch.ones(1000)
    assert (module(x) == 0).any()
    module.eval()
    assert module(x) is x
    assert "p=0.5" in repr(module)


@pytest.mark.parametrize("p", [-0.1, 1.5])
def test_probability_outside_unit_interval_is_refused(p):
    with pytest.raises(ValueError, match="dropout probability p"):
        dropout(torch.ones(3), p)
    with pytest.raises(ValueError, match="dropout probability p"):
        Dropout(p)


def test_the_module_is_a_torch_dropout_and_refuses_non_numbers():
    assert isinstance(Dropout(0.1), torch.nn.Dropout)  # found by code that looks dropout layers up by type
    for p in (True, "0.1"):
        with pytest.raises(TypeError, match="dropout probability p must be a float"):
            Dropout(p)


def test_inplace_writes_into_the_input_as_torch_dropout():
    x = torch.randn(64, 8)
    torch.manual_seed(1)
    expected = Dropout(0.3)(x.clone())
    torch.manual_seed(1)
    y = x.clone()
    out = Dropout(0.3, inplace=True)(y)
    assert out is y and torch.equal(y, expected)
    leaf = torch.randn(40, 3, requires_grad=True)
    Dropout(0.5, inplace=True)(leaf * 1.0).sum().backward()  # in-place on a non-leaf, as torch allows
    assert set(leaf.grad.unique().tolist()) == {0.0, 2.0}  # the mask and scale reach the gradient
