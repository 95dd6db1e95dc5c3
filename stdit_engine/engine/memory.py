"""Per-stage measurement of time and peak memory, and the peak predicted before loading.

On CUDA the peaks are the caching allocator's (max allocated / max reserved, reset at each stage).
On other devices the allocated peak is the most bytes of live tensor storages during the stage,
counted by `LiveTensorPeak` from the weights present at entry; the reserved figure is the process's
peak resident set size so far (it never goes down, so a stage's figure is the peak up to its end).
"""
from __future__ import annotations

import functools
import resource
import sys
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Iterable

import torch
from torch import nn

from ..configs import VAEConfig, get_preset, token_grid
from ..kernels.registry import backend_name
from .live_memory import LiveTensorPeak
from .step_cache import buffer_bytes, buffer_layout, recorded_at_most

GIB = 1024**3


def format_bytes(n: int) -> str:
    """GiB, or MiB below one GiB (the tiny preset's stages hold a few MiB)."""
    return f"{n / GIB:.2f} GiB" if n >= GIB else f"{n / 2**20:.1f} MiB"


@dataclass
class StageStats:
    name: str
    seconds: float
    peak_allocated: int  # bytes; CUDA allocator, or live tensor storages elsewhere
    peak_reserved: int  # bytes; CUDA allocator, or process peak RSS elsewhere
    # Seconds of named one-off parts of the stage, e.g. the denoise's "compile" and "capture" when
    # it captured a step (engine/denoise.py): what a first call pays and a warm one does not.
    parts: dict[str, float] = field(default_factory=dict)

    def describe(self, device: torch.device, name_width: int = 8) -> str:
        if device.type == "cuda":
            mem = f"peak {format_bytes(self.peak_allocated)} allocated / {format_bytes(self.peak_reserved)} reserved"
        else:
            mem = f"peak {format_bytes(self.peak_allocated)} of tensors / process peak RSS {format_bytes(self.peak_reserved)}"
        parts = ", ".join(f"{name} {seconds:.2f} s" for name, seconds in self.parts.items())
        return f"{self.name:<{name_width}} {self.seconds:8.2f} s   {mem}" + (f"   (of which {parts})" if parts else "")


class CallStats(list):
    """One call's StageStats in order, with `plan`: the one line of the plan that ran them (the
    engine's describe(): kernels, CUDA graphs, the placement and why it was chosen)."""

    def __init__(self, plan: str, stages: Iterable[StageStats] = ()):
        super().__init__(stages)
        self.plan = plan

    def describe(self, device: torch.device) -> str:
        """The stage report: the plan's line, then one line a stage."""
        width = max((len(stats.name) for stats in self), default=0)
        return "\n".join([f"{self.plan}:", *("  " + stats.describe(device, width) for stats in self)])


def _process_peak_rss() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # Linux reports KiB


def _weights(models: Iterable[nn.Module]) -> Iterable[torch.Tensor]:
    return (t for model in models for t in (*model.parameters(), *model.buffers()))


@contextmanager
def measure_stage(name: str, device: torch.device, record: list[StageStats], models: Iterable[nn.Module] = ()):
    """Times the body (synchronising the device at both ends) and appends its StageStats. The body
    gets the stage's `parts` (a dict) to add the seconds of its one-off parts to.

    Off CUDA, the weights of `models` that are on `device` count towards the peak from the start.
    """
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    live = nullcontext() if cuda else LiveTensorPeak(device, present=_weights(models))
    parts: dict[str, float] = {}
    start = time.perf_counter()
    with live:
        yield parts
    if cuda:
        torch.cuda.synchronize(device)
        peaks = torch.cuda.max_memory_allocated(device), torch.cuda.max_memory_reserved(device)
    else:
        peaks = live.peak, _process_peak_rss()
    record.append(StageStats(name, time.perf_counter() - start, *peaks, parts=parts))


# ---------------------------------------------------------------- predicting the peak before loading
#
# The estimate is of the peak ALLOCATED bytes (on CUDA torch.cuda.max_memory_allocated, the live
# tensor peak elsewhere), not the reserved: the allocator's cache holds more (RESERVE_FACTOR,
# VAE_RESERVE_FACTOR), and a captured step's memory pool is reserved between calls but allocated
# only while the step runs eagerly or is captured (a replay allocates nothing). Each stage's figure
# is the most that any call allocates in it, the first call's capture included.
#
# Each stage's activations are counted in tensors of the preset's own sizes: the set alive at the
# stage's peak, read from traces of live tensors (LiveTensorPeak on the CPU, fp32: the tiny preset,
# and the full presets' widths at small sizes). On CUDA the allocator's peak also holds memory that
# no tensor of these traces accounts for; the CUDA-only terms below are that excess, fitted to the
# allocator's peaks on a GPU and not traced further (BENCHMARKS.md, "Constants in the code").
#
# STDiT, in the MLP: the block's input, its residual sum and the modulated norm ([tokens, hidden]
# each) beside, at the GELU, fc1's output and the GELU's (mlp_ratio times wider each): 3 + 2 x 4 =
# 11 token-sized tensors, as the GPU fit of the sdpa backend found; and at fc2, the GELU's output
# and fc2's: 3 + 4 + 1 = 8, the peak of the triton backend on CUDA, whose fc1 computes the GELU in
# its epilogue (one wide tensor, not two). Plus every block's caption K/V, computed once per call.
# The eager backend's attention scores are assumed smaller than the MLP's tensors: true of the
# tiny preset; the CUDA backends never materialise them. With FP8 linears (models/fp8.py) fc2
# runs while fc1's output (4 tensors wide) is still referenced, beside its e4m3 copy (half the
# bytes: 2) and fc2's output: 3 + 4 + 2 + 1 = 10 (counted from the code and checked against the
# allocator's peak on a GPU, BENCHMARKS.md; the CPU reference quantizer's fp32 temporaries, a
# tests-only path, are not counted).
STDIT_TOKEN_TENSORS = 3
# The triton backend's step (fp16 / bf16 linears) on CUDA peaks this many token-sized tensors above
# the MLP's count: fitted to the allocator's peaks of first calls (eager warm-up and capture of the
# step) and of sequential calls (each captures again), not traced (its kernels do not run on the
# CPU; BENCHMARKS.md).
STDIT_TRITON_EXTRA_TOKEN_TENSORS = 2
# Allocated on CUDA beyond the weights and the tensors counted here, between calls as well: the
# libraries' workspaces (cuBLAS keeps one per stream that ran a GEMM), as the GPU fit found.
STDIT_CUDA_EXTRA_BYTES = int(0.142 * GIB)
# T5 v1.1, in its gated-GELU FFN: wi_0's output, two temporaries of the tanh GELU and wi_1's output
# ([tokens, d_ff] each) beside the embeddings, the residual stream, its sum and the normed input
# ([tokens, d_model] each), and the relative position bias [heads, L, L], as traced. (On the tiny
# preset the int64 [L, L] tensors of the position bucketing peak a little higher.)
T5_FFN_TENSORS = 4
T5_MODEL_TENSORS = 4
# VAE decoder (diffusers), in its last up-block, at full resolution: the block's input (its caller
# keeps it for the whole block) and, in a resnet, its input, conv2's output, the residual sum and
# that sum scaled (vae_peak_channels; traced for SD-VAE's widths too). The allocator's peaks on a
# GPU (and the reference's, SPEC section 6) held a constant multiple of those maps, proportionally
# to the chunk's pixels: presumably cuDNN's convolution workspaces (BENCHMARKS.md).
VAE_CUDA_FACTOR = 1.28

# Reserved memory runs above the allocated peak (allocator rounding, fragmentation).
RESERVE_FACTOR = 1.25
# The VAE decode's many activation sizes fragment the allocator's cache: its reserved memory runs to
# about twice its allocated peak (BENCHMARKS.md).
VAE_RESERVE_FACTOR = 2.0
# Placement "lean" keeps the default run of every preset within this much reserved GPU memory: its
# decode chunk is chosen to fit beside what stays on the device (test_placement checks the rest).
LEAN_RESERVED_BYTES = 8 * GIB
# A resident decode takes at most this many bytes of activations at once, so that resident placement
# stays below the reference's own peaks (SPEC section 6), where every frame is decoded at once.
RESIDENT_DECODE_BYTES = 2 * GIB


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
    return dtype.itemsize


def _is_cuda(device: torch.device | str) -> bool:
    return torch.device(device).type == "cuda"


@functools.lru_cache(maxsize=None)
def parameter_counts(preset) -> dict[str, int]:
    """Exact parameter (and buffer) counts of the preset's three models, built on the meta device."""
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
    return {"stdit": count(stdit), "stdit_fp8_weights": stdit.fp8_weight_count(), "t5": count(t5),
            "t5_block": largest_t5_block, "vae": count(vae)}


def t5_activation_bytes(preset, batch: int, t5_dtype: torch.dtype) -> int:
    """Encode activations of `batch` prompts."""
    text = preset.text
    per_token = T5_FFN_TENSORS * text.d_ff + T5_MODEL_TENSORS * text.d_model
    position_bias = text.num_heads * text.max_length**2
    return (batch * text.max_length * per_token + position_bias) * _bytes(t5_dtype)


def stdit_step_bytes(preset, batch: int, dtype: torch.dtype, device: torch.device | str,
                     backend: str = "auto", fp8: bool = False) -> int:
    """The activations of one denoising step of `batch` samples (a guidance batch of twice as many)
    at its peak: what a captured step's memory pool holds (reserved between calls)."""
    cfg = preset.stdit
    frames, positions = token_grid(preset)
    tokens = 2 * batch * frames * positions
    if fp8:
        mlp_peak = STDIT_TOKEN_TENSORS + 1.5 * cfg.mlp_ratio + 1
    else:
        gelu_in_fc1 = _is_cuda(device) and backend_name(backend, device) == "triton"
        at_gelu = STDIT_TOKEN_TENSORS + (1 if gelu_in_fc1 else 2) * cfg.mlp_ratio
        mlp_peak = max(at_gelu, STDIT_TOKEN_TENSORS + cfg.mlp_ratio + 1)
        mlp_peak += STDIT_TRITON_EXTRA_TOKEN_TENSORS if gelu_in_fc1 else 0
    return int(mlp_peak * tokens * cfg.hidden_size) * _bytes(dtype)


def caption_kv_bytes(preset, batch: int, dtype: torch.dtype) -> int:
    """Every block's caption K/V for `batch` samples' guidance rows, computed once per call."""
    cfg = preset.stdit
    return cfg.depth * 2 * (2 * batch) * cfg.model_max_length * cfg.hidden_size * _bytes(dtype)


def graph_kept_bytes(preset, batch: int, dtype: torch.dtype, device: torch.device | str) -> int:
    """Allocated between calls on CUDA while the step's graph is kept (resident, lean): the graph's
    static copy of the caption K/V (its other static buffers are latent-sized: a few MiB) and the
    libraries' workspaces. Its memory pool is reserved, not allocated. Nothing off CUDA."""
    return caption_kv_bytes(preset, batch, dtype) + STDIT_CUDA_EXTRA_BYTES if _is_cuda(device) else 0


def stdit_activation_bytes(preset, batch: int, dtype: torch.dtype, device: torch.device | str,
                           backend: str = "auto", fp8: bool = False) -> int:
    """Denoise activations of `batch` samples at the stage's peak, a capture's on CUDA: the step's
    activations beside the call's caption K/V and, on CUDA, what the graph keeps (graph_kept_bytes)."""
    return (stdit_step_bytes(preset, batch, dtype, device, backend, fp8) + caption_kv_bytes(preset, batch, dtype)
            + graph_kept_bytes(preset, batch, dtype, device))


def step_cache_bytes(preset, batch: int, dtype: torch.dtype, cache: str | None) -> int:
    """The buffers of a step cache of mode `cache` (None: none) for `batch` samples' guidance rows:
    the residual cache's one residual, the attention cache's stored outputs of every block (all
    three kinds: the most a plan stores), as engine/step_cache.py lays them out."""
    if cache is None:
        return 0
    frames, positions = token_grid(preset)
    layout = buffer_layout(recorded_at_most(cache), 2 * batch, frames * positions, preset.stdit.hidden_size,
                           preset.stdit.depth, dtype)
    return buffer_bytes(layout)


def vae_peak_channels(vae: VAEConfig) -> int:
    """Channels of the full-resolution feature maps alive at once at the decoder's peak.

    The last up-block takes the second block's width (upsampled) and makes the first block's; its
    peak is at a resnet's residual sum (the block input beside four maps of the output width) or,
    in its first resnet, at the SiLU (the input, its GroupNorm and its SiLU). SD-VAE: 256 + 4 x 128
    = 3 x 256 = 768 channels; the tiny preset's: 16 + 4 x 16 = 80.
    """
    block_input, block_output = vae.block_out_channels[1], vae.block_out_channels[0]
    return max(block_input + 4 * block_output, 3 * block_input)


def vae_frame_bytes(preset, dtype: torch.dtype, device: torch.device | str = "cuda") -> int:
    """Decode activations of one frame."""
    h, w = preset.image_size
    frame = vae_peak_channels(preset.vae) * h * w * _bytes(dtype)
    return int(frame * VAE_CUDA_FACTOR) if _is_cuda(device) else frame


def estimate_memory(preset, prompts: int, mode: str, dtype: torch.dtype = torch.float16,
                    t5_dtype: torch.dtype = torch.float32, batch_size: int | None = None,
                    vae_chunk_frames: int | None = None, device: torch.device | str = "cuda",
                    backend: str = "auto", fp8: bool = False, cache: str | None = None) -> MemoryEstimate:
    """Predicted peak ALLOCATED memory (not reserved: see above) of each stage of `generate()` on
    `device` in placement `mode` with the STDiT kernel `backend` (and FP8 block linears: a byte a
    weight, a wider MLP peak), before loading; on CUDA with the step's CUDA graph (the default).
    Each stage's figure is the most any call allocates in it: the denoise's is the first call's
    (its step runs eagerly, then is captured); later calls replay the graph and allocate less.
    `cache`: the calls' step cache ("residual", "attention"; generate's cache=), whose buffers
    the denoise holds and, on CUDA, its graph keeps between calls (resident and lean, as the rest
    of what it keeps: graph_kept_bytes)."""
    preset = get_preset(preset)
    counts = parameter_counts(preset)
    stdit_weights = counts["stdit"] * _bytes(dtype) - fp8 * counts["stdit_fp8_weights"] * (_bytes(dtype) - 1)
    weights = {"stdit": stdit_weights, "t5": counts["t5"] * _bytes(t5_dtype),
               "vae": counts["vae"] * _bytes(dtype)}
    batch = min(prompts, batch_size or preset.prompts_per_batch)
    denoise_act = stdit_activation_bytes(preset, batch, dtype, device, backend, fp8)
    chunk = min(vae_chunk_frames or batch * preset.num_frames, batch * preset.num_frames)
    decode_act = chunk * vae_frame_bytes(preset, dtype, device)
    encode_act = t5_activation_bytes(preset, batch, t5_dtype)
    # Where the step's graph stays between calls, the encode and decode of a later call see its
    # static buffers and the workspaces (not its pool: reserved, not allocated).
    graph_kept = graph_kept_bytes(preset, batch, dtype, device)
    cache_buffers = step_cache_bytes(preset, batch, dtype, cache)
    denoise_act += cache_buffers
    graph_kept += cache_buffers if _is_cuda(device) else 0

    if mode == "resident":
        resident = sum(weights.values())
        return MemoryEstimate(resident + graph_kept + encode_act, resident + denoise_act,
                              resident + graph_kept + decode_act, weights)
    t5_block = counts["t5_block"] * _bytes(t5_dtype)
    t5_streamed = counts["t5"] * _bytes(t5_dtype) - t5_block * (preset.text.num_layers - 1)  # one block in
    if mode == "lean":
        # The STDiT and its graph stay between calls; T5 streams with the next block prefetched: two blocks in.
        kept = weights["stdit"] + graph_kept
        return MemoryEstimate(kept + t5_streamed + t5_block + encode_act, weights["stdit"] + denoise_act,
                              kept + weights["vae"] + decode_act, weights)
    t5_on_gpu = t5_streamed if mode == "sequential" else weights["t5"]
    return MemoryEstimate(t5_on_gpu + encode_act, weights["stdit"] + denoise_act, weights["vae"] + decode_act, weights)


def decode_chunk(preset, samples: int, mode: str, dtype: torch.dtype, t5_dtype: torch.dtype, free_bytes: int,
                 device: torch.device | str = "cuda", backend: str = "auto", fp8: bool = False,
                 cache: str | None = None) -> int:
    """Frames of `samples` videos to decode at once on a GPU with `free_bytes` free, in placement
    `mode` (with a step cache of mode `cache`, as estimate_memory)."""
    budget = decode_budget(preset, samples, mode, dtype, t5_dtype, free_bytes, device, backend, fp8, cache)
    preset = get_preset(preset)
    return choose_vae_chunk(preset, dtype, budget, samples * preset.num_frames, device=device)


def decode_budget(preset, samples: int, mode: str, dtype: torch.dtype, t5_dtype: torch.dtype, free_bytes: int,
                  device: torch.device | str = "cuda", backend: str = "auto", fp8: bool = False,
                  cache: str | None = None) -> int:
    """Bytes of decode activations to allow at once on a GPU with `free_bytes` free, per placement:
    resident, what is free (up to RESIDENT_DECODE_BYTES); lean, what fits in LEAN_RESERVED_BYTES
    beside the STDiT, its graphs' memory and the VAE, counting the VAE's fragmentation; offload and
    sequential, half the denoise stage's estimated peak, so that the decode does not raise it."""
    if mode == "resident":
        return min(free_bytes, RESIDENT_DECODE_BYTES)
    estimate = estimate_memory(preset, samples, mode, dtype, t5_dtype, vae_chunk_frames=1, device=device,
                               backend=backend, fp8=fp8, cache=cache)
    if mode == "lean":
        preset = get_preset(preset)
        # Reserved beside the decode: what stays allocated (with the allocator's margin) and the
        # captured step's memory pool, reserved whole.
        kept = estimate.decode - vae_frame_bytes(preset, dtype, device)
        pool = stdit_step_bytes(preset, samples, dtype, device, backend, fp8)
        budget = LEAN_RESERVED_BYTES - RESERVE_FACTOR * kept - pool
        return min(free_bytes, max(0, int(budget / VAE_RESERVE_FACTOR)))
    return estimate.denoise // 2


def choose_vae_chunk(preset, dtype: torch.dtype, free_bytes: int, total_frames: int, headroom: float = 0.8,
                     device: torch.device | str = "cuda") -> int:
    """The most frames to decode at once within `headroom` of the free memory (at least 1)."""
    return max(1, min(total_frames, int(free_bytes * headroom) // vae_frame_bytes(preset, dtype, device)))
