"""stdit-engine: fast, memory-lean inference for Open-Sora v1.0 text-to-video."""
from .configs import PRESETS, Preset, get_preset
from .engine.api import Engine
from .engine.video import Video
from .errors import CheckpointError, ConfigError, DeviceError, EngineError, SamplingError

__version__ = "0.1.0"

__all__ = [
    "Engine", "Video", "PRESETS", "Preset", "get_preset",
    "EngineError", "ConfigError", "CheckpointError", "DeviceError", "SamplingError",
]
