"""Model presets: frozen descriptions of the released Open-Sora v1.0 configurations (SPEC section 1).

A preset says what to build (architectures of STDiT, T5 and VAE), which weights to load by default
(hub ids) and how to sample and save (latent shape, fps, prompts per batch). Nothing here loads
anything.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

from .errors import ConfigError

VAE_SCALE_FACTOR = 0.18215  # SD VAE latent scaling used by the reference
VAE_DOWNSAMPLE = 8  # spatial compression of the VAE; no temporal compression


@dataclass(frozen=True)
class STDiTConfig:
    """Constructor arguments of `STDiT`; the key names are those of the golden `config` dicts."""

    input_size: tuple[int, int, int]  # latent (T, H, W)
    in_channels: int = 4
    patch_size: tuple[int, int, int] = (1, 2, 2)
    hidden_size: int = 1152
    depth: int = 28
    num_heads: int = 16
    mlp_ratio: float = 4.0
    caption_channels: int = 4096
    model_max_length: int = 120
    space_scale: float = 1.0
    time_scale: float = 1.0
    pred_sigma: bool = True

    def to_kwargs(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class T5Config:
    """The T5 v1.1 encoder: the hub id of the real weights and, for random weights, its shape."""

    hub_id: str = "DeepFloyd/t5-v1_1-xxl"
    d_model: int = 4096
    d_kv: int = 64
    d_ff: int = 10240
    num_layers: int = 24
    num_heads: int = 64
    vocab_size: int = 32128
    max_length: int = 120


@dataclass(frozen=True)
class VAEConfig:
    """The diffusers AutoencoderKL: the hub id of the real weights and, for random weights, its shape."""

    hub_id: str = "stabilityai/sd-vae-ft-ema"
    block_out_channels: tuple[int, ...] = (128, 256, 512, 512)
    layers_per_block: int = 2
    norm_num_groups: int = 32
    latent_channels: int = 4


@dataclass(frozen=True)
class Preset:
    name: str
    num_frames: int
    image_size: tuple[int, int]  # (H, W) in pixels
    fps: int
    prompts_per_batch: int  # as in the reference script
    stdit: STDiTConfig
    text: T5Config = field(default_factory=T5Config)
    vae: VAEConfig = field(default_factory=VAEConfig)
    stdit_hub_id: str | None = "hpcai-tech/Open-Sora"
    stdit_filename: str | None = None

    @property
    def latent_shape(self) -> tuple[int, int, int, int]:
        """(C, T, H, W) of one sample's latent."""
        h, w = self.image_size
        return (self.stdit.in_channels, self.num_frames, h // VAE_DOWNSAMPLE, w // VAE_DOWNSAMPLE)


def _xl2(frames: int, size: int, space_scale: float, time_scale: float) -> STDiTConfig:
    return STDiTConfig(
        input_size=(frames, size // VAE_DOWNSAMPLE, size // VAE_DOWNSAMPLE),
        space_scale=space_scale,
        time_scale=time_scale,
    )


PRESETS: dict[str, Preset] = {
    "16x256x256": Preset(
        "16x256x256", 16, (256, 256), fps=8, prompts_per_batch=2,
        stdit=_xl2(16, 256, 0.5, 1.0), stdit_filename="OpenSora-v1-HQ-16x256x256.pth",
    ),
    "16x512x512": Preset(
        "16x512x512", 16, (512, 512), fps=8, prompts_per_batch=2,
        stdit=_xl2(16, 512, 1.0, 1.0), stdit_filename="OpenSora-v1-HQ-16x512x512.pth",
    ),
    "64x512x512": Preset(
        "64x512x512", 64, (512, 512), fps=12, prompts_per_batch=1,
        stdit=_xl2(64, 512, 1.0, 2 / 3), stdit_filename="OpenSora-v1-HQ-16x512x512.pth",
    ),
    # Random weights only: small enough to run end to end on a laptop CPU in seconds.
    "tiny": Preset(
        "tiny", 4, (64, 64), fps=8, prompts_per_batch=2,
        stdit=STDiTConfig(
            input_size=(4, 8, 8), hidden_size=144, depth=2, num_heads=2,
            caption_channels=64, space_scale=0.5, time_scale=1.0,
        ),
        text=T5Config(hub_id="", d_model=64, d_kv=32, d_ff=128, num_layers=2, num_heads=2,
                      vocab_size=32128),
        vae=VAEConfig(hub_id="", block_out_channels=(16, 16, 16, 16), layers_per_block=1,
                      norm_num_groups=8),
        stdit_hub_id=None,
    ),
}


def get_preset(name: str | Preset) -> Preset:
    if isinstance(name, Preset):
        return name
    try:
        return PRESETS[name]
    except KeyError:
        raise ConfigError(
            f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}"
        ) from None


def token_grid(preset: Preset) -> tuple[int, int]:
    """(frames, spatial positions) of the STDiT's token grid for `preset`."""
    (t, h, w), (pt, ph, pw) = preset.stdit.input_size, preset.stdit.patch_size
    return t // pt, (h // ph) * (w // pw)
