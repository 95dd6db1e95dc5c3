"""Speed-up against distance of the step caches (engine/step_cache.py) on the proxy model
(quality/proxy.py), for BENCHMARKS.md. Per sampler: the proxy's calibration (calibrate-cache's runs,
on captions other than the evaluated ones), then per seed an uncached run and cached runs from the
same initial noise through the quality harness's runner, compared by its metrics (PSNR of the
decoded frames, latent relative L2).

    python tools/step_cache_quality.py --out step_cache_quality.json [--step-ms step_ms.json]

What a setting saves is counted here: steps whose blocks are skipped, attention evaluations
reused. The time that saves comes from the GPU: `--step-ms` takes the step times that
benchmarks/test_step_cache.py measures, as a JSON object of ms per kind of step ("full", "skip",
"record_residual", "record_attention", and "spatial", "temporal", "cross": a step reusing that
kind only), and the speed-up is then the uncached run's time over the cached run's, step by step.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from stdit_engine.engine.cache_calibration import calibrate
from stdit_engine.engine.step_cache import (ATTENTION, ATTENTION_KINDS, RESIDUAL, AttentionBroadcast, CachePlan,
                                            make_plan)
from stdit_engine.quality.metrics import psnr, relative_l2
from stdit_engine.quality.proxy import load_proxy_engine
from stdit_engine.quality.proxy_task import CAPTIONS, PROXY_CAPTIONS
from stdit_engine.quality.runners import EngineRunner
from stdit_engine.schedulers import make_sampler

RUNS = [("dpm-solver++", 20), ("iddpm", 100)]
THRESHOLDS = (0.05, 0.1, 0.2, 0.3, 0.5, 0.8)
BROADCASTS = {
    "2,3,4 over 0.1-0.6": AttentionBroadcast.uniform((2, 3, 4), 0.1, 0.6),
    "2,3,4 over 0.1-0.9": AttentionBroadcast.uniform((2, 3, 4), 0.1, 0.9),
    "4,6,8 over 0.05-0.95": AttentionBroadcast.uniform((4, 6, 8), 0.05, 0.95),
}
SEEDS = (0,)


def run_time_ms(plan: CachePlan | None, steps: int, times: dict) -> float:
    """A run's denoising time from per-kind step times (the uncached run's: plan None)."""
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


def settings() -> list[tuple[str, dict]]:
    return ([(f"threshold {t}", dict(cache=RESIDUAL, threshold=t)) for t in THRESHOLDS]
            + [(name, dict(cache=ATTENTION, broadcast=b)) for name, b in BROADCASTS.items()])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="the JSON records to write")
    parser.add_argument("--step-ms", type=Path, help="GPU step times (see the module docstring)")
    parser.add_argument("--calibration-out", type=Path, help="also write the proxy's calibration file here")
    args = parser.parse_args()
    times = json.loads(args.step_ms.read_text()) if args.step_ms else None

    engine = load_proxy_engine()
    evaluated = [c.text for c in PROXY_CAPTIONS]
    calibration = calibrate(engine, RUNS, prompts=[c.text for c in CAPTIONS if c.text not in evaluated][::7])
    if args.calibration_out:
        calibration.save(args.calibration_out)
    runner = EngineRunner(engine, evaluated)
    records = []
    for sampler_name, steps in RUNS:
        sampler = make_sampler(sampler_name, num_steps=steps)
        references = {}
        for seed in SEEDS:
            runner.cache = None
            z = runner.initial_noise(seed)
            latent = runner.denoise(sampler, z, seed)
            references[seed] = z, latent, runner.decode(latent)
        for name, setting in settings():
            runner.cache = plan = make_plan(setting["cache"], sampler=sampler_name, evaluations=steps,
                                            threshold=setting.get("threshold"), broadcast=setting.get("broadcast"),
                                            calibration=calibration)
            distances = []
            for seed, (z, reference, reference_frames) in references.items():
                latent = runner.denoise(sampler, z, seed)
                distances.append((psnr(runner.decode(latent), reference_frames), relative_l2(latent, reference)))
            record = dict(model="proxy-16x256x256 (quality/proxy.py)", sampler=sampler_name, steps=steps,
                          strategy=plan.mode, setting=name, seeds=len(SEEDS), prompts=len(evaluated),
                          psnr_db=sum(d[0] for d in distances) / len(distances),
                          latent_rel_l2=sum(d[1] for d in distances) / len(distances),
                          blocks_skipped=plan.reused(RESIDUAL),
                          attention_reused={kind: plan.reused(kind) for kind in ATTENTION_KINDS})
            if times:
                record["gpu_speedup"] = run_time_ms(None, steps, times) / run_time_ms(plan, steps, times)
            records.append(record)
            print(json.dumps(record), flush=True)
    args.out.write_text(json.dumps(records, indent=1))


if __name__ == "__main__":
    main()
