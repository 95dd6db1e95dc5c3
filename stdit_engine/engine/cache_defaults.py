"""The step caches' default settings (engine/step_cache.py), per sampler and step count: the one
table to re-tune when the proxy model's measurements change.

Each entry is the setting that saved the most while keeping >= 30 dB PSNR (the mean over seeds and
prompts) against the uncached run of the same sampler on the depth-2 proxy model (the repository's
until aa2101c), as tools/step_cache_quality.py measures it; the figures behind each entry are in
BENCHMARKS.md (the step-cache proxy sweeps), not here. On the depth-4 proxy that replaced it no
DPM-Solver++ setting that skips anything keeps 30 dB, so a table re-tuned to it would save nothing;
the entries stay the depth-2 proxy's until a proxy whose samples are trusted says otherwise.
The residual threshold is in units of the calibration's rescaled change: the same number is the
same rule on any checkpoint, but how many steps it skips, and what that costs, depend on the
checkpoint: measure a checkpoint's own before relying on them.

A call whose (sampler, steps) has no entry takes its sampler's entry of the nearest step count
(fewer steps change more per step, so a threshold skips fewer of them: the cautious direction);
a sampler without an entry takes FALLBACK, the most cautious of the entries.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class CacheDefaults:
    residual_threshold: float
    attention_intervals: tuple[int, int, int]  # spatial, temporal, cross: computed every k steps
    attention_range: tuple[float, float]  # the part of the run (fractions) where they are reused


# (sampler as generate() names it, steps) -> defaults.
DEFAULTS = {
    ("dpm-solver++", 20): CacheDefaults(0.3, (2, 3, 4), (0.1, 0.6)),
    ("iddpm", 100): CacheDefaults(0.5, (2, 3, 4), (0.1, 0.9)),
}
FALLBACK = CacheDefaults(min(d.residual_threshold for d in DEFAULTS.values()), (2, 3, 4), (0.1, 0.6))


def cache_defaults(sampler: str, steps: int) -> CacheDefaults:
    """The defaults for a call of `sampler` with `steps` model evaluations (see the module docstring)."""
    same_sampler = [(abs(n - steps), n) for s, n in DEFAULTS if s == sampler]
    if not same_sampler:
        return FALLBACK
    return DEFAULTS[sampler, min(same_sampler)[1]]
