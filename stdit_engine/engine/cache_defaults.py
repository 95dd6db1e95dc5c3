"""The step caches' default settings (engine/step_cache.py), per sampler and step count: the one
table to re-tune when the proxy model's measurements change.

Each entry is the setting that saved the most while keeping >= 30 dB PSNR (the mean over seeds and
prompts) against the uncached run of the same sampler on the proxy model (quality/proxy.py), as
tools/step_cache_quality.py measures it; the figures behind each entry, and the proxy and commit
they were measured on, are in BENCHMARKS.md (the step-cache proxy sweeps), not here. The
attention entries are still those of the depth-2 proxy (the repository's until aa2101c): on the
depth-4 ones no attention setting swept keeps 30 dB, so a table re-tuned to them would reuse nothing.
IDDPM 100's residual entry is the largest threshold swept; a larger one was not measured.
The residual threshold is the relative L2 change of the final latent that the calibration
estimates for the whole schedule (step_cache.schedule_cost): a budget measured on each
checkpoint's own sensitivities, so the same number asks for about the same fidelity of any
checkpoint, sampler and step count as far as that estimate holds (the sweep reports it beside the
measured distance); what a latent distance costs in PSNR still depends on the model and its VAE,
so measure a checkpoint's own before relying on it.

A call whose (sampler, steps) has no entry takes its sampler's entry of the nearest step count;
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
    ("dpm-solver++", 20): CacheDefaults(0.2, (2, 3, 4), (0.1, 0.6)),
    ("iddpm", 100): CacheDefaults(0.3, (2, 3, 4), (0.1, 0.9)),
}
FALLBACK = CacheDefaults(min(d.residual_threshold for d in DEFAULTS.values()), (2, 3, 4), (0.1, 0.6))


def cache_defaults(sampler: str, steps: int) -> CacheDefaults:
    """The defaults for a call of `sampler` with `steps` model evaluations (see the module docstring)."""
    same_sampler = [(abs(n - steps), n) for s, n in DEFAULTS if s == sampler]
    if not same_sampler:
        return FALLBACK
    return DEFAULTS[sampler, min(same_sampler)[1]]
