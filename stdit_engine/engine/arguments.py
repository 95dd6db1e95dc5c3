"""Checks of the arguments of `Engine.generate()` and `Engine.from_*`: a bad value gets a
ConfigError that names it and says what is accepted, before any work is done.

Torch-free, so that the command line can run the same checks before it loads anything.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

from ..errors import ConfigError
from ..values import is_integer, is_number

SEED_LIMIT = 2**64  # torch generators take seeds 0 .. 2**64-1 (negative ones wrap around silently)
OUTPUTS = ("video", "latent")
# Guidance scales the engine can still describe when the latent overflows (see explain_nonfinite).
USUAL_CFG_SCALE = 100.0


def check_prompts(prompts) -> list[str]:
    """A string or a non-empty sequence of strings -> a list of strings."""
    if isinstance(prompts, str):
        return [prompts]
    if not isinstance(prompts, Sequence):
        raise ConfigError(f"prompts must be a string or a list of strings, got {type(prompts).__name__} {prompts!r}")
    prompts = list(prompts)
    if not prompts:
        raise ConfigError("no prompts given: pass at least one prompt (a list of strings)")
    bad = [p for p in prompts if not isinstance(p, str)]
    if bad:
        raise ConfigError(f"prompts must be strings, got {type(bad[0]).__name__}: {bad[0]!r}")
    for i, prompt in enumerate(prompts):
        try:
            prompt.encode("utf-8")
        except UnicodeEncodeError as err:  # a lone surrogate, e.g. from bytes decoded with surrogateescape
            raise ConfigError(f"prompt #{i} is not valid Unicode text ({err.reason} at character {err.start}): "
                              f"{prompt[:80]!r}") from None
    return prompts


def check_seed(seed, name: str = "seed") -> int:
    """An integer in 0 .. 2**64-1 (not a bool, a float or a string)."""
    if not is_integer(seed):
        raise ConfigError(f"{name} must be an integer from 0 to 2**64-1, got {type(seed).__name__} {seed!r}")
    if not 0 <= seed < SEED_LIMIT:
        raise ConfigError(f"{name} must be from 0 to 2**64-1 (what a torch generator takes), got {seed}")
    return int(seed)


def check_seeds(seed, count: int) -> int | list[int] | None:
    """None, one seed for the call, or a list of one seed per prompt (`count` prompts)."""
    if seed is None:
        return None
    if isinstance(seed, Sequence) and not isinstance(seed, str):
        if len(seed) != count:
            raise ConfigError(f"{len(seed)} seeds for {count} prompts: pass one seed per prompt, or a single seed")
        return [check_seed(s, f"seed[{i}]") for i, s in enumerate(seed)]
    return check_seed(seed)


def check_count(value, name: str) -> int | None:
    """None (the default) or an integer >= 1."""
    if value is None:
        return None
    if not is_integer(value) or value < 1:
        raise ConfigError(f"{name} must be an integer >= 1 or None for the default, got {value!r}")
    return int(value)


def check_cfg_scale(cfg_scale) -> float:
    if not is_number(cfg_scale):
        raise ConfigError(f"cfg_scale must be a number, got {type(cfg_scale).__name__} {cfg_scale!r} "
                          "(the reference uses 7.0)")
    if not math.isfinite(cfg_scale):
        raise ConfigError(f"cfg_scale must be a finite number, got {cfg_scale!r} (the reference uses 7.0)")
    return float(cfg_scale)


@dataclass(frozen=True)
class GenerateArguments:
    prompts: list[str]
    seed: int | list[int] | None
    cfg_scale: float
    output: str
    batch_size: int | None  # None: the preset's
    vae_chunk_frames: int | None  # None: chosen from free memory


def check_generate_arguments(prompts, *, seed=None, cfg_scale=7.0, output="video", batch_size=None,
                             vae_chunk_frames=None, stats=None) -> GenerateArguments:
    """The arguments of `Engine.generate()`, checked and normalised (prompts as a list). `num_steps`
    and `guidance_channels` are the sampler's to check (each sampler has its own range)."""
    prompts = check_prompts(prompts)
    if output not in OUTPUTS:
        raise ConfigError(f"output must be 'video' or 'latent', got {output!r}")
    if stats is not None and not isinstance(stats, list):  # found only once the call's work is done
        raise ConfigError(f"stats must be a list (the call's stage reports are appended to it) or None, "
                          f"got {type(stats).__name__} {stats!r}")
    return GenerateArguments(
        prompts=prompts, seed=check_seeds(seed, len(prompts)), cfg_scale=check_cfg_scale(cfg_scale), output=output,
        batch_size=check_count(batch_size, "batch_size"),
        vae_chunk_frames=check_count(vae_chunk_frames, "vae_chunk_frames"),
    )


def explain_nonfinite(model_dtype: str, cfg_scale: float) -> str:
    """The likely cause of a latent that went NaN/inf, from what the call actually ran with."""
    if abs(cfg_scale) > USUAL_CFG_SCALE:
        return (f"cfg_scale={cfg_scale:g} multiplies the guidance term past what {model_dtype} holds; "
                "use a scale of about 1 to 20 (the reference uses 7.0)")
    if model_dtype == "float16":
        return "the model overflowed float16: pass dtype=torch.bfloat16 (or torch.float32)"
    return (f"with cfg_scale={cfg_scale:g} in {model_dtype} this points at the weights: check that the "
            "checkpoint is an intact Open-Sora v1.0 STDiT of this preset")
