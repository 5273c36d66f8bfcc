"""Where the code runs (bench.env)."""

import warnings

import torch

from bench.env import enable_tf32


def test_tf32_is_set_through_the_current_api_without_a_warning():
    """Issue 32: the allow_tf32 flags warn on torch >= 2.9; the fp32_precision settings do not."""
    if not hasattr(torch.backends.cuda.matmul, "fp32_precision"):
        return  # torch < 2.9: the old flags are the only API (nothing to check that can differ)
    before = torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            enable_tf32()
        assert (torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision) == ("tf32", "tf32")
    finally:
        torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision = before
