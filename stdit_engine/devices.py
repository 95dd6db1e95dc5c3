"""Which device and dtype a run uses when the caller leaves them open; shared by the engine and the
export command."""
from __future__ import annotations

import torch

from .errors import ConfigError, DeviceError


def resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not isinstance(device, (str, torch.device)):
        raise ConfigError(f"device must be a string such as 'cuda', 'cuda:1' or 'cpu', got {type(device).__name__} {device!r}")
    try:
        device = torch.device(device)
    except RuntimeError as err:  # an unknown device type or a malformed string
        raise DeviceError(f"unknown device {device!r}: pass 'cuda', 'cuda:N' or 'cpu'") from err
    if device.type not in ("cuda", "cpu"):
        raise DeviceError(f"device {str(device)!r} is not supported: pass 'cuda', 'cuda:N' or 'cpu'")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError("device 'cuda' was asked for but no CUDA GPU is visible; pass device='cpu' or check the driver")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise DeviceError(f"{device} does not exist: {torch.cuda.device_count()} GPU(s) are visible")
    return device


def default_dtype(device: torch.device) -> torch.dtype:
    """fp16 on GPUs, as the reference script; fp32 on the CPU, where half precision is slow."""
    return torch.float16 if device.type == "cuda" else torch.float32
