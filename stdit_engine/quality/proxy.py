"""The proxy model: a small STDiT of this package's architecture on the 16x256x256 preset's latent
grid (4 x 16 x 32 x 32, so the token counts are the real model's), trained here on the task of
quality/proxy_task.py by tools/train_proxy.py. Its checkpoint carries the text encoder's weights it
was trained with (random weights differ between devices) and the STDiT's width, depth and heads;
the VAE is the tiny random one, used only to turn latents into frames for PSNR/SSIM, so both runs
being compared decode through the same one.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch

from ..configs import PRESETS, Preset, STDiTConfig, T5Config
from ..errors import CheckpointError
from ..models.stdit import STDiT
from ..models.text_encoder import TextEncoder
from ..models.vae import VideoVAE

CHECKPOINT = Path(__file__).parent / "proxy_stdit.pt"

PROXY_PRESET = Preset(
    "proxy-16x256x256", 16, (256, 256), fps=8, prompts_per_batch=2,
    stdit=STDiTConfig(input_size=(16, 32, 32), hidden_size=128, depth=4, num_heads=2, caption_channels=64,
                      model_max_length=16, space_scale=0.5, time_scale=1.0),
    text=T5Config(hub_id="", d_model=64, d_kv=32, d_ff=128, num_layers=2, num_heads=2, vocab_size=1024,
                  max_length=16),
    vae=PRESETS["tiny"].vae,
    stdit_hub_id=None,
)
# What a checkpoint may change of PROXY_PRESET's STDiT (tools/train_proxy.py records them).
ARCHITECTURE_KEYS = ("hidden_size", "depth", "num_heads")


def proxy_preset(architecture: dict | None = None) -> Preset:
    """PROXY_PRESET with the STDiT's width, depth and heads of `architecture` (a checkpoint's record
    of what it was trained as; PROXY_PRESET's own when None)."""
    if not architecture:
        return PROXY_PRESET
    unknown = set(architecture) - set(ARCHITECTURE_KEYS)
    if unknown:
        raise CheckpointError(f"proxy checkpoint records unknown architecture keys {sorted(unknown)}")
    return replace(PROXY_PRESET, stdit=replace(PROXY_PRESET.stdit, **architecture))


def build_proxy_parts(seed: int = 0, preset: Preset = PROXY_PRESET) -> tuple[STDiT, TextEncoder]:
    """The proxy's STDiT and text encoder with the random weights training starts from (CPU, fp32)."""
    torch.manual_seed(seed)
    model = STDiT(**preset.stdit.to_kwargs())
    text_encoder = TextEncoder.from_random_weights(preset.text, device="cpu", seed=seed)
    return model, text_encoder


def load_proxy_engine(checkpoint: str | Path = CHECKPOINT, device: str | torch.device = "cpu",
                      dtype: torch.dtype | None = None):
    """An Engine on the trained proxy (STDiT and text encoder from `checkpoint`, random tiny VAE);
    `dtype` of the STDiT and VAE, float32 by default (the text encoder stays float32)."""
    from ..engine.api import Engine
    from ..engine.plan import resolve_plan

    dtype = dtype or torch.float32

    path = Path(checkpoint)
    if not path.is_file():
        raise CheckpointError(f"no proxy checkpoint at {path}: train one with `python tools/train_proxy.py`")
    state = torch.load(path, map_location="cpu", weights_only=True)
    preset = proxy_preset(state.get("architecture"))
    model, text_encoder = build_proxy_parts(preset=preset)
    model.load_state_dict(state["stdit"])
    text_encoder.model.load_state_dict(state["text_encoder"])
    plan = resolve_plan(preset, device=device, dtype=dtype, backend=model.ops.name, placement="resident",
                        parallel="none")
    vae = VideoVAE.from_random_weights(preset.vae, device=plan.device, dtype=dtype, seed=0)
    return Engine(plan, model.to(device=plan.device, dtype=dtype), text_encoder.to(plan.device), vae)
