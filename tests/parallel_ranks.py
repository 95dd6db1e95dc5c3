"""Runs a job on several CPU processes joined by a gloo process group (a file store in a temp
folder), as torchrun would on GPUs. Jobs are module-level functions so the spawned processes can
import them; they write their results as files for the test in the parent to judge."""
from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from stdit_engine import Engine
from stdit_engine.parallel.exchange import SequenceShards
from stdit_engine.parallel.stages import decode_split

PROMPTS = ["a sea turtle swimming over a coral reef", "a red car in the snow"]
WEIGHT_SEED, SAMPLE_SEED, STEPS = 3, 7, 5
EXCHANGE_SHAPE = (2, 4, 8, 3)  # b, frames, positions, c: divisible by 2 and 4 ranks


def odd_latent() -> torch.Tensor:
    """3 frames: over 2 ranks, one rank decodes 2 and the other 1 (the padded gather)."""
    return torch.randn(1, 4, 3, 8, 8, generator=torch.Generator().manual_seed(1))


def run_ranks(world_size: int, folder: Path, job, *args) -> None:
    mp.spawn(_entry, args=(world_size, str(folder / "store"), job, args), nprocs=world_size)


def _entry(rank: int, world_size: int, store: str, job, args) -> None:
    torch.set_num_threads(1)  # the ranks share the machine's cores
    # A short timeout: a rank stuck in a collective fails the test instead of hanging it for 30 minutes.
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world_size,
                            timeout=timedelta(seconds=120))
    try:
        job(rank, *args)
    finally:
        dist.destroy_process_group()


def generate_latents(engine: Engine, prompts=PROMPTS) -> torch.Tensor:
    return engine.generate(prompts, seed=SAMPLE_SEED, num_steps=STEPS, output="latent", progress=False)


def checks(rank: int, folder: Path, modes: tuple[str, ...], video_mode: str | None) -> None:
    """All that a test wants from one spawn of the ranks (starting processes is the slow part):
    a real exchange, the final latent per mode, and (for `video_mode`) what generate() returns as
    videos."""
    exchange_round_trip(rank, folder, EXCHANGE_SHAPE)
    for mode in modes:
        engine = Engine.from_random_weights("tiny", device="cpu", seed=WEIGHT_SEED, parallel=mode)
        torch.save({"latent": generate_latents(engine), "mode": engine.parallel.mode},
                   folder / f"{mode}-{rank}.pt")
        if mode == video_mode:
            videos = engine.generate(PROMPTS[:1], seed=SAMPLE_SEED, num_steps=2, progress=False)
            odd = decode_split(engine.parallel, lambda part: engine.vae.decode(part, to_uint8=True), odd_latent(),
                               engine.device)
            torch.save({"videos": [v.frames for v in videos], "odd": odd}, folder / f"video-{rank}.pt")


def exchange_round_trip(rank: int, folder: Path, shape: tuple[int, int, int, int]) -> None:
    """A real all-to-all on a frame shard of a tensor every rank knows: saves what it gets both ways."""
    b, frames, positions, c = shape
    ranks = dist.get_world_size()
    whole = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    local_frames = frames // ranks
    shard = whole[:, rank * local_frames:(rank + 1) * local_frames].reshape(b, local_frames * positions, c)
    tokens = SequenceShards(dist.group.WORLD, ranks)
    temporal = tokens.to_temporal(shard, b, local_frames, positions)
    back = tokens.from_temporal(temporal, b, local_frames, positions)
    torch.save({"whole": whole, "temporal": temporal, "back": back, "shard": shard}, folder / f"exchange-{rank}.pt")
