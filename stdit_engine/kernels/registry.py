"""Resolves a kernel backend once, when a model is built; call sites only ever see an `Ops`.

Each op lives in its own file (ln_modulate.py, gated_residual.py, self_attention.py,
temporal_attention.py, cross_attention.py, linear_gelu.py, fp8_quantize.py) with its reference,
its fast implementations and their kernels. Backends:
  eager   the plain-PyTorch reference of every op (parity tests and exports use it)
  sdpa    eager, with attention through torch's fused scaled_dot_product_attention
  triton  our Triton kernels for the modulated LayerNorm, the gated residual (fused with the norm
          that follows it where one does), the temporal and the caption cross-attention, cuDNN's
          fused attention within frames (faster there than a Triton flash kernel: BENCHMARKS.md),
          GELU in the fc1 matmul's epilogue (cuBLASLt), the FP8 linears' per-token quantization in
          one pass (in the norm's or residual's pass where one feeds the linear); on CUDA, or on
          the CPU under TRITON_INTERPRET=1 (tests)
  auto    triton on CUDA (the fastest there: BENCHMARKS.md), eager elsewhere
"""
from __future__ import annotations

import os
from dataclasses import dataclass, replace
from typing import Callable

import torch

from ..errors import ConfigError
from .cross_attention import cross_attention_direct, cross_attention_ref, cross_attention_sdpa, cross_attention_triton
from .eager_dispatch import direct_in_eager
from .fp8_quantize import quantize_rows_fp8_direct, quantize_rows_fp8_triton, quantize_rows_ref
from .gated_residual import (gated_residual_direct, gated_residual_fp8_direct, gated_residual_fp8_ref,
                             gated_residual_fp8_triton, gated_residual_ln_modulate_direct,
                             gated_residual_ln_modulate_fp8_direct, gated_residual_ln_modulate_fp8_ref,
                             gated_residual_ln_modulate_fp8_triton, gated_residual_ln_modulate_ref,
                             gated_residual_ln_modulate_triton, gated_residual_ref, gated_residual_triton)
from .linear_gelu import linear_gelu_cublaslt, linear_gelu_ref
from .ln_modulate import (ln_modulate_direct, ln_modulate_fp8_direct, ln_modulate_fp8_ref, ln_modulate_fp8_triton,
                          ln_modulate_ref, ln_modulate_triton)
from .self_attention import self_attention_cudnn, self_attention_ref, self_attention_sdpa
from .temporal_attention import (temporal_attention_direct, temporal_attention_ref, temporal_attention_sdpa,
                                 temporal_attention_triton)
from .triton_support import HAVE_TRITON


@dataclass(frozen=True)
class Ops:
    name: str
    ln_modulate: Callable[..., torch.Tensor]
    gated_residual: Callable[..., torch.Tensor]
    # (x + gate * y, or x + y if gate is None, then its modulated norm): the residual and the norm after it
    gated_residual_ln_modulate: Callable[..., tuple[torch.Tensor, torch.Tensor]]
    linear_gelu: Callable[..., torch.Tensor]  # gelu_tanh(x @ W^T + b)
    self_attention: Callable[..., torch.Tensor]  # spatial: within each frame
    temporal_attention: Callable[..., torch.Tensor]  # within each spatial position, over frames (temporal_attention.py)
    cross_attention: Callable[..., torch.Tensor]  # over each sample's caption tokens (cross_attention.py)
    quantize_rows_fp8: Callable[..., tuple[torch.Tensor, torch.Tensor]]  # the input of an FP8 linear (fp8_quantize.py)
    # The norms and the residual above with their output quantized for an FP8 linear (e4m3, row
    # scales): ln_modulate.py, gated_residual.py
    ln_modulate_fp8: Callable[..., tuple[torch.Tensor, torch.Tensor]]
    gated_residual_ln_modulate_fp8: Callable[..., tuple[torch.Tensor, torch.Tensor, torch.Tensor]]
    gated_residual_fp8: Callable[..., tuple[torch.Tensor, torch.Tensor, torch.Tensor]]


EAGER = Ops(
    name="eager",
    ln_modulate=ln_modulate_ref,
    gated_residual=gated_residual_ref,
    gated_residual_ln_modulate=gated_residual_ln_modulate_ref,
    linear_gelu=linear_gelu_ref,
    self_attention=self_attention_ref,
    temporal_attention=temporal_attention_ref,
    cross_attention=cross_attention_ref,
    quantize_rows_fp8=quantize_rows_ref,
    ln_modulate_fp8=ln_modulate_fp8_ref,
    gated_residual_ln_modulate_fp8=gated_residual_ln_modulate_fp8_ref,
    gated_residual_fp8=gated_residual_fp8_ref,
)
SDPA = replace(EAGER, name="sdpa", self_attention=self_attention_sdpa, temporal_attention=temporal_attention_sdpa,
               cross_attention=cross_attention_sdpa)


# Our kernels as eager_dispatch.py calls them: their launchers directly in plain eager inference,
# their custom ops wherever torch.compile, export or a dispatch mode must see them.
TRITON = replace(SDPA, name="triton", self_attention=self_attention_cudnn, linear_gelu=linear_gelu_cublaslt,
                 ln_modulate=direct_in_eager(ln_modulate_triton, ln_modulate_direct),
                 gated_residual=direct_in_eager(gated_residual_triton, gated_residual_direct),
                 gated_residual_ln_modulate=direct_in_eager(gated_residual_ln_modulate_triton,
                                                            gated_residual_ln_modulate_direct),
                 temporal_attention=direct_in_eager(temporal_attention_triton, temporal_attention_direct),
                 cross_attention=direct_in_eager(cross_attention_triton, cross_attention_direct),
                 quantize_rows_fp8=direct_in_eager(quantize_rows_fp8_triton, quantize_rows_fp8_direct),
                 ln_modulate_fp8=direct_in_eager(ln_modulate_fp8_triton, ln_modulate_fp8_direct),
                 gated_residual_ln_modulate_fp8=direct_in_eager(gated_residual_ln_modulate_fp8_triton,
                                                                gated_residual_ln_modulate_fp8_direct),
                 gated_residual_fp8=direct_in_eager(gated_residual_fp8_triton, gated_residual_fp8_direct))


def _triton_ops() -> Ops:
    if not HAVE_TRITON:
        raise ConfigError("kernel backend 'triton' needs the triton package (pip install triton, on Linux); "
                          "use backend='sdpa'")
    return TRITON


BACKENDS: dict[str, Callable[[], Ops]] = {"eager": lambda: EAGER, "sdpa": lambda: SDPA, "triton": _triton_ops}


def backend_name(backend: str, device: torch.device | str | None = None) -> str:
    """`backend` with "auto" replaced by the fastest backend known to be correct on `device`."""
    if backend == "auto":
        return "triton" if torch.device(device or "cpu").type == "cuda" else "eager"
    return backend


def resolve_backend(backend: str, device: torch.device | str | None = None) -> Ops:
    """The ops of `backend` ("auto": see backend_name)."""
    backend = backend_name(backend, device)
    if backend not in BACKENDS:
        raise ConfigError(f"unknown kernel backend {backend!r}; choose one of: auto, {', '.join(BACKENDS)}")
    if backend == "triton" and device is not None and torch.device(device).type != "cuda" \
            and os.environ.get("TRITON_INTERPRET") != "1":
        raise ConfigError("kernel backend 'triton' runs on CUDA GPUs (or on the CPU with TRITON_INTERPRET=1, "
                          "slowly); use backend='eager' on the CPU")
    return BACKENDS[backend]()
