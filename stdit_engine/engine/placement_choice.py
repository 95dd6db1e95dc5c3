"""Which placement (engine/placement.py) a new engine uses, chosen before anything is loaded, and
the one line that says why (printed with each call's stage report)."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..configs import Preset
from ..errors import ConfigError
from .memory import GIB, LEAN_RESERVED_BYTES, RESERVE_FACTOR, decode_chunk, estimate_memory
from .placement import AUTO_ORDER, MODES


@dataclass(frozen=True)
class PlacementChoice:
    mode: str
    reason: str  # one line


def choose_placement(mode: str, preset: Preset, device: torch.device, dtype: torch.dtype,
                     t5_dtype: torch.dtype, backend: str = "auto", fp8: bool = False) -> PlacementChoice:
    """The placement to use; "auto" is the first of placement.AUTO_ORDER whose estimated peak
    (allocated, for the preset's prompts per batch) times RESERVE_FACTOR fits in free GPU memory.

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
        chunk = decode_chunk(preset, samples, candidate, dtype, t5_dtype, free, device, backend, fp8)
        estimate = estimate_memory(preset, samples, candidate, dtype, t5_dtype, vae_chunk_frames=chunk,
                                   device=device, backend=backend, fp8=fp8)
        needs = estimate.peak * RESERVE_FACTOR
        if needs <= free:
            how = "auto, the first of " + ", ".join(AUTO_ORDER) + " that fits" if mode == "auto" else "as asked"
            # The lean decode takes what its budget leaves: its reserved peak is that budget's, above `needs`.
            decode = (f"; its decode is sized to stay within {LEAN_RESERVED_BYTES / GIB:.0f} GiB reserved"
                      if candidate == "lean" else "")
            skipped = "".join(f"; {name}'s is {gib:.1f} GiB, more than is free" for name, gib in passed)
            return PlacementChoice(candidate, f"{how}: its estimated peak of {estimate.peak / GIB:.1f} GiB allocated "
                                              f"at {samples} prompt(s), x{RESERVE_FACTOR} for the allocator's cache = "
                                              f"{needs / GIB:.1f} GiB, is within the {free / GIB:.1f} GiB free"
                                              f"{decode}{skipped}")
        passed.append((candidate, needs / GIB))
    raise ConfigError(
        f"{preset.name} needs about {needs / GIB:.1f} GiB of GPU memory in placement "
        f"{candidates[-1]!r} ({estimate.describe()}), but {device} has {free / GIB:.1f} GiB free; "
        "free GPU memory, pass dtype=torch.float16/bfloat16 and t5_dtype=torch.bfloat16, or use another GPU"
    )
