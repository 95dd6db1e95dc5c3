"""`stdit-engine quality`: the harness (quality/harness.py) on real weights, the proxy or random ones."""
from __future__ import annotations

import argparse
from functools import partial
from pathlib import Path

from ..configs import PRESETS
from ..errors import ConfigError
from ..files import check_output_target
from ..options import DTYPES, torch_dtype

DEFAULT_CONFIGS = "dpm-solver++@10,dpm-solver++@15,dpm-solver++@20,dpm-solver++@25,ddim@20,dpm-solver@20,iddpm@100"


def add_parser(commands) -> None:
    parser = commands.add_parser("quality", help="sampler configs against a reference run on the same initial noise")
    parser.add_argument("--model", choices=("pretrained", "proxy", "random"), default="pretrained",
                        help="pretrained: the released weights (or --stdit/--t5/--vae); proxy: the small model "
                             "trained here on a synthetic task; random: random weights of --preset")
    parser.add_argument("--preset", default="16x256x256", choices=list(PRESETS))
    parser.add_argument("--stdit", help="STDiT checkpoint file or hub repo id (pretrained); proxy checkpoint (proxy)")
    parser.add_argument("--t5", help="T5 folder or hub id (pretrained)")
    parser.add_argument("--vae", help="VAE folder or hub id (pretrained)")
    parser.add_argument("--prompt", action="append", default=[], help="repeatable (default: a few proxy captions)")
    parser.add_argument("--seeds", default="0,1", help="comma-separated seeds; each is one initial latent")
    parser.add_argument("--configs", default=DEFAULT_CONFIGS, help="comma-separated SAMPLER@STEPS, e.g. unipc@15,ddim:eta=1,grid=uniform@20")
    parser.add_argument("--reference", default="ddim@250", help="the run every config is compared with")
    parser.add_argument("--cfg-scale", type=float, default=7.0)
    parser.add_argument("--no-decode", action="store_true", help="latent distances only (no VAE decode, no PSNR/SSIM)")
    parser.add_argument("--device", help="cuda, cuda:N or cpu (default: cuda when available)")
    parser.add_argument("--dtype", choices=list(DTYPES), help="STDiT and VAE precision (default: fp16 on GPU, fp32 on CPU)")
    parser.add_argument("--out", type=Path, required=True, help="folder for quality.csv and quality.png")


def cmd_quality(args: argparse.Namespace) -> None:
    from .harness import SamplerConfig

    configs = SamplerConfig.parse_list(args.configs)
    reference = SamplerConfig.parse(args.reference)
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s]
    except ValueError:
        raise ConfigError(f"--seeds must be comma-separated integers, got {args.seeds!r}") from None
    args.out.mkdir(parents=True, exist_ok=True)
    csv_path, plot_path = (check_output_target(args.out / name) for name in ("quality.csv", "quality.png"))
    args.doing = f"loading the {args.model} model"
    engine, prompts, read_captions = _load(args)
    from .harness import evaluate, write_csv, write_plot
    from .runners import EngineRunner

    args.doing = "running the sampler configs"
    rows = evaluate(EngineRunner(engine, prompts, decode=not args.no_decode), configs, seeds, reference=reference,
                    cfg_scale=args.cfg_scale, read_captions=read_captions, progress=partial(print, flush=True))
    write_csv(rows, csv_path)
    write_plot(rows, plot_path, f"{engine.preset.name} ({args.model}), {len(prompts)} prompts x {len(seeds)} seeds")
    for row in rows:
        accuracy = " ".join(f"{k} {v:.2f}" for k, v in row.caption_accuracy.items())
        print(f"{row.config:>18}  {row.seconds:7.2f} s  latent L2 {row.latent_rel_l2:.4f}  PSNR {row.psnr_db:6.2f} dB  "
              f"SSIM {row.ssim:.4f}  std ratio {row.std_ratio:.3f}  {accuracy}")
    print(f"wrote {csv_path} and {plot_path}")


def _load(args: argparse.Namespace):
    """(engine, prompts, caption reader or None) for --model."""
    dtype = torch_dtype(args.dtype) if args.dtype else None
    if args.model == "proxy":
        from .proxy import CHECKPOINT, load_proxy_engine
        from .proxy_task import CAPTIONS, PROXY_CAPTIONS, caption_accuracy

        engine = load_proxy_engine(args.stdit or CHECKPOINT, device=args.device or "cpu", dtype=dtype)
        if not args.prompt:
            captions = PROXY_CAPTIONS
        else:  # prompts that are all captions of the task are scored by it
            by_text = {caption.text: caption for caption in CAPTIONS}
            captions = [by_text.get(prompt) for prompt in args.prompt]
            if None in captions:
                return engine, args.prompt, None
        prompts = [caption.text for caption in captions]
        return engine, prompts, lambda latents: caption_accuracy(latents, captions * (len(latents) // len(captions)))
    if not args.prompt:
        raise ConfigError("pass --prompt TEXT (repeatable): the prompts to judge the samplers on")
    from ..engine.api import Engine

    common = dict(device=args.device, dtype=dtype)
    if args.model == "random":
        return Engine.from_random_weights(args.preset, **common), args.prompt, None
    return Engine.from_pretrained(args.preset, stdit=args.stdit, t5=args.t5, vae=args.vae, **common), args.prompt, None
