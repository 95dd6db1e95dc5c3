"""Joining the process group that `torchrun` describes in the environment (for the command line;
Python callers initialise their own group and pass `parallel=` to the Engine)."""
from __future__ import annotations

import os
from contextlib import contextmanager

import torch
import torch.distributed as dist


@contextmanager
def torchrun_group(device: str | None):
    """Inside, this process is a rank of torchrun's group (NCCL when it runs on CUDA, gloo on the
    CPU), left on exit; a plain launch (WORLD_SIZE unset or 1) or an existing group is left alone."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
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
