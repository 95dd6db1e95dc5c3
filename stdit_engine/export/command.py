"""`stdit-engine export onnx|aoti`: the command line of the exports."""
from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import ConfigError
from ..files import check_output_target
from ..options import DTYPES, torch_dtype

FORMATS = ("onnx", "aoti")


def add_parser(commands) -> None:
    parser = commands.add_parser("export", help="the STDiT forward as ONNX or an AOTInductor package")
    parser.add_argument("format", choices=FORMATS)
    parser.add_argument("--preset", required=True, help="the preset whose STDiT (latent shape) is exported")
    parser.add_argument("--stdit", help="STDiT checkpoint file or hub repo id")
    parser.add_argument("--random-weights", action="store_true", help="random weights of the preset's STDiT")
    parser.add_argument("--out", type=Path, required=True, help="model.onnx or model.pt2; the spec goes to OUT.json")
    parser.add_argument("--dtype", choices=list(DTYPES), default="fp32")
    parser.add_argument("--device", default="cpu", help="cpu or cuda; an AOTInductor package runs on this device type")
    parser.add_argument("--batch", type=int, help="traced guidance batch 2B (default: the preset's, 2 per prompt)")
    parser.add_argument("--max-batch", type=int, help="largest 2B the artifact accepts (default: twice --batch)")
    parser.add_argument("--block", type=int, help="export this one STDiT block instead of the full forward")
    parser.add_argument("--no-validate", action="store_true", help="skip the comparison with the eager forward")


def cmd_export(args: argparse.Namespace) -> None:
    from ..configs import get_preset

    preset = get_preset(args.preset)
    if bool(args.stdit) == args.random_weights:
        raise ConfigError("pass the weights to export: --stdit PATH (checkpoint file or hub id) or --random-weights")
    check_output_target(args.out)
    args.doing = f"exporting {args.out}"
    import torch

    from ..devices import resolve_device
    from ..models.checkpoint import build_stdit
    from ..models.hub import resolve_model_file

    if args.format == "onnx":
        from .onnx import export_onnx as export, require_packages, validate_onnx as validate

        require_packages("onnx", "onnxscript", *(() if args.no_validate else ("onnxruntime",)))
    else:
        from .aoti import export_aoti as export, validate_aoti as validate
    device = resolve_device(args.device)
    checkpoint = args.stdit and resolve_model_file(args.stdit, preset.stdit_filename, what="STDiT checkpoint")
    model = build_stdit(preset, device, torch_dtype(args.dtype), "eager", checkpoint=checkpoint).eval()
    batch = args.batch or 2 * preset.prompts_per_batch
    spec = export(model, args.out, preset.name, batch=batch, max_batch=args.max_batch, block=args.block)
    written = sorted(p for p in args.out.parent.iterdir() if p.name.startswith(args.out.name))
    print("wrote " + ", ".join(f"{p} ({p.stat().st_size / 2**20:.1f} MiB)" for p in written))
    print(f"inputs {', '.join(f'{t.name} {list(t.shape)} {t.dtype}' for t in spec.inputs)}; "
          f"2B from {spec.batch_range[0]} to {spec.batch_range[2]}")
    if args.format == "onnx" and args.dtype == "bf16":
        print("not validated: ONNX Runtime has no CPU kernels for bfloat16")
    elif not args.no_validate:
        with torch.inference_mode():
            error = validate(model, args.out, batch=2)
        print(f"validation against the eager forward (2B = 2): relative error {error:.2e}")
