"""How a `generate()` call is split over the ranks of an initialised torch.distributed process group.

Modes:
  cfg      2 ranks: the conditional rows of the guidance batch on rank 0, the unconditional rows on
           rank 1; the model outputs are exchanged once per step
  dsp      dynamic sequence parallel over all N ranks: each rank holds T/N frames of every row, and
           temporal attention switches to S/N positions with one all-to-all before and after it
  cfg+dsp  N >= 4, even: the two halves of cfg, each sequence-parallel over N/2 ranks
  auto     cfg for 2 ranks, cfg+dsp for 4 or more when N/2 divides the tokens, dsp otherwise
  none     this process alone, whatever group it is in (a caller may run one engine per rank on
           its own prompts)
Rank r serves guidance half r // shards and frame shard r % shards.
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ..configs import Preset, token_grid
from ..errors import ConfigError
from ..options import PARALLEL_MODES as MODES


@dataclass(frozen=True)
class ParallelPlan:
    mode: str  # cfg, dsp or cfg+dsp
    rank: int
    world_size: int
    halves: int  # 2 when the guidance halves run on different ranks, else 1
    shards: int  # ranks splitting one half's frames, 1 without sequence parallel
    shard_group: dist.ProcessGroup | None  # the ranks of this rank's half: the all-to-all's group

    @property
    def half(self) -> int:
        """0: this rank computes the conditional rows (or all rows when halves == 1); 1: the unconditional."""
        return self.rank // self.shards

    @property
    def shard(self) -> int:
        return self.rank % self.shards

    @property
    def is_first(self) -> bool:
        return self.rank == 0

    def local_device(self, device: str | torch.device | None) -> str | torch.device | None:
        """This rank's device: cuda:LOCAL_RANK when CUDA is asked for (or nothing is and a GPU is there)."""
        wants_cuda = torch.cuda.is_available() if device is None else torch.device(device).type == "cuda"
        if not wants_cuda:
            if dist.get_backend() == "nccl":
                raise ConfigError("the process group uses NCCL, which needs CUDA tensors: use device='cuda', "
                                  "or initialise the group with backend 'gloo' to run on the CPU")
            return device
        index = torch.device(device).index if device is not None else None
        if index is None:
            index = int(os.environ.get("LOCAL_RANK", self.rank % max(torch.cuda.device_count(), 1)))
        torch.cuda.set_device(index)  # NCCL works on the current device
        return torch.device("cuda", index)


def resolve_mode(mode: str, world_size: int, preset: Preset) -> tuple[int, int]:
    """(halves, shards) for `mode` on `world_size` ranks; ConfigError naming the numbers when it cannot work."""
    frames, positions = token_grid(preset)

    def divides(n: int) -> bool:
        return frames % n == 0 and positions % n == 0

    if mode == "auto":
        if world_size == 2:
            return 2, 1
        mode = "cfg+dsp" if world_size % 2 == 0 and divides(world_size // 2) else "dsp"
    if mode in ("cfg", "cfg+dsp"):
        if world_size % 2:
            raise ConfigError(f"parallel={mode!r} puts the two guidance halves on two groups of ranks, so it needs an "
                              f"even number of ranks, got {world_size}; use parallel='dsp'")
        if mode == "cfg+dsp" and world_size == 2:
            raise ConfigError("parallel='cfg+dsp' needs 4 or more ranks; with 2 use 'cfg' or 'dsp'")
        halves, shards = 2, world_size // 2
    else:
        halves, shards = 1, world_size
    if not divides(shards):
        raise ConfigError(
            f"sequence parallel over {shards} ranks needs {shards} to divide both the {frames} frames and the "
            f"{positions} spatial positions of preset {preset.name!r} (in tokens); use a number of ranks that "
            f"divides both" + (", or parallel='cfg' with 2 ranks" if mode != "cfg" else "")
        )
    return halves, shards


def plan_parallel(mode: str, preset: Preset) -> ParallelPlan | None:
    """The plan of this rank, or None to run in one process. Every rank must call it (it creates
    the sub-groups of cfg+dsp, which is collective)."""
    if mode not in MODES:
        raise ConfigError(f"unknown parallel mode {mode!r}; choose one of: {', '.join(MODES)}")
    world_size = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
    if mode == "none":
        return None
    if world_size == 1:
        if mode != "auto":
            raise ConfigError(f"parallel={mode!r} needs a process group of several ranks: launch with "
                              "`torchrun --nproc_per_node N`, or call torch.distributed.init_process_group first")
        return None
    halves, shards = resolve_mode(mode, world_size, preset)
    rank = dist.get_rank()
    group = None
    if shards > 1:
        # new_group is collective: every rank creates every half's group, in the same order.
        groups = [dist.new_group(list(range(h * shards, (h + 1) * shards))) for h in range(halves)] \
            if halves > 1 else [dist.group.WORLD]
        group = groups[rank // shards]
    name = {(2, 1): "cfg", (1, shards): "dsp"}.get((halves, shards), "cfg+dsp")
    return ParallelPlan(name, rank, world_size, halves, shards, group)


def setup_parallel(mode: str, preset: Preset, device: str | torch.device | None):
    """(plan or None, this rank's device) for an Engine constructor."""
    plan = plan_parallel(mode, preset)
    if plan is not None:
        return plan, plan.local_device(device)
    gpus = torch.cuda.device_count()
    uses_cuda = torch.cuda.is_available() if device is None else torch.device(device).type == "cuda"
    if mode == "auto" and uses_cuda and gpus > 1:
        warnings.warn(f"{gpus} GPUs are visible but this engine uses one; launch with `torchrun --nproc_per_node "
                      f"{gpus} -m stdit_engine generate ...` to use them all, or pass parallel='none' to silence this",
                      stacklevel=4)
    return None, device
