"""`stdit-engine generate | bench | export | info`: the command line."""
from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import platform
import sys
from pathlib import Path

import torch

from .configs import PRESETS
from .errors import ConfigError, EngineError
from .engine.placement import MODES as PLACEMENT_MODES
from .export import command as export_command
from .models.fp8 import FP8_MIN_CAPABILITY
from .kernels.registry import BACKENDS
from .parallel.plan import MODES as PARALLEL_MODES

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
OPTIONAL_PACKAGES = ("triton", "flash_attn", "xformers", "apex", "tensorrt", "onnx", "onnxruntime", "onnxscript")
PIPELINE_PACKAGES = ("transformers", "diffusers", "safetensors", "huggingface_hub", "av", "ftfy", "beautifulsoup4")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="stdit-engine", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    gen = commands.add_parser("generate", help="text to video")
    gen.add_argument("--preset", default="16x256x256", choices=list(PRESETS))
    gen.add_argument("--prompt", action="append", default=[], help="a prompt; repeat for several")
    gen.add_argument("--prompts-file", type=Path, help="a text file with one prompt per line")
    gen.add_argument("--out", type=Path, required=True,
                     help="output .mp4 or .gif; with several prompts, NAME-0.mp4, NAME-1.mp4, ...")
    gen.add_argument("--stdit", help="STDiT checkpoint file or hub repo id (default: the preset's release)")
    gen.add_argument("--t5", help="T5 folder or hub id (default: DeepFloyd/t5-v1_1-xxl)")
    gen.add_argument("--vae", help="VAE folder or hub id (default: stabilityai/sd-vae-ft-ema)")
    gen.add_argument("--random-weights", action="store_true", help="random weights of the preset's architectures (demo, benchmarks)")
    gen.add_argument("--seed", type=int, default=42, help="default 42, as the reference script")
    gen.add_argument("--sampler", default="iddpm",
                     help="iddpm (the reference, default), ddim (ddim:eta=1 ancestral), dpm-solver++ (fast: "
                          "--steps 20), dpm-solver (the reference's DPM-Solver)")
    gen.add_argument("--steps", type=int, default=100, help="model calls of the sampler (default 100)")
    gen.add_argument("--cfg-scale", type=float, default=7.0)
    gen.add_argument("--guidance-channels", type=int, choices=(3, 4),
                     help="3: the released v1.0 sampler; 4: guide every latent channel (default: the sampler's)")
    gen.add_argument("--device", help="cuda, cuda:N or cpu (default: cuda when available)")
    gen.add_argument("--dtype", choices=list(DTYPES), help="STDiT and VAE precision (default: fp16 on GPU, fp32 on CPU)")
    gen.add_argument("--t5-dtype", choices=list(DTYPES), default="fp32")
    gen.add_argument("--backend", default="auto", choices=["auto", *BACKENDS], help="STDiT kernel backend")
    gen.add_argument("--fp8", action="store_true",
                     help="STDiT block linears in FP8 (GPUs of compute capability 8.9+): faster, bf16-like error")
    gen.add_argument("--placement", default="auto", choices=["auto", *PLACEMENT_MODES],
                     help="where the models live per stage (default: the fastest that fits in GPU memory)")
    gen.add_argument("--no-cuda-graphs", action="store_true", help="run the denoising steps without CUDA graphs")
    gen.add_argument("--parallel", default="auto", choices=PARALLEL_MODES,
                     help="under torchrun: cfg (guidance halves on 2 GPUs), dsp (frames split over N GPUs), "
                          "cfg+dsp (N >= 4); auto picks (README, Several GPUs)")
    gen.add_argument("--batch-size", type=int, help="prompts per batch (default: the preset's)")
    gen.add_argument("--vae-chunk-frames", type=int, help="frames decoded at once (default: all)")

    bench = commands.add_parser("bench", help="time generate() on a preset's reference workload, random weights")
    bench.add_argument("--preset", action="append", choices=list(PRESETS),
                       help="repeatable (default: the three released presets)")
    bench.add_argument("--placement", default="auto", choices=["auto", *PLACEMENT_MODES])
    bench.add_argument("--steps", type=int, default=100)
    bench.add_argument("--device", help="cuda, cuda:N or cpu (default: cuda when available)")
    bench.add_argument("--no-cuda-graphs", action="store_true")
    bench.add_argument("--fp8", action="store_true", help="STDiT block linears in FP8")
    bench.add_argument("--json", type=Path, help="also write the records to this JSON file")

    export_command.add_parser(commands, DTYPES)
    commands.add_parser("info", help="devices, versions, backends and optional packages")
    return parser


def read_prompts(args: argparse.Namespace) -> list[str]:
    prompts = list(args.prompt)
    if args.prompts_file:
        if not args.prompts_file.is_file():
            raise ConfigError(f"prompts file {args.prompts_file} does not exist")
        prompts += [line.strip() for line in args.prompts_file.read_text().splitlines() if line.strip()]
    if not prompts:
        raise ConfigError("no prompts: pass --prompt TEXT (repeatable) or --prompts-file FILE")
    return prompts


def output_paths(out: Path, count: int) -> list[Path]:
    if out.suffix not in (".mp4", ".gif"):
        raise ConfigError(f"--out must end in .mp4 or .gif, got {out}")
    if not out.parent.is_dir():
        raise ConfigError(f"the output folder {out.parent} does not exist; create it first (mkdir -p {out.parent})")
    if count == 1:
        return [out]
    return [out.with_name(f"{out.stem}-{i}{out.suffix}") for i in range(count)]


def cmd_generate(args: argparse.Namespace) -> None:
    from .parallel.launch import torchrun_group

    with torchrun_group(args.device, args.parallel):
        _generate(args)


def _generate(args: argparse.Namespace) -> None:
    from .engine.api import Engine

    prompts = read_prompts(args)
    paths = output_paths(args.out, len(prompts))  # fail on a bad path before minutes of work
    dtype = DTYPES[args.dtype] if args.dtype else None
    common = dict(device=args.device, dtype=dtype, t5_dtype=DTYPES[args.t5_dtype], backend=args.backend,
                  placement=args.placement, cuda_graphs=not args.no_cuda_graphs, parallel=args.parallel, fp8=args.fp8)
    if args.random_weights:
        print("note: random weights; the video shows the pipeline working, not a picture of the prompt")
        engine = Engine.from_random_weights(args.preset, **common)
    else:
        engine = Engine.from_pretrained(args.preset, stdit=args.stdit, t5=args.t5, vae=args.vae, **common)
    videos = engine.generate(prompts, seed=args.seed, num_steps=args.steps, cfg_scale=args.cfg_scale,
                             guidance_channels=args.guidance_channels, sampler=args.sampler, batch_size=args.batch_size,
                             vae_chunk_frames=args.vae_chunk_frames)
    for video, path in zip(videos, paths):
        video.save(path)
        print(f"wrote {path} ({len(video)} frames, {video.width}x{video.height}, {video.fps} fps)")


def cmd_bench(args: argparse.Namespace) -> None:
    from .bench import bench_preset, describe

    if args.json and not args.json.parent.is_dir():
        raise ConfigError(f"the folder {args.json.parent} of --json does not exist; create it first")
    records = []
    for preset in args.preset or ["16x256x256", "16x512x512", "64x512x512"]:
        record = bench_preset(preset, placement=args.placement, num_steps=args.steps, device=args.device,
                              cuda_graphs=not args.no_cuda_graphs, fp8=args.fp8)
        print(describe(record), flush=True)
        records.append(record)
    if args.json:
        args.json.write_text(json.dumps(records, indent=1))


def _version(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def cmd_info(_: argparse.Namespace) -> None:
    from . import __version__

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


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        commands = {"generate": cmd_generate, "bench": cmd_bench, "info": cmd_info,
                    "export": lambda args: export_command.cmd_export(args, DTYPES)}
        commands[args.command](args)
    except EngineError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
