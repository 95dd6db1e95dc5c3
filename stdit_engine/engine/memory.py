"""Per-stage measurement of time and peak memory.

On CUDA the peaks are the caching allocator's (max allocated / max reserved, reset at each stage).
On the CPU they are the process's peak resident set size so far (it never goes down, so a stage's
figure is the peak up to the end of that stage).
"""
from __future__ import annotations

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
