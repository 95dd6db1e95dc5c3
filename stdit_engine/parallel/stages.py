"""The stages around denoising over several ranks: T5 encodes on rank 0 and the embeddings are
broadcast; the VAE decodes a slice of the frames on each rank and rank 0 gathers the uint8 frames.
Tensors travel on the engine's device (NCCL needs CUDA tensors; gloo takes CPU ones)."""
from __future__ import annotations

from typing import Callable

import torch
import torch.distributed as dist

from ..configs import VAE_DOWNSAMPLE
from .plan import ParallelPlan


def encode_on_first(plan: ParallelPlan, encode: Callable[[], tuple[torch.Tensor, ...]],
                    device: torch.device) -> tuple[torch.Tensor, ...]:
    """`encode()` run on rank 0 only; every rank returns its result."""
    tensors = encode() if plan.is_first else ()
    # Only rank 0 knows the shapes (T5's width comes from its weights): they travel first.
    meta = [[(t.shape, t.dtype) for t in tensors]]
    dist.broadcast_object_list(meta, src=0, device=device)
    if not plan.is_first:
        tensors = tuple(torch.empty(shape, dtype=dtype, device=device) for shape, dtype in meta[0])
    for tensor in tensors:
        dist.broadcast(tensor, src=0)
    return tensors


def decode_split(plan: ParallelPlan, decode: Callable[[torch.Tensor], torch.Tensor],
                 latent: torch.Tensor, device: torch.device) -> torch.Tensor | None:
    """`decode(latent [n, C, t, h, w]) -> uint8 [n, t, H, W, 3]` run on each rank's slice of the
    frames; the whole video on rank 0, None elsewhere."""
    frames = latent.shape[2]
    per_rank = -(-frames // plan.world_size)  # the last ranks get fewer frames, maybe none
    mine = latent[:, :, plan.rank * per_rank:(plan.rank + 1) * per_rank]
    part = decode(mine).to(device) if mine.shape[2] else None
    # Every rank sends the same shape (gather's rule): a short slice is padded, and cut off below.
    n, _, _, h, w = latent.shape
    padded = torch.zeros((n, per_rank, h * VAE_DOWNSAMPLE, w * VAE_DOWNSAMPLE, 3), dtype=torch.uint8, device=device)
    if part is not None:
        padded[:, :part.shape[1]] = part
    parts = [torch.empty_like(padded) for _ in range(plan.world_size)] if plan.is_first else None
    dist.gather(padded, parts, dst=0)
    return torch.cat(parts, dim=1)[:, :frames].cpu() if plan.is_first else None
