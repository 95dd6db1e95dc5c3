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


class PromptErasedWarning(UserWarning):
    """A prompt had no words left once cleaned (models/caption.py): its video follows no text, as
    the reference's would."""


class Cancelled(EngineError):
    """A call stopped because its CancelToken was cancelled; the engine stays usable."""


class ServingError(EngineError):
    """A request the video service cannot take or answer as asked (serving/)."""


class InvalidRequest(ServingError, ConfigError):
    """A video request the service refuses: `param` names the first field at fault, the message
    every problem (HTTP 422)."""

    def __init__(self, message: str, param: str):
        super().__init__(message)
        self.param = param


class QueueFull(ServingError):
    """The service's queue holds its maximum of waiting jobs: retry after `retry_after` seconds."""

    def __init__(self, message: str, retry_after: int):
        super().__init__(message)
        self.retry_after = retry_after


class UnknownJob(ServingError, KeyError):
    """No job has this id (never made, or removed under the retention limit)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class JobNotReady(ServingError):
    """The job has no video (yet): it is queued, running, failed or cancelled."""


class ServiceStopped(ServingError, RuntimeError):
    """The service is shutting down or stopped and takes no new jobs."""


class StoreUnavailable(ServingError, RuntimeError):
    """The job store refused to record a new job (disk full, database locked): nothing was queued;
    retry later."""


class ReplicaFailed(ServingError, RuntimeError):
    """A Ray Serve engine replica died or could not be reached while it ran a batch."""
