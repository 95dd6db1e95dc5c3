"""Per-stage measurement of time and peak memory.

On CUDA the peaks are the caching allocator's (max allocated / max reserved, reset at each stage).
On the CPU they are the process's peak resident set size so far (it never goes down, so a stage's
figure is the peak up to the end of that stage).
"""
from __future__ import annotations

import functools
import resource
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass

import torch

GIB = 1024**3


@dataclass
class StageStats:
    name: str
    seconds: float
    peak_allocated: int  # bytes; CUDA allocator, or process peak RSS on the CPU
    peak_reserved: int  # bytes; CUDA allocator, or process peak RSS on the CPU

    def describe(self, device: torch.device) -> str:
        if device.type == "cuda":
            mem = f"peak {self.peak_allocated / GIB:.2f} GiB allocated / {self.peak_reserved / GIB:.2f} GiB reserved"
        else:
            mem = f"process peak RSS {self.peak_reserved / GIB:.2f} GiB"
        return f"{self.name:<8} {self.seconds:8.2f} s   {mem}"


def _process_peak_rss() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # Linux reports KiB


@contextmanager
def measure_stage(name: str, device: torch.device, record: list[StageStats]):
    """Times the body (synchronising the device at both ends) and appends its StageStats."""
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    yield
    if cuda:
        torch.cuda.synchronize(device)
        peaks = torch.cuda.max_memory_allocated(device), torch.cuda.max_memory_reserved(device)
    else:
        peaks = (_process_peak_rss(),) * 2
    record.append(StageStats(name, time.perf_counter() - start, *peaks))


# ---------------------------------------------------------------- predicting the peak before loading
#
# The activation terms are fitted to peaks measured on an H200 (torch 2.11, fp16, sdpa backend,
# 2026-11-28): STDiT forward activations ~11 token-sized tensors ([tokens, hidden] in the model
# dtype) plus ~0.2 GiB of workspaces and caption K/V; SD-VAE decode ~0.48 GiB per 512x512 frame in
# fp16 (SPEC section 6: 64 frames 30.2 GiB, 8 frames 4.3 GiB), proportional to pixels.
STDIT_ACTIVATION_TENSORS = 11
STDIT_WORKSPACE_BYTES = int(0.2 * GIB)
VAE_BYTES_PER_PIXEL_FP16 = 0.48 * GIB / (512 * 512)


@dataclass(frozen=True)
class MemoryEstimate:
    """Predicted peak allocated bytes of each stage and of the whole call."""

    encode: int
    denoise: int
    decode: int
    weights: dict

    @property
    def peak(self) -> int:
        return max(self.encode, self.denoise, self.decode)

    def describe(self) -> str:
        parts = ", ".join(f"{k} {v / GIB:.2f}" for k, v in self.weights.items())
        return (f"peak {self.peak / GIB:.2f} GiB (encode {self.encode / GIB:.2f}, denoise {self.denoise / GIB:.2f}, "
                f"decode {self.decode / GIB:.2f}); weights GiB: {parts}")


def _bytes(dtype: torch.dtype) -> int:
    return torch.empty(0, dtype=dtype).element_size()


@functools.lru_cache(maxsize=None)
def parameter_counts(preset) -> dict[str, int]:
    """Exact parameter (and buffer) counts of the preset's three models, built on the meta device."""
    from ..configs import get_preset
    from ..models.stdit import STDiT
    from ..models.text_encoder import TextEncoder
    from ..models.vae import VideoVAE

    preset = get_preset(preset)
    def count(module) -> int:
        return sum(t.numel() for t in (*module.parameters(), *module.buffers()))

    with torch.device("meta"):
        stdit = STDiT(**preset.stdit.to_kwargs())
        t5 = TextEncoder.build_model(preset.text)
        vae = VideoVAE.build_model(preset.vae)
    largest_t5_block = max(count(block) for block in t5.encoder.block)
    return {"stdit": count(stdit), "t5": count(t5), "t5_block": largest_t5_block, "vae": count(vae)}


def vae_frame_bytes(preset, dtype: torch.dtype) -> int:
    """Decode activations of one frame."""
    h, w = preset.image_size
    return int(VAE_BYTES_PER_PIXEL_FP16 * h * w * _bytes(dtype) / 2)


def estimate_memory(preset, prompts: int, mode: str, dtype: torch.dtype = torch.float16,
                    t5_dtype: torch.dtype = torch.float32, batch_size: int | None = None,
                    vae_chunk_frames: int | None = None) -> MemoryEstimate:
    """Predicted peak allocated GPU memory of `generate()` in placement `mode`, before loading."""
    from ..configs import get_preset

    preset = get_preset(preset)
    counts = parameter_counts(preset)
    weights = {"stdit": counts["stdit"] * _bytes(dtype), "t5": counts["t5"] * _bytes(t5_dtype),
               "vae": counts["vae"] * _bytes(dtype)}
    batch = min(prompts, batch_size or preset.prompts_per_batch)
    frames, rows, cols = (s // p for s, p in zip(preset.stdit.input_size, preset.stdit.patch_size))
    tokens = 2 * batch * frames * rows * cols  # the guidance batch
    denoise_act = STDIT_ACTIVATION_TENSORS * tokens * preset.stdit.hidden_size * _bytes(dtype) + STDIT_WORKSPACE_BYTES
    chunk = min(vae_chunk_frames or batch * preset.num_frames, batch * preset.num_frames)
    decode_act = chunk * vae_frame_bytes(preset, dtype)
    encode_act = batch * preset.text.max_length * preset.text.d_ff * 4 * _bytes(t5_dtype)

    if mode == "resident":
        resident = sum(weights.values())
        return MemoryEstimate(resident + encode_act, resident + denoise_act, resident + decode_act, weights)
    t5_on_gpu = weights["t5"]
    if mode == "sequential":  # one block at a time, beside the embedding and final norm
        t5_on_gpu = (counts["t5"] - counts["t5_block"] * preset.text.num_layers + counts["t5_block"]) * _bytes(t5_dtype)
    return MemoryEstimate(t5_on_gpu + encode_act, weights["stdit"] + denoise_act, weights["vae"] + decode_act, weights)


def choose_vae_chunk(preset, dtype: torch.dtype, free_bytes: int, total_frames: int, headroom: float = 0.8) -> int:
    """The most frames to decode at once within `headroom` of the free memory (at least 1)."""
    return max(1, min(total_frames, int(free_bytes * headroom) // vae_frame_bytes(preset, dtype)))
