"""`stdit-engine generate | calibrate-cache | serve | bench | export | quality | info`: the command line.

Exit codes: 0 done, 2 bad input (an argument, a file, a device: the message says what to do),
130 interrupted (Ctrl-C; files are written whole or not at all). torch is imported only by the
commands that run, after their arguments and output targets are checked: `--help` and argument
errors answer at once.
"""
from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import platform
import sys
from pathlib import Path

from .configs import PRESETS
from .engine.arguments import check_generate_arguments
from .errors import ConfigError, EngineError
from .export import command as export_command
from .files import check_output_target, write_text_atomic
from .options import (CACHE_MODES, DTYPES, KERNEL_BACKENDS as BACKENDS, PARALLEL_MODES, PLACEMENT_MODES,
                      parse_sampler_run, torch_dtype)
from .quality import command as quality_command
from .serving import command as serve_command

OPTIONAL_PACKAGES = ("triton", "flash_attn", "xformers", "apex", "tensorrt", "onnx", "onnxruntime", "onnxscript")
PIPELINE_PACKAGES = ("transformers", "diffusers", "safetensors", "huggingface_hub", "av", "ftfy", "beautifulsoup4")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="stdit-engine", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    gen = commands.add_parser("generate", help="text to video")
    add_model_arguments(gen)
    gen.add_argument("--prompt", action="append", default=[], help="a prompt; repeat for several")
    gen.add_argument("--prompts-file", type=Path, help="a text file with one prompt per line")
    gen.add_argument("--out", type=Path, required=True,
                     help="output .mp4 or .gif; with several prompts, NAME-0.mp4, NAME-1.mp4, ...")
    gen.add_argument("--seed", type=int, default=42, help="default 42, as the reference script")
    gen.add_argument("--sampler", default="iddpm",
                     help="iddpm (the reference, default), ddim (ddim:eta=1 ancestral), dpm-solver++ (fast: "
                          "--steps 20), unipc (fast, its corrector free: --steps 15-20), dpm-solver (the "
                          "reference's DPM-Solver)")
    gen.add_argument("--steps", type=int, default=100, help="model calls of the sampler (default 100)")
    gen.add_argument("--cfg-scale", type=float, default=7.0)
    gen.add_argument("--guidance-channels", type=int, choices=(3, 4),
                     help="3: the released v1.0 sampler; 4: guide every latent channel (default: the sampler's)")
    gen.add_argument("--parallel", default="auto", choices=PARALLEL_MODES,
                     help="under torchrun: cfg (guidance halves on 2 GPUs), dsp (frames split over N GPUs), "
                          "cfg+dsp (N >= 4); auto picks (README, Several GPUs)")
    gen.add_argument("--batch-size", type=int, help="prompts per batch (default: the preset's)")
    gen.add_argument("--vae-chunk-frames", type=int, help="frames decoded at once (default: all)")
    gen.add_argument("--cache", choices=CACHE_MODES,
                     help="reuse work across denoising steps, at some loss of fidelity (default: off; README)")
    gen.add_argument("--cache-calibration", type=Path,
                     help="the file of `stdit-engine calibrate-cache` for this checkpoint (residual cache)")
    gen.add_argument("--cache-threshold", type=float,
                     help="residual cache: the estimated relative L2 change of the final latent its skips may "
                          "cost; higher skips more steps, 0 never skips (default: the sampler's and step count's, "
                          "engine/cache_defaults.py)")
    gen.add_argument("--cache-intervals", metavar="S,T,X",
                     help="attention cache: compute spatial, temporal, cross attention every S, T, X steps "
                          "(default: the sampler's)")
    gen.add_argument("--cache-range", metavar="START:STOP",
                     help="attention cache: the steps it applies to, as fractions of the run (default: the sampler's)")

    calibrate = commands.add_parser("calibrate-cache",
                                    help="fit the residual step cache to a checkpoint; writes the file that "
                                         "generate --cache-calibration reads")
    add_model_arguments(calibrate)
    calibrate.add_argument("--out", type=Path, required=True, help="the calibration file to write (.json)")
    calibrate.add_argument("--run", action="append", metavar="SAMPLER:STEPS",
                           help="a sampler and step count to calibrate (repeatable; default iddpm:100)")
    calibrate.add_argument("--prompt", action="append", default=[],
                           help="a calibration prompt; repeat for several (default: eight varied prompts)")
    calibrate.add_argument("--seed", type=int, default=0)
    calibrate.add_argument("--sensitivity-steps", type=int, metavar="N",
                           help="steps per run at which to measure what one skip does to the result, one "
                                "sampling run each (default 12; the others are interpolated)")

    bench = commands.add_parser("bench", help="time generate() on a preset's reference workload, random weights")
    bench.add_argument("--preset", action="append", choices=list(PRESETS),
                       help="repeatable (default: the three released presets)")
    bench.add_argument("--placement", default="auto", choices=["auto", *PLACEMENT_MODES])
    bench.add_argument("--steps", type=int, default=100)
    bench.add_argument("--device", help="cuda, cuda:N or cpu (default: cuda when available)")
    bench.add_argument("--no-cuda-graphs", action="store_true")
    bench.add_argument("--fp8", action="store_true", help="STDiT block linears in FP8")
    bench.add_argument("--json", type=Path, help="also write the records to this JSON file")

    export_command.add_parser(commands)
    serve_command.add_parser(commands, add_model_arguments)
    quality_command.add_parser(commands)
    info = commands.add_parser("info", help="devices, versions, backends, optional packages, and the runtime plan")
    info.add_argument("--preset", default="16x256x256", choices=list(PRESETS),
                      help="print the runtime plan `generate --preset PRESET` resolves here with its default options")
    return parser


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """Which engine to build: the flags `generate` and `serve` share."""
    parser.add_argument("--preset", default="16x256x256", choices=list(PRESETS))
    parser.add_argument("--stdit", help="STDiT checkpoint file or hub repo id (default: the preset's release)")
    parser.add_argument("--t5", help="T5 folder or hub id (default: DeepFloyd/t5-v1_1-xxl)")
    parser.add_argument("--vae", help="VAE folder or hub id (default: stabilityai/sd-vae-ft-ema)")
    parser.add_argument("--random-weights", action="store_true",
                        help="random weights of the preset's architectures (demo, benchmarks)")
    parser.add_argument("--device", help="cuda, cuda:N or cpu (default: cuda when available)")
    parser.add_argument("--dtype", choices=list(DTYPES),
                        help="STDiT and VAE precision (default: fp16 on GPU, fp32 on CPU)")
    parser.add_argument("--t5-dtype", choices=list(DTYPES), default="fp32")
    parser.add_argument("--backend", default="auto", choices=["auto", *BACKENDS], help="STDiT kernel backend")
    parser.add_argument("--fp8", action="store_true",
                        help="STDiT block linears in FP8 (GPUs of compute capability 8.9+): faster, bf16-like error")
    parser.add_argument("--placement", default="auto", choices=["auto", *PLACEMENT_MODES],
                        help="where the models live per stage (default: the fastest that fits in GPU memory)")
    parser.add_argument("--no-cuda-graphs", action="store_true", help="run the denoising steps without CUDA graphs")


def build_engine(args: argparse.Namespace, parallel: str = "none", warmup=False):
    """The engine that add_model_arguments' flags describe, its load report printed. `warmup`: as
    the Engine constructors'; by default none, as a command that makes one call gains nothing from
    paying its first-call costs earlier (its stage report shows them)."""
    from .engine.api import Engine

    args.doing = "loading the models"
    dtype = torch_dtype(args.dtype) if args.dtype else None
    common = dict(device=args.device, dtype=dtype, t5_dtype=torch_dtype(args.t5_dtype), backend=args.backend,
                  placement=args.placement, cuda_graphs=not args.no_cuda_graphs, parallel=parallel, fp8=args.fp8,
                  cache_calibration=getattr(args, "cache_calibration", None),  # generate's flags only
                  step_cache=getattr(args, "cache", None), warmup=warmup)
    if args.random_weights:
        print("note: random weights; the video shows the pipeline working, not a picture of the prompt")
        engine = Engine.from_random_weights(args.preset, **common)
    else:
        engine = Engine.from_pretrained(args.preset, stdit=args.stdit, t5=args.t5, vae=args.vae, **common)
    if engine.parallel is None or engine.parallel.is_first:  # one report, as generate() prints
        print(engine.load_stats.describe(engine.device))
    return engine


def read_prompts(args: argparse.Namespace) -> list[str]:
    prompts = list(args.prompt)
    if args.prompts_file:
        if not args.prompts_file.exists() or args.prompts_file.is_dir():  # a pipe (/dev/stdin) is read
            what = "is a folder" if args.prompts_file.is_dir() else "does not exist"
            raise ConfigError(f"prompts file {args.prompts_file} {what}: pass a text file, one prompt a line")
        try:
            text = args.prompts_file.read_text(encoding="utf-8-sig")  # -sig: a byte-order mark is no prompt
        except UnicodeDecodeError as err:
            raise ConfigError(f"prompts file {args.prompts_file} is not UTF-8 text (byte {err.start}): "
                              "save it as UTF-8") from None
        prompts += [line.strip() for line in text.splitlines() if line.strip()]
    if not prompts:
        raise ConfigError("no prompts: pass --prompt TEXT (repeatable) or --prompts-file FILE")
    return prompts


def output_paths(out: Path, count: int) -> list[Path]:
    """The files to write, each checked to be writable (before minutes of work)."""
    if out.suffix.lower() not in (".mp4", ".gif"):
        raise ConfigError(f"--out must end in .mp4 or .gif, got {out}")
    paths = [out] if count == 1 else [out.with_name(f"{out.stem}-{i}{out.suffix}") for i in range(count)]
    return [check_output_target(path) for path in paths]


def _generate_arguments(args: argparse.Namespace, prompts: list[str]) -> dict:
    """generate()'s arguments from the command line, checked before anything loads."""
    checked = check_generate_arguments(prompts, seed=args.seed, cfg_scale=args.cfg_scale, batch_size=args.batch_size,
                                       vae_chunk_frames=args.vae_chunk_frames)
    from .schedulers import make_sampler

    make_sampler(args.sampler, num_steps=args.steps, cfg_scale=checked.cfg_scale,
                 guidance_channels=args.guidance_channels)  # its ConfigError, before minutes of loading
    if args.cache == "residual" and args.cache_calibration is None:
        raise ConfigError("--cache residual needs the change curve of this checkpoint: run `stdit-engine "
                          "calibrate-cache --out FILE` once and pass --cache-calibration FILE")
    return dict(seed=checked.seed, num_steps=args.steps, cfg_scale=checked.cfg_scale,
                guidance_channels=args.guidance_channels, sampler=args.sampler, batch_size=checked.batch_size,
                vae_chunk_frames=checked.vae_chunk_frames, **_cache_arguments(args))


def _cache_arguments(args: argparse.Namespace) -> dict:
    """generate()'s cache arguments from the --cache flags."""
    if args.cache != "attention":
        if args.cache_intervals or args.cache_range:
            raise ConfigError("--cache-intervals and --cache-range set the attention cache: add --cache attention")
        return dict(cache=args.cache, cache_threshold=args.cache_threshold)
    if not (args.cache_intervals or args.cache_range):
        return dict(cache="attention", cache_threshold=args.cache_threshold)  # the sampler's default
    from .engine.cache_defaults import cache_defaults
    from .engine.step_cache import AttentionBroadcast

    default = cache_defaults(args.sampler, args.steps)  # for the flag left out
    try:
        intervals = ([int(k) for k in args.cache_intervals.split(",")] if args.cache_intervals
                     else default.attention_intervals)
        start, stop = (float(v) for v in args.cache_range.split(":")) if args.cache_range else default.attention_range
    except ValueError:
        raise ConfigError(f"--cache-intervals takes S,T,X (integers) and --cache-range START:STOP (fractions), got "
                          f"{args.cache_intervals!r} and {args.cache_range!r}") from None
    return dict(cache="attention", cache_threshold=args.cache_threshold,
                cache_broadcast=AttentionBroadcast.uniform(intervals, start, stop))


def cmd_generate(args: argparse.Namespace) -> None:
    prompts = read_prompts(args)
    paths = output_paths(args.out, len(prompts))
    generate_arguments = _generate_arguments(args, prompts)
    from .parallel.launch import torchrun_group

    with torchrun_group(args.device, args.parallel):
        _generate(args, prompts, paths, generate_arguments)


def _generate(args: argparse.Namespace, prompts: list[str], paths: list[Path], generate_arguments: dict) -> None:
    engine = build_engine(args, parallel=args.parallel)
    args.doing = f"generating {len(prompts)} video(s)"
    videos = engine.generate(prompts, **generate_arguments)
    for video, path in zip(videos, paths):
        args.doing = f"writing {path}"
        video.save(path)
        print(f"wrote {path} ({len(video)} frames, {video.width}x{video.height}, {video.fps} fps)")


def cmd_calibrate_cache(args: argparse.Namespace) -> None:
    check_output_target(args.out, "--out")
    runs = [parse_sampler_run(run) for run in args.run or ["iddpm:100"]]
    from .engine.cache_calibration import DEFAULT_PROMPTS, SENSITIVITY_STEPS, calibrate, check_sensitivity_steps

    sensitivity_steps = check_sensitivity_steps(SENSITIVITY_STEPS if args.sensitivity_steps is None
                                                else args.sensitivity_steps)
    engine = build_engine(args)
    args.doing = "calibrating the step cache"
    calibration = calibrate(engine, runs, prompts=args.prompt or DEFAULT_PROMPTS, seed=args.seed, progress=True,
                            sensitivity_at_most=sensitivity_steps)
    calibration.save(args.out)
    print(f"wrote {args.out}: cache polynomial {', '.join(f'{c:.4g}' for c in calibration.polynomial)}; "
          f"curves and sensitivities for {', '.join(calibration.curves)}")


def cmd_bench(args: argparse.Namespace) -> None:
    from .bench import bench_preset, describe

    if args.json:
        check_output_target(args.json, "--json output")
    records = []
    for preset in args.preset or ["16x256x256", "16x512x512", "64x512x512"]:
        args.doing = f"benchmarking {preset}"
        record = bench_preset(preset, placement=args.placement, num_steps=args.steps, device=args.device,
                              cuda_graphs=not args.no_cuda_graphs, fp8=args.fp8)
        print(describe(record), flush=True)
        records.append(record)
    if args.json:
        write_text_atomic(args.json, json.dumps(records, indent=1))


def _version(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def cmd_info(args: argparse.Namespace) -> None:
    import torch

    from . import __version__
    from .engine.plan import resolve_plan
    from .models.fp8 import FP8_MIN_CAPABILITY

    print(f"stdit-engine {__version__}, Python {platform.python_version()}, torch {torch.__version__}")
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            fp8 = "--fp8 available" if (p.major, p.minor) >= FP8_MIN_CAPABILITY else "no FP8 matmuls"
            print(f"  cuda:{i} {p.name}, sm_{p.major}{p.minor}, {p.total_memory / 1024**3:.1f} GiB, {fp8}")
    else:
        print("  no CUDA GPU visible: everything runs on the CPU")
    print("kernel backends: auto, " + ", ".join(BACKENDS))
    print("pipeline packages: " + ", ".join(f"{name} {_version(name)}" for name in PIPELINE_PACKAGES))
    # Optional packages are probed by import spec only: nothing is imported or initialised here.
    found = {name: importlib.util.find_spec(name) is not None for name in OPTIONAL_PACKAGES}
    print("optional packages: " + ", ".join(f"{n} {'yes' if ok else 'no'}" for n, ok in found.items()))
    print(f"runtime plan of `generate --preset {args.preset}` here: {resolve_plan(args.preset).describe()}")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    args.doing = "running"  # what the command is doing, for the line printed on Ctrl-C
    try:
        commands = {"generate": cmd_generate, "calibrate-cache": cmd_calibrate_cache, "bench": cmd_bench,
                    "info": cmd_info,
                    "export": export_command.cmd_export, "quality": quality_command.cmd_quality,
                    "serve": lambda args: serve_command.cmd_serve(args, build_engine)}
        commands[args.command](args)
    except EngineError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"interrupted: stdit-engine {args.command} stopped while {args.doing}; "
              "no partially written file was left", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
