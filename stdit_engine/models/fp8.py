"""FP8 block linears: weights in e4m3 with one scale per output channel, activations quantized to
e4m3 per token at each call (kernels/fp8_quantize.py), the product by `torch._scaled_mm` (the scales
and bias applied in its epilogue, output in the activation dtype).

Why: replayed from CUDA graphs the bf16 forward is bound by its matmuls, and e4m3 halves their bytes
and energy; the speed-up and the distance from fp32 are in BENCHMARKS.md (FP8).

The matmuls use fast accumulation: Hopper's FP8 tensor cores keep partial sums in less than fp32,
and cuBLAS by default promotes them to fp32 every few K-steps. Without the promotion the matmuls
take less time, and at these depths (K = 1152 and 4608) the forward's distance from fp32 does not
change measurably: e4m3's own rounding dominates (BENCHMARKS.md).

`FP8Linear` replaces an `nn.Linear`, `FP8GeluMLP` the STDiT MLP, whose GELU moves from fc1's matmul
epilogue (which `_scaled_mm` lacks) into the quantization of fc2's input. The norms in front of the
spatial qkv and fc1 linears, and the residual sums read by the temporal qkv and the
cross-attention query, hand them their input already quantized (`QuantizedRows`, from the kernels'
`*_fp8` ops): the row is in registers there, so its scale costs nothing and the separate
quantization pass is saved.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..errors import ConfigError, DeviceError
from ..kernels.fp8_quantize import E4M3, quantize_rows_ref

FP8_MIN_CAPABILITY = (8, 9)  # Ada; Hopper and Blackwell after it
# _scaled_mm's operands need both matrix dimensions divisible by 16.
FP8_DIM_MULTIPLE = 16


@dataclass(frozen=True)
class QuantizedRows:
    """An activation already quantized for an FP8 linear: e4m3 `values` [..., K] with one fp32
    `scale` per row of K ([rows, 1]), and the `dtype` the activation had (the linear's output
    dtype). Reshapes that keep the last axis keep the rows, hence the scales."""
    values: torch.Tensor
    scale: torch.Tensor
    dtype: torch.dtype

    @property
    def shape(self) -> torch.Size:
        return self.values.shape

    def reshape(self, *shape) -> "QuantizedRows":
        values = self.values.reshape(*shape)
        if values.shape[-1] != self.values.shape[-1]:
            raise ValueError(f"a reshape of quantized rows must keep the last axis ({self.values.shape[-1]}); "
                             f"got {tuple(values.shape)}")
        # Built directly: dataclasses.replace costs microseconds of host time, and this runs in every block.
        return QuantizedRows(values, self.scale, self.dtype)

    view = reshape  # as tensors are regrouped (models/stdit.py LocalTokens); always a view here


def check_fp8_supported(device: torch.device | str, dtype: torch.dtype) -> None:
    """DeviceError unless `device` runs `_scaled_mm` on e4m3: NVIDIA compute capability 8.9 (Ada)
    or newer, or the CPU (slow; for tests). ConfigError unless the activations, `dtype`, are bf16
    or fp16 (the FP8 matmul's output types here)."""
    if dtype not in (torch.bfloat16, torch.float16):
        raise ConfigError(f"FP8 linears take bf16 or fp16 activations, not {dtype}: pass dtype=torch.bfloat16 "
                          "(--dtype bf16) or torch.float16")
    device = torch.device(device)
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        if (major, minor) < FP8_MIN_CAPABILITY:
            raise DeviceError(f"FP8 matmuls need an NVIDIA GPU of compute capability 8.9 or newer (Ada, Hopper, "
                              f"Blackwell); {torch.cuda.get_device_name(device)} is {major}.{minor}: leave fp8 off")
    elif device.type != "cpu":
        raise DeviceError(f"FP8 matmuls run on NVIDIA GPUs (and the CPU, for tests), not on {device}")


class FP8Linear(nn.Module):
    """`linear` with its weight in e4m3 (one fp32 scale per output channel, computed once) and its
    input quantized per token at every call by `self.quantize` (the backend's quantizer, bound by
    STDiT); `gelu_input` applies GELU-tanh to the input first.

    The e4m3 weight and its scales are kept as integer views: a model-wide `.to(dtype)` casts every
    floating-point tensor, which would turn them back into wide floats or round the scales."""

    def __init__(self, linear: nn.Linear, gelu_input: bool = False):
        super().__init__()
        out_features, in_features = linear.weight.shape
        if in_features % FP8_DIM_MULTIPLE or out_features % FP8_DIM_MULTIPLE:
            raise ConfigError(f"an FP8 linear needs both sizes divisible by {FP8_DIM_MULTIPLE}; "
                              f"this one is {in_features} -> {out_features}")
        weight, scale = quantize_rows_ref(linear.weight.detach())
        self.register_buffer("weight_bits", weight.view(torch.uint8))
        self.register_buffer("scale_bits", scale.t().contiguous().view(torch.int32))  # [1, N], as _scaled_mm takes it
        self.bias = linear.bias
        self.gelu_input = gelu_input
        self.quantize = quantize_rows_ref

    @property
    def in_features(self) -> int:
        return self.weight_bits.shape[1]

    @property
    def out_features(self) -> int:
        return self.weight_bits.shape[0]

    def dequantized_weight(self) -> torch.Tensor:
        """The weight the matmul uses, in fp32 [N, K]."""
        return self.weight_bits.view(E4M3).float() * self.scale_bits.view(torch.float32).t()

    def forward(self, x: torch.Tensor | QuantizedRows) -> torch.Tensor:
        """x [..., K], or already quantized by its producer (not for a `gelu_input` linear)."""
        if isinstance(x, QuantizedRows):
            if self.gelu_input:
                raise ValueError("this FP8 linear applies GELU to its input as it quantizes it: pass it the "
                                 "unquantized activation")
            x8, x_scale = x.values.reshape(-1, self.in_features), x.scale
        else:
            rows = x.reshape(-1, self.in_features)
            x8, x_scale = self.quantize(rows if rows.stride(-1) == 1 else rows.contiguous(), self.gelu_input)
        out = torch._scaled_mm(x8, self.weight_bits.view(E4M3).t(), scale_a=x_scale,
                               scale_b=self.scale_bits.view(torch.float32), bias=self.bias, out_dtype=x.dtype,
                               use_fast_accum=True)
        return out.view(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, gelu_input={self.gelu_input}"


class FP8GeluMLP(nn.Module):
    """fc2(gelu_tanh(fc1(x))) in FP8, from an STDiT `GeluMLP` (same child names, fc1 and fc2): fc1
    returns its pre-activation in the model dtype and fc2 applies the GELU as it quantizes it."""

    def __init__(self, mlp: nn.Module):
        super().__init__()
        self.fc1 = FP8Linear(mlp.fc1)
        self.fc2 = FP8Linear(mlp.fc2, gelu_input=True)

    def forward(self, x: torch.Tensor | QuantizedRows, ops=None) -> torch.Tensor:  # `ops`: GeluMLP's signature
        return self.fc2(self.fc1(x))
