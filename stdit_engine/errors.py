"""Typed errors. Each message says what went wrong and what to do about it."""


class EngineError(Exception):
    """Base class of every error raised on purpose by stdit-engine."""


class ConfigError(EngineError, ValueError):
    """A bad preset, argument or option value."""


class CheckpointError(EngineError):
    """A weights file or model folder that cannot be used as asked."""


class DeviceError(EngineError, RuntimeError):
    """A device that is asked for but not available."""


class SamplingError(EngineError, RuntimeError):
    """The sampler produced something unusable (e.g. NaN in the latent)."""


class PromptTruncatedWarning(UserWarning):
    """A prompt longer than the text encoder reads (120 tokens) was cut, as the reference cuts it."""


class Cancelled(EngineError):
    """A call stopped because its CancelToken was cancelled; the engine stays usable."""
