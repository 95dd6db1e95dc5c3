"""The image VAE (SPEC section 5): a diffusers `AutoencoderKL` decoding video latents frame by frame.

There is no temporal compression: each latent frame is decoded as an image, `chunk_frames` images at
a time, which bounds the memory peak of the decode (the reference decodes up to 128 frames at once).
"""
from __future__ import annotations

import logging

import torch
from diffusers import AutoencoderKL
from diffusers.utils import is_accelerate_available

from ..configs import VAE_SCALE_FACTOR, VAEConfig
from ..errors import CheckpointError, ConfigError
from .unreadable import unreadable_reason
from .frames import quantize_frames
from .hub import resolve_model_dir
from .wrapped import WrappedModel
from .text_encoder import random_init

logger = logging.getLogger(__name__)


class VideoVAE(WrappedModel):
    @classmethod
    def from_pretrained(cls, path_or_id: str, *, device, dtype: torch.dtype = torch.float32) -> VideoVAE:
        """Load a diffusers-format folder (config.json + diffusion_pytorch_model.safetensors or .bin)
        or a hub repo id such as stabilityai/sd-vae-ft-ema."""
        folder = resolve_model_dir(path_or_id, what="VAE", files=["config.json"])
        try:
            # diffusers' low-memory load needs accelerate, optional here; asking without it logs a warning.
            model = AutoencoderKL.from_pretrained(
                folder, torch_dtype=dtype, low_cpu_mem_usage=is_accelerate_available()
            )
        except Exception as err:  # missing, damaged or unsafe files, a folder of another model: see unreadable_reason
            raise CheckpointError(
                f"cannot load the VAE from {folder}: {unreadable_reason(err)}. Expected a diffusers AutoencoderKL folder "
                "(config.json, diffusion_pytorch_model.safetensors or .bin), such as a download of "
                "stabilityai/sd-vae-ft-ema"
            ) from err
        return cls(model.to(device))

    @classmethod
    def from_random_weights(
        cls, cfg: VAEConfig, *, device, dtype: torch.dtype = torch.float32, seed: int = 0
    ) -> VideoVAE:
        """The AutoencoderKL of `cfg` (8x downsampling with 4 blocks) with random weights, built on
        `device` in `dtype`."""
        # Built in `dtype` rather than cast: diffusers' `to(dtype)` logs a warning on every call.
        with random_init(device, dtype, seed):
            model = cls.build_model(cfg)
        return cls(model)

    @staticmethod
    def build_model(cfg: VAEConfig) -> AutoencoderKL:
        """The AutoencoderKL architecture of `cfg`, on the current default device and dtype."""
        blocks = len(cfg.block_out_channels)
        return AutoencoderKL(
            down_block_types=("DownEncoderBlock2D",) * blocks,
            up_block_types=("UpDecoderBlock2D",) * blocks,
            block_out_channels=tuple(cfg.block_out_channels),
            layers_per_block=cfg.layers_per_block,
            norm_num_groups=cfg.norm_num_groups,
            latent_channels=cfg.latent_channels,
        )

    def decode(self, z: torch.Tensor, *, chunk_frames: int | None = None, to_uint8: bool = False) -> torch.Tensor:
        """Latent `[n, C, T, h, w]` -> video `[n, 3, T, 8h, 8w]` in about [-1, 1], in the VAE's dtype;
        with `to_uint8`, the saved pixels instead: uint8 `[n, T, 8h, 8w, 3]` on the CPU.

        The n*T frames are decoded `chunk_frames` at a time (None: all at once) into one preallocated
        output, so the peak is the output plus one chunk's activations. With `to_uint8` each chunk
        is quantised on the device and copied out, so the float video never sits on the device.
        A chunk that runs out of GPU memory is retried in halves.
        """
        channels = self.model.config.latent_channels
        if z.ndim != 5 or z.shape[1] != channels or z.numel() == 0:
            raise ConfigError(
                f"VAE latent must have shape [n, {channels}, T, h, w], none of them 0; got {list(z.shape)}"
            )
        if chunk_frames is not None and chunk_frames < 1:
            raise ConfigError(f"chunk_frames must be a positive number of frames or None; got {chunk_frames}")
        n, _, frames = z.shape[:3]
        with torch.inference_mode():
            images = z.to(self.device, self.dtype).transpose(1, 2).flatten(0, 1) / VAE_SCALE_FACTOR
            step = chunk_frames or len(images)
            video, start = None, 0
            while start < len(images):
                try:
                    decoded = self.model.decode(images[start:start + step]).sample
                except torch.cuda.OutOfMemoryError:
                    if step == 1:
                        raise
                    step = max(1, step // 2)
                    torch.cuda.empty_cache()
                    logger.warning("VAE decode ran out of GPU memory; retrying with %d frames at a time", step)
                    continue
                if to_uint8:
                    decoded = quantize_frames(decoded.transpose(0, 1)).cpu()  # [chunk, H, W, 3]
                    if video is None:
                        video = decoded.new_empty(n, frames, *decoded.shape[1:])
                else:
                    decoded = decoded.transpose(0, 1)  # [3, chunk, H, W]
                    if video is None:
                        video = decoded.new_empty(n, decoded.shape[0], frames, *decoded.shape[2:])
                for offset in range(decoded.shape[0] if to_uint8 else decoded.shape[1]):
                    b, t = divmod(start + offset, frames)  # flat frame index -> (sample, frame)
                    if to_uint8:
                        video[b, t] = decoded[offset]
                    else:
                        video[b, :, t] = decoded[:, offset]
                start += step
        return video
