"""The runtime plan: every load-time choice of an `Engine`, resolved once, before anything loads.

`resolve_plan` turns what the caller asked for (with its "auto"s and Nones) into a frozen
`RuntimePlan`: the parallel plan, this rank's device, the dtypes, the kernel backend, FP8, the
placement and CUDA graphs. Both constructors call it, every later stage reads it, and `stdit-engine
info`, the progress output and the stage report print it (`describe`), so what ran is what was
printed. A new load-time option is one more field here; per-call options (steps, sampler,
guidance, ...) stay arguments of `generate()`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

import torch

from ..configs import Preset, get_preset
from ..devices import default_dtype, resolve_device
from ..errors import ConfigError
from ..values import is_integer
from ..kernels.registry import resolve_backend
from ..models.fp8 import check_fp8_supported
from ..parallel import ParallelPlan, setup_parallel
from .placement_choice import choose_placement
from .step_cache import recorded_at_most


@dataclass(frozen=True)
class RuntimePlan:
    preset: Preset
    device: torch.device
    dtype: torch.dtype  # STDiT and VAE
    t5_dtype: torch.dtype
    backend: str  # the kernel backend resolved ("auto" replaced): eager, sdpa or triton
    fp8: bool  # the STDiT block linears in FP8
    placement: str  # the placement mode resolved ("auto" replaced)
    placement_reason: str  # why that mode: one line (engine/placement_choice.py)
    cuda_graphs: bool  # replay each denoising step from a CUDA graph (on CUDA devices)
    parallel: ParallelPlan | None  # None: this process does all the work
    step_cache: str | None = None  # the step cache whose buffers the placement leaves room for
    warmup: tuple[int, ...] = ()  # the batch sizes whose first call loading pays (Engine.warmup)

    def describe(self) -> str:
        """One line: "16x256x256 on cuda:0, float16 (T5 float32), triton kernels, CUDA graphs, placement
        lean (why)"."""
        parts = [f"{self.preset.name} on {self.device}",
                 f"{_name(self.dtype)}{' with FP8 block linears' if self.fp8 else ''} (T5 {_name(self.t5_dtype)})",
                 f"{self.backend} kernels",
                 "CUDA graphs" if self.cuda_graphs and self.device.type == "cuda" else "no CUDA graphs"]
        if self.parallel is not None:
            parts.append(f"parallel {self.parallel.mode}, rank {self.parallel.rank} of {self.parallel.world_size}")
        parts.append(f"placement {self.placement} ({self.placement_reason})")
        return ", ".join(parts)


def _name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def check_dtype(dtype, name: str) -> torch.dtype:
    if not isinstance(dtype, torch.dtype) or dtype not in FLOAT_DTYPES:
        raise ConfigError(f"{name} must be torch.float32, torch.float16 or torch.bfloat16, got {dtype!r}")
    return dtype


def resolve_plan(preset: str | Preset, *, device: str | torch.device | None = None, dtype: torch.dtype | None = None,
                 t5_dtype: torch.dtype = torch.float32, backend: str = "auto", cuda_graphs: bool = True,
                 placement: str = "auto", parallel: str = "auto", fp8: bool = False,
                 step_cache: str | None = None, warmup: bool | Sequence[int] | None = None) -> RuntimePlan:
    """The plan for these options (Engine.from_pretrained's), checked before anything is loaded:
    ConfigError / DeviceError for a bad backend, an FP8 request the device or dtype cannot serve,
    or a placement that does not fit."""
    preset = get_preset(preset)
    parallel_plan, device = setup_parallel(parallel, preset, None if device is None else resolve_device(device))
    device = resolve_device(device)
    dtype = default_dtype(device) if dtype is None else check_dtype(dtype, "dtype")
    check_dtype(t5_dtype, "t5_dtype")
    backend = resolve_backend(backend, device).name
    if fp8:
        check_fp8_supported(device, dtype)
    if step_cache is not None:
        recorded_at_most(step_cache)  # refuses an unknown mode
    choice = choose_placement(placement, preset, device, dtype, t5_dtype, backend, fp8, step_cache)
    return RuntimePlan(preset=preset, device=device, dtype=dtype, t5_dtype=t5_dtype, backend=backend, fp8=fp8,
                       placement=choice.mode, placement_reason=choice.reason, cuda_graphs=cuda_graphs,
                       parallel=parallel_plan, step_cache=step_cache,
                       warmup=warmup_batch_sizes(warmup, preset, device))


def warmup_batch_sizes(warmup: bool | Sequence[int] | None, preset: Preset, device: torch.device) -> tuple[int, ...]:
    """The batch sizes to warm up while loading: `warmup` as given (True: the preset's prompts per
    batch; False: none); by default (None) the preset's prompts per batch on a CUDA device, where a
    process's first call would otherwise compile the kernels and capture the step, and none
    elsewhere, where a first call costs what the next one does."""
    if warmup is None:
        warmup = device.type == "cuda"
    if isinstance(warmup, bool):
        return (preset.prompts_per_batch,) if warmup else ()
    if isinstance(warmup, (str, bytes)) or not isinstance(warmup, Iterable):
        raise ConfigError(f"warmup must be True, False, None or a list of batch sizes, got {warmup!r}")
    sizes = list(warmup)
    if not all(is_integer(size) and size >= 1 for size in sizes):
        raise ConfigError(f"warmup's batch sizes must be integers >= 1, got {sizes!r}")
    return tuple(dict.fromkeys(int(size) for size in sizes))
