"""`Job`: one video request and what became of it, and its JSON form (the API's video object)."""
from __future__ import annotations

import secrets
from dataclasses import dataclass, field

from .schema import VideoRequest

QUEUED, IN_PROGRESS, COMPLETED, FAILED, CANCELLED = "queued", "in_progress", "completed", "failed", "cancelled"
FINISHED = (COMPLETED, FAILED, CANCELLED)

JOB_ID_PREFIX = "video_"


def new_job_id() -> str:
    """A server-made id: the only text that reaches a file name."""
    return JOB_ID_PREFIX + secrets.token_hex(16)


def is_job_id(text: str) -> bool:
    suffix = text.removeprefix(JOB_ID_PREFIX)
    return (text.startswith(JOB_ID_PREFIX) and len(suffix) == 32
            and all(c in "0123456789abcdef" for c in suffix))


@dataclass
class Job:
    """`seed` is the request's, or the one the service drew for it: `engine.generate([prompt],
    seed=seed, num_steps=..., cfg_scale=..., guidance_channels=...)` gives this job's video.
    `error` is {"code", "message"} when failed or cancelled; `stages` the engine's stage report
    (seconds and peak memory of encode / denoise / decode) of the call that made the video, which
    covers the whole batch the job shared (`batch_size` jobs). Times are Unix seconds."""

    id: str
    request: VideoRequest
    seed: int
    created_at: float
    status: str = QUEUED
    progress: int = 0
    started_at: float | None = None
    finished_at: float | None = None
    error: dict | None = None
    stages: list[dict] = field(default_factory=list)
    batch_size: int | None = None
    file: str | None = None  # the video's name in the output folder; None when none or expired
    expired: bool = False  # the video was removed under the retention limit

    @property
    def finished(self) -> bool:
        return self.status in FINISHED

    def to_json(self) -> dict:
        return {
            "id": self.id,
            "object": "video",
            "status": self.status,
            "progress": self.progress,
            "created_at": self.created_at,
            "started_at": self.started_at,
            "completed_at": self.finished_at,
            **self.request.model_dump(),
            "seed": self.seed,
            "error": self.error,
            "stages": self.stages,
            "batch_size": self.batch_size,
            "has_content": self.file is not None,
            "expired": self.expired,
        }

    @classmethod
    def from_json(cls, data: dict, file: str | None) -> "Job":
        """A stored job, as it was recorded: its request is not checked again, so the records of
        earlier limits (a larger seed, another prompt check) still load, and reading one costs no
        prompt cleaning; a field added since takes its default."""
        request = VideoRequest.model_construct(**{name: data[name] for name in VideoRequest.model_fields
                                                  if name in data})
        return cls(id=data["id"], request=request, seed=data["seed"], created_at=data["created_at"],
                   status=data["status"], progress=data["progress"], started_at=data["started_at"],
                   finished_at=data["completed_at"], error=data["error"], stages=data["stages"],
                   batch_size=data["batch_size"], file=file, expired=data["expired"])
