"""Resolves a kernel backend once, when a model is built; call sites only ever see an `Ops`.

Backends:
  eager  the plain-PyTorch reference of every op (parity tests and exports use it)
  sdpa   eager, with attention through torch's fused scaled_dot_product_attention
  auto   sdpa on CUDA, eager elsewhere
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable

import torch

from ..errors import ConfigError
from .attention import cross_attention_ref, cross_attention_sdpa, self_attention_ref, self_attention_sdpa
from .gated_residual import gated_residual_ref
from .gelu import gelu_tanh_ref
from .ln_modulate import ln_modulate_ref


@dataclass(frozen=True)
class Ops:
    name: str
    ln_modulate: Callable[..., torch.Tensor]
    gated_residual: Callable[..., torch.Tensor]
    gelu_tanh: Callable[..., torch.Tensor]
    self_attention: Callable[..., torch.Tensor]
    cross_attention: Callable[..., torch.Tensor]


EAGER = Ops(
    name="eager",
    ln_modulate=ln_modulate_ref,
    gated_residual=gated_residual_ref,
    gelu_tanh=gelu_tanh_ref,
    self_attention=self_attention_ref,
    cross_attention=cross_attention_ref,
)

BACKENDS: dict[str, Ops] = {
    "eager": EAGER,
    "sdpa": replace(EAGER, name="sdpa", self_attention=self_attention_sdpa, cross_attention=cross_attention_sdpa),
}


def resolve_backend(backend: str, device: torch.device | str | None = None) -> Ops:
    """The ops of `backend`; "auto" picks the fastest backend known to be correct on `device`."""
    if backend == "auto":
        backend = "sdpa" if torch.device(device or "cpu").type == "cuda" else "eager"
    try:
        return BACKENDS[backend]
    except KeyError:
        raise ConfigError(
            f"unknown kernel backend {backend!r}; choose one of: auto, {', '.join(BACKENDS)}"
        ) from None
