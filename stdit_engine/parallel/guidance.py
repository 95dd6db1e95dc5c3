"""The denoising step over several ranks: each rank runs the STDiT on its part of the guidance
batch (its half of the rows under cfg, its frames under dsp), then one all_gather per step
assembles the whole model output, and every rank does the guidance mix and the sampler's update on
the whole latent. Every rank thus holds the same latent and draws the same noise from the same
seeded generator: the RNG protocol is that of one process, unchanged.
"""
from __future__ import annotations

import torch
import torch.distributed as dist

from ..engine.denoise import GuidanceBatch, GuidedDenoiser
from ..models.stdit import STDiT
from .exchange import SequenceShards
from .plan import ParallelPlan


class ShardedGuidance(GuidanceBatch):
    def __init__(self, plan: ParallelPlan):
        self.plan = plan

    def captions(self, y: torch.Tensor, y_null: torch.Tensor) -> torch.Tensor:
        if self.plan.halves == 1:
            return super().captions(y, y_null)
        return y if self.plan.half == 0 else y_null.expand_as(y).to(y.dtype)

    def latents(self, x: torch.Tensor) -> torch.Tensor:
        frames = x.shape[2] // self.plan.shards
        x = x[:, :, self.plan.shard * frames:(self.plan.shard + 1) * frames]
        return x if self.plan.halves == 2 else torch.cat([x, x])

    def gather(self, out: torch.Tensor) -> torch.Tensor:
        parts = [torch.empty_like(out) for _ in range(self.plan.world_size)]
        dist.all_gather(parts, out.contiguous())
        # Rank h * shards + s holds half h, frame shard s: shards join along frames, halves along rows.
        shards = self.plan.shards
        return torch.cat([torch.cat(parts[h * shards:(h + 1) * shards], dim=2) for h in range(self.plan.halves)])


def parallel_denoiser(plan: ParallelPlan, model: STDiT, use_cuda_graphs: bool = True) -> GuidedDenoiser:
    """The denoiser of this rank; shards the model's sequence when the plan splits frames.

    With CUDA graphs, the step's collectives (the all_gather, the all-to-alls of dsp) are captured
    with it (NCCL supports capture; tests/test_parallel_gpu.py checks the latents against one GPU).
    """
    if plan.shards > 1:
        model.tokens = SequenceShards(plan.shard_group, plan.shards)
    return GuidedDenoiser(model, use_cuda_graphs=use_cuda_graphs, batch=ShardedGuidance(plan))
