"""Which device and dtype a run uses when the caller leaves them open; shared by the engine and the
export command."""
from __future__ import annotations

import torch

from .errors import DeviceError


def resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError("device 'cuda' was asked for but no CUDA GPU is visible; pass device='cpu' or check the driver")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise DeviceError(f"{device} does not exist: {torch.cuda.device_count()} GPU(s) are visible")
    return device


def default_dtype(device: torch.device) -> torch.dtype:
    """fp16 on GPUs, as the reference script; fp32 on the CPU, where half precision is slow."""
    return torch.float16 if device.type == "cuda" else torch.float32
