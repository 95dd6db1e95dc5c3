"""The one request schema of the serving layer: what a video request may hold, the limits the
server enforces, and the JSON error body every refusal carries.

The HTTP app (http.py), the Python API (`VideoService.submit`) and any stack mounted on them
validate through `VideoRequest`, so a limit is changed here and nowhere else.

Error bodies are `{"error": {"type": ..., "code": ..., "message": ..., "param": FIELD | null}}`;
`param` names the request field at fault (422), so a client can point at it.
"""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from ..engine.arguments import USUAL_CFG_SCALE
from ..engine.seeds import MAX_SEED
from ..errors import ConfigError, InvalidRequest
from ..models.caption import REMOVED_TEXT, clean_prompt
from ..schedulers import make_sampler

# A request is a prompt and a few numbers: anything bigger is not a request.
MAX_BODY_BYTES = 16 * 1024
MAX_PROMPT_CHARS = 2000  # T5 reads 120 tokens; this only keeps abuse out of the job store
MAX_STEPS = 1000  # the IDDPM schedule's length
# Past it the guidance term overflows a half-precision latent: a job sure to fail is refused, not run.
MAX_CFG_SCALE = USUAL_CFG_SCALE


class VideoRequest(BaseModel):
    """One video: `engine.generate([prompt], seed=seed, num_steps=..., cfg_scale=..., sampler=...,
    guidance_channels=...)` with the job's seed reproduces it (service.py says how exactly)."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    prompt: str = Field(min_length=1, max_length=MAX_PROMPT_CHARS)
    seed: int | None = Field(default=None, ge=0, le=MAX_SEED)
    sampler: str = Field(default="iddpm", max_length=64)  # before num_steps, whose check reads it
    num_steps: int = Field(default=100, ge=1, le=MAX_STEPS)
    cfg_scale: float = Field(default=7.0, ge=0, le=MAX_CFG_SCALE, allow_inf_nan=False)
    guidance_channels: Literal[3, 4] | None = None  # None: the sampler's convention

    @field_validator("prompt")
    @classmethod
    def _not_blank(cls, prompt: str) -> str:
        if not prompt.strip():
            raise ValueError("the prompt is blank: describe the video to generate")
        if not clean_prompt(prompt):  # what T5 would read: the video would have no text to follow
            raise ValueError(f"the prompt has no words left once cleaned as T5's captions were ({REMOVED_TEXT}): "
                             "describe the video in words")
        return prompt

    @field_validator("sampler")
    @classmethod
    def _known_sampler(cls, sampler: str) -> str:
        _check_sampler(sampler)
        return sampler

    @field_validator("num_steps")
    @classmethod
    def _steps_the_sampler_takes(cls, num_steps: int, info: ValidationInfo) -> int:
        if "sampler" in info.data:  # else the sampler's own error is reported
            _check_sampler(info.data["sampler"], num_steps=num_steps)
        return num_steps

    def batch_key(self) -> tuple:
        """Requests with equal keys can share one guidance batch: everything but prompt and seed."""
        return tuple(value for name, value in self if name not in ("prompt", "seed"))


def _check_sampler(name: str, **settings) -> None:
    """The engine's own check of a sampler and its settings, as a field error."""
    try:
        make_sampler(name, **settings)
    except ConfigError as err:  # its message says what is valid
        raise ValueError(str(err)) from None


def error_body(code: str, message: str, *, param: str | None = None,
               type: str = "invalid_request_error") -> dict:
    return {"error": {"type": type, "code": code, "message": message, "param": param}}


def describe_errors(errors: list[dict]) -> tuple[str, str]:
    """(every problem in one message, the first bad field) from pydantic's errors."""
    def field(error: dict) -> str:
        location = [str(part) for part in error.get("loc", ()) if part != "body"]
        return ".".join(location) or "body"

    message = "; ".join(f"{field(e)}: {e.get('msg', 'invalid')}" for e in errors) or "invalid request"
    if errors and field(errors[0]) == "body":  # not an object of fields at all
        message += " (send a JSON object, with Content-Type: application/json)"
    return message, field(errors[0]) if errors else "body"


def validation_error_body(errors: list[dict]) -> dict:
    """The body of a 422 from pydantic's errors: the first bad field named in `param`, every problem
    listed in the message."""
    message, param = describe_errors(errors)
    return error_body("invalid_field", message, param=param)


def parse_request(data: dict | VideoRequest) -> VideoRequest:
    """A VideoRequest from a dict; InvalidRequest (a ConfigError) naming the fields at fault."""
    if isinstance(data, VideoRequest):
        return data
    try:
        return VideoRequest.model_validate(data)
    except ValidationError as err:
        raise InvalidRequest(*describe_errors(err.errors())) from None


__all__ = ["VideoRequest", "parse_request", "error_body", "validation_error_body",
           "MAX_BODY_BYTES", "MAX_CFG_SCALE", "MAX_SEED", "MAX_STEPS"]
