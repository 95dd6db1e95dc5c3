"""The all-to-all of dynamic sequence parallelism: frame shards <-> position shards.

With the tokens of a video split over N ranks, spatial attention, cross-attention and the MLP need
whole frames (each rank holds T/N frames, all S positions), while temporal attention needs whole
positions (each rank holds S/N positions over all T frames). One all-to-all switches between the
two: every rank cuts its shard into N blocks and sends block j to rank j.

The cut and the reassembly are pure reshapes (`pack_*` / `unpack_*`), kept apart from the
collective so that `simulate_all_to_all` can check them in one process for any N. The unpacked
temporal layout is the one `STDiTBlock` feeds to temporal attention, [b, T, S/N, C]: the tokens in
their natural order, restricted to this rank's positions (the unsharded model sees the same
layout as a plain view).
"""
from __future__ import annotations

import torch
import torch.distributed as dist


def pack_for_temporal(x: torch.Tensor, b: int, frames: int, positions: int, ranks: int) -> torch.Tensor:
    """Frame shard [b, frames*positions, C] -> [ranks, b, frames, positions/ranks, C]: block j is
    this rank's frames at rank j's positions."""
    c = x.shape[-1]
    return x.view(b, frames, ranks, positions // ranks, c).permute(2, 0, 1, 3, 4).contiguous()


def unpack_temporal(received: torch.Tensor, b: int, frames: int, positions: int, ranks: int) -> torch.Tensor:
    """Received [ranks, b, frames, positions/ranks, C] (block i: rank i's frames) -> position shard
    [b, ranks*frames, positions/ranks, C]: all frames at the owned positions."""
    c = received.shape[-1]
    return received.transpose(0, 1).reshape(b, ranks * frames, positions // ranks, c)


def pack_for_spatial(h: torch.Tensor, b: int, frames: int, positions: int, ranks: int) -> torch.Tensor:
    """Position shard [b, ranks*frames, positions/ranks, C] -> [ranks, b, frames, positions/ranks, C]:
    block j is rank j's frames at this rank's positions."""
    c = h.shape[-1]
    return h.reshape(b, ranks, frames, positions // ranks, c).transpose(0, 1).contiguous()


def unpack_spatial(received: torch.Tensor, b: int, frames: int, positions: int, ranks: int) -> torch.Tensor:
    """Received [ranks, b, frames, positions/ranks, C] (block i: rank i's positions) -> frame shard
    [b, frames*positions, C]."""
    c = received.shape[-1]
    return received.permute(1, 2, 0, 3, 4).reshape(b, frames * positions, c)


def simulate_all_to_all(sent: list[torch.Tensor]) -> list[torch.Tensor]:
    """What each of len(sent) ranks receives when rank i sends sent[i] (block j to rank j)."""
    return [torch.stack([blocks[j] for blocks in sent]) for j in range(len(sent))]


class SequenceShards:
    """The token layout hook of `STDiTBlock` for a sequence sharded by frame over a process group.

    `frames` is this rank's frame count, `positions` the full count (every rank has all of them).
    """

    def __init__(self, group: dist.ProcessGroup | None, ranks: int):
        self.group = group
        self.ranks = ranks

    def _all_to_all(self, sent: torch.Tensor) -> torch.Tensor:
        received = torch.empty_like(sent)
        dist.all_to_all_single(received, sent, group=self.group)
        return received

    def to_temporal(self, x: torch.Tensor, b: int, frames: int, positions: int) -> torch.Tensor:
        shape = (b, frames, positions, self.ranks)
        return unpack_temporal(self._all_to_all(pack_for_temporal(x, *shape)), *shape)

    def from_temporal(self, h: torch.Tensor, b: int, frames: int, positions: int) -> torch.Tensor:
        shape = (b, frames, positions, self.ranks)
        return unpack_spatial(self._all_to_all(pack_for_spatial(h, *shape)), *shape)
