"""Timed `generate()` calls on prompts an engine has not seen (its prompt cache cannot answer them),
shared by the placement table (test_lean.py) and the cold-start script (cold_start.py)."""
from __future__ import annotations

import itertools
import time

import torch

from stdit_engine import Engine
from stdit_engine.engine.memory import GIB

_fresh = itertools.count()


def new_prompts(n: int) -> list[str]:
    """Prompts that no engine of this process has seen."""
    return [f"a sea turtle swimming over a coral reef, take {next(_fresh)}" for _ in range(n)]


def timed_call(engine: Engine, prompts: list[str], steps: int) -> dict:
    """Wall time of one generate() (device synchronised at both ends), its stage times, their one-off
    parts (a capture's compile and capture seconds) and peaks (the call's, and each stage's
    [allocated, reserved])."""
    torch.cuda.synchronize()
    start = time.perf_counter()
    engine.generate(prompts, seed=42, num_steps=steps, progress=False)
    torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    return dict(seconds=seconds, stages={s.name: round(s.seconds, 4) for s in engine.last_stats},
                stage_parts={s.name: s.parts for s in engine.last_stats if s.parts},
                peak_allocated_gib=max(s.peak_allocated for s in engine.last_stats) / GIB,
                peak_reserved_gib=max(s.peak_reserved for s in engine.last_stats) / GIB,
                stage_peaks_gib={s.name: [round(s.peak_allocated / GIB, 4), round(s.peak_reserved / GIB, 4)]
                                 for s in engine.last_stats})
