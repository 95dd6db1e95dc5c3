"""The reference implementation's figures (SPEC-opensora-v1.md section 6), the one place they are
written down: every ratio the benchmarks, `stdit-engine bench` and benchmarks/report.py print is
against these. The reference ran on one NVIDIA H100 80GB, PyTorch 2.11, fp16, attention through
PyTorch SDPA, random weights of the exact architectures."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ReferenceRun:
    """One end-to-end run of the reference script, 100 IDDPM steps."""

    prompts: int
    sampling_s: float
    peak_allocated_gib: float
    peak_reserved_gib: float  # what the "30G" / "44G" / "60G" memory figures quote


REFERENCE_E2E = {
    "16x256x256": ReferenceRun(2, 13.4, 23.8, 28.2),
    "16x512x512": ReferenceRun(2, 41.2, 35.9, 52.2),
    "64x512x512": ReferenceRun(1, 77.1, 49.9, 67.2),
}
# One STDiT forward, (preset, guidance batch) -> ms: as released, and under torch.compile.
REFERENCE_FORWARD_MS = {("16x256x256", 4): 103.0, ("64x512x512", 2): 765.0}
REFERENCE_COMPILED_MS = {("16x256x256", 4): 61.7, ("64x512x512", 2): 460.0}
