"""Which placement (engine/placement.py) a new engine uses, chosen before anything is loaded, and
the one line that says why (printed with each call's stage report)."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..configs import Preset
from ..errors import ConfigError
from .memory import GIB, LEAN_RESERVED_BYTES, RESERVE_FACTOR, decode_chunk, estimate_memory, step_cache_bytes
from .placement import AUTO_ORDER, MODES


@dataclass(frozen=True)
class PlacementChoice:
    mode: str
    reason: str  # one line


def choose_placement(mode: str, preset: Preset, device: torch.device, dtype: torch.dtype,
                     t5_dtype: torch.dtype, backend: str = "auto", fp8: bool = False,
                     step_cache: str | None = None) -> PlacementChoice:
    """The placement to use; "auto" is the first of placement.AUTO_ORDER whose estimated peak
    (allocated, for the preset's prompts per batch, with the buffers of the step cache the calls
    will use) times RESERVE_FACTOR fits in free GPU memory.

    Raises before anything is loaded when even the leanest mode cannot fit.
    """
    if mode not in ("auto", *MODES):
        raise ConfigError(f"unknown placement {mode!r}; choose one of: auto, {', '.join(MODES)}")
    if device.type != "cuda":
        if mode not in ("auto", "resident"):
            raise ConfigError(f"placement {mode!r} moves weights between host and GPU; on {device} use 'resident'")
        return PlacementChoice("resident", f"the only placement on {device.type}")
    free, _ = torch.cuda.mem_get_info(device)
    candidates = AUTO_ORDER if mode == "auto" else (mode,)
    samples = preset.prompts_per_batch
    passed = []
    for candidate in candidates:
        chunk = decode_chunk(preset, samples, candidate, dtype, t5_dtype, free, device, backend, fp8, step_cache)
        estimate = estimate_memory(preset, samples, candidate, dtype, t5_dtype, vae_chunk_frames=chunk,
                                   device=device, backend=backend, fp8=fp8, cache=step_cache)
        needs = _reserved_need(estimate.peak)
        if needs <= free:
            how = "auto, the first of " + ", ".join(AUTO_ORDER) + " that fits" if mode == "auto" else "as asked"
            # The lean decode takes what its budget leaves: its reserved peak is that budget's, above `needs`;
            # a step cache's buffers stay with the graph beside it, outside that bound.
            decode = (f"; its decode is sized to stay within {LEAN_RESERVED_BYTES / GIB:.0f} GiB reserved"
                      if candidate == "lean" and step_cache is None else "")
            skipped = "".join(f"; {name}'s is {gib:.1f} GiB, more than is free" for name, gib in passed)
            cache = _with_cache(preset, samples, dtype, step_cache)
            return PlacementChoice(candidate, f"{how}: its estimated peak of {estimate.peak / GIB:.1f} GiB allocated "
                                              f"at {samples} prompt(s){cache}, x{RESERVE_FACTOR} for the allocator's "
                                              f"cache = {needs / GIB:.1f} GiB, is within the {free / GIB:.1f} GiB free"
                                              f"{decode}{skipped}")
        passed.append((candidate, needs / GIB))
    raise ConfigError(
        f"{preset.name} needs about {needs / GIB:.1f} GiB of GPU memory in placement "
        f"{candidates[-1]!r}{_with_cache(preset, samples, dtype, step_cache)} ({estimate.describe()}), but "
        f"{device} has {free / GIB:.1f} GiB free; free GPU memory, pass dtype=torch.float16/bfloat16 and "
        f"t5_dtype=torch.bfloat16, {_smaller_cache(step_cache)}or use another GPU"
    )


def _reserved_need(peak_allocated: float) -> float:
    """What an estimated peak of allocated bytes needs free: the allocator's cache holds more than
    the tensors (RESERVE_FACTOR)."""
    return peak_allocated * RESERVE_FACTOR


def _smaller_cache(cache: str | None) -> str:
    """The hint, for a step cache that does not fit, of the one with smaller buffers ("" if none is)."""
    return "cache='residual' (smaller buffers), " if cache == "attention" else ""


def _with_cache(preset: Preset, samples: int, dtype: torch.dtype, step_cache: str | None) -> str:
    if step_cache is None:
        return ""
    return f" with the {step_cache} step cache's {step_cache_bytes(preset, samples, dtype, step_cache) / GIB:.1f} GiB"


def check_step_cache_memory(preset: Preset, samples: int, mode: str, dtype: torch.dtype, t5_dtype: torch.dtype,
                            device: torch.device, backend: str, fp8: bool, cache: str, available: int) -> None:
    """Refuses, before any work, a call whose step cache would not fit: the denoise stage's estimated
    peak in placement `mode` with the cache's buffers, times RESERVE_FACTOR, against `available`
    bytes (what this process holds on the device and what is free)."""
    estimate = estimate_memory(preset, samples, mode, dtype, t5_dtype, vae_chunk_frames=1, device=device,
                               backend=backend, fp8=fp8, cache=cache)
    needs = _reserved_need(estimate.denoise)
    if needs > available:
        buffers = step_cache_bytes(preset, samples, dtype, cache)
        raise ConfigError(
            f"cache={cache!r} does not fit: its buffers take {buffers / GIB:.1f} GiB at {samples} prompt(s) per batch, "
            f"and the denoise in placement {mode!r} would need about {needs / GIB:.1f} GiB of the {available / GIB:.1f} GiB this process can use on {device}; use "
            f"{_smaller_cache(cache)}a smaller batch_size, or no step cache")
