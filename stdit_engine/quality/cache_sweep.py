"""Speed-up against distance of the step caches (engine/step_cache.py) on the proxy model
(quality/proxy.py), for tools/step_cache_quality.py and BENCHMARKS.md.

Per sampler: the proxy's calibration (calibrate-cache's runs, on task captions other than the
evaluated ones), then per seed an uncached run and one run per cache setting from the same initial
noise, through the harness's runner, compared with the uncached run by the harness's metrics (PSNR
of the decoded frames, latent relative L2) prompt by prompt: each row has the mean over seeds and
prompts and the worst of them. What a setting saves is counted (steps whose blocks are skipped,
attention evaluations reused); the time that saves is the GPU's (run_time_ms, from the step times
of benchmarks/test_step_cache.py). A residual row also has the latent relative L2 that the
calibration estimates for its schedule (step_cache.schedule_cost), beside the measured one: whether
the threshold means on this checkpoint what it says.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

from ..engine.cache_calibration import CacheCalibration, calibrate
from ..engine.cache_defaults import cache_defaults
from ..engine.step_cache import (ATTENTION, ATTENTION_KINDS, RESIDUAL, AttentionBroadcast, CachePlan,
                                 default_broadcast, make_plan, schedule_cost)
from ..schedulers import make_sampler
from .metrics import psnr, relative_l2
from .proxy_task import CAPTIONS, PROXY_CAPTIONS
from .runners import EngineRunner

RUNS = (("dpm-solver++", 20), ("iddpm", 100))
THRESHOLDS = (0.01, 0.02, 0.05, 0.1, 0.15, 0.2, 0.3)
# Beyond the sampler's default (engine/cache_defaults.py): wider ranges, rarer recomputation.
BROADCASTS = {
    "2,3,4 over 0.1-0.9": AttentionBroadcast.uniform((2, 3, 4), 0.1, 0.9),
    "3,4,6 over 0.1-0.9": AttentionBroadcast.uniform((3, 4, 6), 0.1, 0.9),
    "4,6,8 over 0.05-0.95": AttentionBroadcast.uniform((4, 6, 8), 0.05, 0.95),
}
# Every 7th of the task's other captions: varied colours, directions and speeds.
CALIBRATION_CAPTIONS = [c.text for c in CAPTIONS if c not in PROXY_CAPTIONS][::7]


def proxy_calibration(engine, runs: Sequence[tuple[str, int]] = RUNS) -> CacheCalibration:
    """The residual cache's calibration of the proxy `engine` for `runs`, on CALIBRATION_CAPTIONS."""
    return calibrate(engine, runs, prompts=CALIBRATION_CAPTIONS)


@dataclass(frozen=True)
class Setting:
    name: str
    cache: str
    threshold: float | None = None
    broadcast: AttentionBroadcast | None = None

    def plan(self, sampler: str, steps: int, calibration: CacheCalibration) -> CachePlan:
        return make_plan(self.cache, sampler=sampler, evaluations=steps, threshold=self.threshold,
                         broadcast=self.broadcast, calibration=calibration)


def settings(sampler: str, steps: int, thresholds: Sequence[float] = THRESHOLDS,
             broadcasts: dict[str, AttentionBroadcast] = BROADCASTS,
             strategies: Sequence[str] = (RESIDUAL, ATTENTION)) -> list[Setting]:
    """The residual thresholds (the sampler's default among them, marked) and the attention
    settings (its default first), of the `strategies` asked for."""
    default = cache_defaults(sampler, steps).residual_threshold
    residual = [Setting(f"threshold {t}" + (" (default)" if t == default else ""), RESIDUAL, t)
                for t in sorted({*thresholds, default})]
    attention = [Setting("attention (default)", ATTENTION, broadcast=default_broadcast(sampler, steps))]
    attention += [Setting(f"attention {name}", ATTENTION, broadcast=b) for name, b in broadcasts.items()]
    return [setting for setting in residual + attention if setting.cache in strategies]


def run_time_ms(plan: CachePlan | None, steps: int, times: dict) -> float:
    """A run's denoising time from per-kind step times in ms (the uncached run's: plan None):
    "full", "skip", "record_residual", "record_attention", and "spatial", "temporal", "cross" (a
    step reusing that kind only)."""
    if plan is None:
        return steps * times["full"]
    total = 0.0
    for variant in plan.variants:
        if RESIDUAL in variant.reuse:
            total += times["skip"]
            continue
        step = times["full"] - sum(times["full"] - times[kind] for kind in variant.reuse)
        if variant.record:  # what storing costs on top of a full step
            step += times["record_residual" if plan.mode == RESIDUAL else "record_attention"] - times["full"]
        total += step
    return total


def skipped_steps(plan: CachePlan) -> set:
    return {i for i, variant in enumerate(plan.variants) if RESIDUAL in variant.reuse}


def saved(plan: CachePlan) -> str:
    """What the plan saves, in words."""
    steps = len(plan.variants)
    if plan.mode == RESIDUAL:
        return f"blocks skipped at {plan.reused(RESIDUAL)} of {steps}"
    return "spatial/temporal/cross reused " + "/".join(str(plan.reused(k)) for k in ATTENTION_KINDS) + f" of {steps}"


def sweep(engine, runs: Sequence[tuple[str, int]] = RUNS, seeds: Sequence[int] = (0,), prompts: int = 4,
          thresholds: Sequence[float] = THRESHOLDS, broadcasts: dict[str, AttentionBroadcast] = BROADCASTS,
          step_ms: dict | None = None, calibration: CacheCalibration | None = None, report=None,
          strategies: Sequence[str] = (RESIDUAL, ATTENTION)) -> list[dict]:
    """One record per (sampler, setting), in run order; `report(record)` is called as each is done.
    `prompts`: how many of the task's PROXY_CAPTIONS to evaluate (up to 4)."""
    calibration = calibration or proxy_calibration(engine, runs)
    evaluated = [c.text for c in PROXY_CAPTIONS[:prompts]]
    runner = EngineRunner(engine, evaluated)
    records = []
    for sampler_name, steps in runs:
        sampler = make_sampler(sampler_name, num_steps=steps)
        references = {}
        for seed in seeds:
            runner.cache = None
            z = runner.initial_noise(seed)
            latent = runner.denoise(sampler, z, seed)
            references[seed] = z, latent, runner.decode(latent)
        for setting in settings(sampler_name, steps, thresholds, broadcasts, strategies):
            runner.cache = plan = setting.plan(sampler_name, steps, calibration)
            distances = []  # (PSNR, latent rel. L2) per seed and prompt
            for seed, (z, reference, reference_frames) in references.items():
                latent = runner.denoise(sampler, z, seed)
                frames = runner.decode(latent)
                distances += [(psnr(frames[i], reference_frames[i]), relative_l2(latent[i], reference[i]))
                              for i in range(len(evaluated))]
            computed = steps - plan.reused(RESIDUAL)
            estimated = (schedule_cost(calibration.rescaled_changes(sampler_name, steps),
                                       calibration.sensitivity(sampler_name, steps), skipped_steps(plan))
                         if plan.mode == RESIDUAL else None)
            record = dict(sampler=sampler_name, steps=steps, setting=setting.name, strategy=plan.mode,
                          saved=saved(plan), blocks_skipped=plan.reused(RESIDUAL),
                          forward_speedup=steps / computed if plan.mode == RESIDUAL else None,
                          gpu_speedup=(run_time_ms(None, steps, step_ms) / run_time_ms(plan, steps, step_ms)
                                       if step_ms else None),
                          psnr_db_mean=_mean([d[0] for d in distances]), psnr_db_worst=min(d[0] for d in distances),
                          latent_rel_l2_mean=_mean([d[1] for d in distances]),
                          latent_rel_l2_worst=max(d[1] for d in distances), estimated_rel_l2=estimated,
                          seeds=len(seeds), prompts=len(evaluated))
            records.append(record)
            if report:
                report(record)
    return records


def _mean(values: list[float]) -> float:
    """The mean, inf when any is (a PSNR of identical frames)."""
    return math.inf if math.inf in values else sum(values) / len(values)
