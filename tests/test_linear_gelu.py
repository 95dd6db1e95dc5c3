"""fc1 + GELU with the GELU in cuBLASLt's epilogue (kernels/linear_gelu.py) against its reference."""
import pytest
import torch

from stdit_engine.kernels.linear_gelu import linear_gelu_cublaslt, linear_gelu_ref
from test_kernels_triton import DTYPES, assert_close_to_reference


@pytest.mark.gpu
@pytest.mark.parametrize("tokens", [7, 16 * 256 * 4])
@pytest.mark.parametrize("dtype", DTYPES)
def test_epilogue_gelu_matches_reference(tokens, dtype):
    torch.manual_seed(0)
    x = torch.randn(2, tokens, 1152, device="cuda").to(dtype)
    weight = (torch.randn(4608, 1152, device="cuda") / 1152**0.5).to(dtype)
    bias = torch.randn(4608, device="cuda").to(dtype)
    # atol: the epilogue's tanh GELU sits ~6e-6 from PyTorch's in fp32.
    assert_close_to_reference(linear_gelu_cublaslt(x, weight, bias), linear_gelu_ref, (x, weight, bias), atol=1e-4)


def test_cpu_keeps_the_tanh_reference():
    # On the CPU the same ATen op would apply the erf GELU (~5e-4 away): the reference runs instead.
    torch.manual_seed(0)
    x, weight, bias = torch.randn(3, 5, 16), torch.randn(32, 16), torch.randn(32)
    assert torch.equal(linear_gelu_cublaslt(x, weight, bias), linear_gelu_ref(x, weight, bias))
