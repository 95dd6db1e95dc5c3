"""Speed-up against distance of the step caches on the proxy model (quality/cache_sweep.py), for
BENCHMARKS.md: writes a CSV (one row per sampler and setting: what it saves, the forward speed-up,
PSNR and latent relative L2 against the uncached run, mean over seeds and prompts and the worst)
and prints the same as a table.

    python tools/step_cache_quality.py --device cuda --seeds 0,1 --out step_cache_quality.csv

`--step-ms` takes the GPU step times that benchmarks/test_step_cache.py measures, as a JSON object
of ms per kind of step (cache_sweep.run_time_ms), and adds the time speed-up they give; e.g.
benchmarks/results/step-ms-16x256x256-bf16-fp8-h200-2026-12-02.json (BENCHMARKS.md's H200 table).
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import sys
import time
from pathlib import Path

from stdit_engine.engine.cache_calibration import CacheCalibration
from stdit_engine.options import CACHE_MODES, parse_sampler_run
from stdit_engine.quality.cache_sweep import RUNS, THRESHOLDS, proxy_calibration, sweep
from stdit_engine.quality.proxy import CHECKPOINT, load_proxy_engine

COLUMNS = ("sampler", "steps", "setting", "saved", "forward_speedup", "gpu_speedup", "psnr_db_mean", "psnr_db_worst",
           "latent_rel_l2_mean", "latent_rel_l2_worst", "estimated_rel_l2", "seeds", "prompts")


def cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return "inf" if math.isinf(value) else f"{value:.3g}" if abs(value) < 0.1 else f"{value:.2f}"
    return str(value)


def table(records: list[dict]) -> str:
    head = ("sampler", "setting", "saved", "fwd x", "gpu x", "PSNR mean / worst", "rel. L2 mean / worst",
            "rel. L2 estimated")
    rows = [(f"{r['sampler']} {r['steps']}", r["setting"], r["saved"], cell(r["forward_speedup"]), cell(r["gpu_speedup"]),
             f"{cell(r['psnr_db_mean'])} / {cell(r['psnr_db_worst'])} dB",
             f"{cell(r['latent_rel_l2_mean'])} / {cell(r['latent_rel_l2_worst'])}", cell(r["estimated_rel_l2"]))
            for r in records]
    return "\n".join("| " + " | ".join(row) + " |" for row in [head, ("---",) * len(head), *rows])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="the CSV to write")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (the proxy in float32 either way)")
    parser.add_argument("--seeds", default="0", help="comma-separated, e.g. 0,1")
    parser.add_argument("--prompts", type=int, default=4, help="how many of the proxy task's 4 captions")
    parser.add_argument("--runs", default=",".join(f"{s}:{n}" for s, n in RUNS), help="SAMPLER:STEPS,...")
    parser.add_argument("--thresholds", default=",".join(map(str, THRESHOLDS)),
                        help="residual thresholds (the sampler's default is always added)")
    parser.add_argument("--strategies", default=",".join(CACHE_MODES), help="the caches to sweep, comma-separated")
    parser.add_argument("--checkpoint", type=Path, default=CHECKPOINT, help="the proxy checkpoint")
    parser.add_argument("--step-ms", type=Path, help="GPU step times (see the module docstring)")
    parser.add_argument("--calibration-out", type=Path, help="also write the proxy's calibration file here")
    parser.add_argument("--calibration", type=Path,
                        help="use this calibration file (a --calibration-out of the same checkpoint) in place of "
                             "calibrating again")
    args = parser.parse_args(argv)
    runs = [parse_sampler_run(run) for run in args.runs.split(",")]
    strategies = args.strategies.split(",")
    if not set(strategies) <= set(CACHE_MODES):
        parser.error(f"--strategies takes some of {', '.join(CACHE_MODES)}, got {args.strategies!r}")
    step_ms = json.loads(args.step_ms.read_text()) if args.step_ms else None

    start = time.perf_counter()
    engine = load_proxy_engine(args.checkpoint, device=args.device)
    # The figures here are distances, not times: the eager loop gives the same plans' latents.
    engine.denoiser.use_cuda_graphs = False
    if args.calibration:
        calibration = CacheCalibration.load(args.calibration)
        calibration.check_model(engine.stdit, engine.preset.name)
    else:
        calibration = proxy_calibration(engine, runs)
    if args.calibration_out:
        calibration.save(args.calibration_out)
    records = sweep(engine, runs, seeds=[int(s) for s in args.seeds.split(",")], prompts=args.prompts,
                    thresholds=[float(t) for t in args.thresholds.split(",")], step_ms=step_ms,
                    calibration=calibration, report=lambda r: print(json.dumps(r), file=sys.stderr, flush=True),
                    strategies=strategies)
    with args.out.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(records)
    print(f"proxy {engine.preset.name} (depth {len(engine.stdit.blocks)}, hidden {engine.stdit.hidden_size}) on "
          f"{engine.device}, seeds {args.seeds}, {args.prompts} prompt(s), {time.perf_counter() - start:.0f} s; "
          f"PSNR and latent rel. L2 against the uncached run of the same sampler")
    print(table(records))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
