"""Joining the process group that `torchrun` describes in the environment (for the command line;
Python callers initialise their own group and pass `parallel=` to the Engine)."""
from __future__ import annotations

import os
from contextlib import contextmanager

import torch
import torch.distributed as dist

from ..errors import ConfigError


@contextmanager
def torchrun_group(device: str | None, parallel: str = "auto"):
    """Inside, this process is a rank of torchrun's group (NCCL when it runs on CUDA, gloo on the
    CPU), left on exit; a plain launch (WORLD_SIZE unset or 1) or an existing group is left alone."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size > 1 and parallel == "none":
        raise ConfigError(f"--parallel none under torchrun would make all {world_size} ranks compute and write the "
                          "same files; use --parallel auto, or launch one process without torchrun")
    if world_size <= 1 or dist.is_initialized():
        yield
        return
    cuda = torch.cuda.is_available() if device is None else torch.device(device).type == "cuda"
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if cuda else "gloo")
    try:
        yield
    finally:
        dist.destroy_process_group()
