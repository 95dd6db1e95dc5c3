"""stdit-engine: fast, memory-lean inference for Open-Sora v1.0 text-to-video."""
import importlib

from .configs import PRESETS, Preset, get_preset
from .engine.cancel import CancelToken  # no torch import: stays eager
from .errors import (Cancelled, CheckpointError, ConfigError, DeviceError, EngineError, PromptErasedWarning,
                     PromptTruncatedWarning, SamplingError)

__version__ = "0.1.0"

# Imported on first use: they import torch, which `stdit-engine --help` and argument errors must not.
_LAZY = {"Engine": ".engine.api", "Video": ".engine.video"}

__all__ = [
    "Engine", "Video", "PRESETS", "Preset", "get_preset", "CancelToken",
    "EngineError", "ConfigError", "CheckpointError", "DeviceError", "SamplingError", "PromptTruncatedWarning",
    "PromptErasedWarning", "Cancelled",
]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
