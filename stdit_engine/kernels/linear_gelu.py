"""Linear then GELU (tanh approximation): the first layer of STDiT's MLPs and caption projection.

`linear_gelu_ref` is the meaning: the linear's output rounded to the model dtype, then GELU.
`linear_gelu_cublaslt` applies the GELU in cuBLASLt's epilogue, on the fp32 accumulator before
the one rounding: one pass over the [tokens, 4C] activation less (BENCHMARKS.md). Its GELU is the
tanh form on CUDA (tests/test_linear_gelu.py); the CPU build of the same op applies the erf form,
so the CPU keeps the reference.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def linear_gelu_ref(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    return F.gelu(F.linear(x, weight, bias), approximate="tanh")


def linear_gelu_cublaslt(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    if not x.is_cuda:
        return linear_gelu_ref(x, weight, bias)
    out = torch._addmm_activation(bias, x.reshape(-1, x.shape[-1]), weight.t(), use_gelu=True)
    return out.view(*x.shape[:-1], weight.shape[0])
