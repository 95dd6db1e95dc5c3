"""Runs a job on several processes joined by a process group (gloo on the CPU, NCCL on GPUs; a file
store in a temp folder), as torchrun would. Jobs are module-level functions so the spawned processes
can import them; they write their results (on the CPU) as files for the test in the parent to judge."""
from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from stdit_engine import Engine
from stdit_engine.errors import ConfigError
from stdit_engine.parallel.exchange import SequenceShards
from stdit_engine.parallel.stages import decode_split

PROMPTS = ["a sea turtle swimming over a coral reef", "a red car in the snow"]
WEIGHT_SEED, SAMPLE_SEED, STEPS = 3, 7, 5
EXCHANGE_SHAPE = (2, 4, 8, 3)  # b, frames, positions, c: divisible by 2 and 4 ranks


def odd_latent() -> torch.Tensor:
    """3 frames: over 2 ranks, one rank decodes 2 and the other 1 (the padded gather)."""
    return torch.randn(1, 4, 3, 8, 8, generator=torch.Generator().manual_seed(1))


def run_ranks(world_size: int, folder: Path, job, *args, backend: str = "gloo") -> None:
    mp.spawn(_entry, args=(world_size, str(folder / "store"), backend, job, args), nprocs=world_size)


def _entry(rank: int, world_size: int, store: str, backend: str, job, args) -> None:
    torch.set_num_threads(1)  # the ranks share the machine's cores
    # A short timeout: a rank stuck in a collective fails the test instead of hanging it for 30 minutes.
    dist.init_process_group(backend, init_method=f"file://{store}", rank=rank, world_size=world_size,
                            timeout=timedelta(seconds=120))
    try:
        job(rank, *args)
    finally:
        dist.destroy_process_group()


def generate_latents(engine: Engine, prompts=PROMPTS) -> torch.Tensor:
    return engine.generate(prompts, seed=SAMPLE_SEED, num_steps=STEPS, output="latent", progress=False)


def tiny_engine(device: str, parallel: str, fp8: bool = False) -> Engine:
    """fp32, or with FP8 block linears bf16 (FP8 takes half-precision activations); resident, as the
    checks call the VAE directly and look at where T5 lives."""
    return Engine.from_random_weights("tiny", device=device, dtype=torch.bfloat16 if fp8 else torch.float32,
                                      seed=WEIGHT_SEED, parallel=parallel, fp8=fp8, placement="resident")


def one_process_results(device: str, fp8: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """What `checks` computes, by one process: (latent, frames of a video, decode of odd_latent())."""
    engine = tiny_engine(device, "none", fp8)
    latent = generate_latents(engine).cpu()
    videos = engine.generate(PROMPTS[:1], seed=SAMPLE_SEED, num_steps=2, progress=False)
    return latent, videos[0].frames, engine.vae.decode(odd_latent(), to_uint8=True)


def artifact_refusal(engine: Engine, folder: Path) -> str | None:
    """The error of use_artifact on a parallel engine (None if it took the artifact): it must refuse
    before reading the file, which does not exist."""
    try:
        engine.use_artifact(folder / "stdit.pt2")
    except ConfigError as err:
        return str(err)
    return None


def checks(rank: int, folder: Path, modes: tuple[str, ...], video_mode: str | None, device: str = "cpu",
           fp8: bool = False) -> None:
    """All that a test wants from one spawn of the ranks (starting processes is the slow part):
    a real exchange, the final latent per mode, and (for `video_mode`) what generate() returns as
    videos."""
    for mode in modes:
        engine = tiny_engine(device, mode, fp8)
        t5_device = next(engine.text_encoder.model.parameters()).device.type
        torch.save({"latent": generate_latents(engine).cpu(), "mode": engine.parallel.mode, "t5_device": t5_device,
                    "artifact_refusal": artifact_refusal(engine, folder)}, folder / f"{mode}-{rank}.pt")
        if mode == video_mode:
            videos = engine.generate(PROMPTS[:1], seed=SAMPLE_SEED, num_steps=2, progress=False)
            odd = decode_split(engine.parallel, lambda part: engine.vae.decode(part, to_uint8=True), odd_latent(),
                               engine.device)
            torch.save({"videos": [v.frames for v in videos], "odd": odd}, folder / f"video-{rank}.pt")
    exchange_round_trip(rank, folder, EXCHANGE_SHAPE, engine.device)  # the device chosen for this rank


# ---------------------------------------------------------------- judging the ranks' files

def assert_latents_match(folder: Path, mode: str, ranks: int, reference: torch.Tensor, tolerance: float,
                         resolved: str | None = None) -> None:
    """Every rank's final latent in `mode` is the one-process `reference` (relative error) and the same on all."""
    results = [torch.load(folder / f"{mode}-{rank}.pt") for rank in range(ranks)]
    assert {r["mode"] for r in results} == {resolved or mode}
    assert results[0]["latent"].shape == reference.shape == (2, 4, 4, 8, 8)
    assert float((results[0]["latent"].float() - reference.float()).norm() / reference.float().norm()) < tolerance
    assert all(torch.equal(r["latent"], results[0]["latent"]) for r in results)
    assert all(f"parallel mode {resolved or mode!r}" in r["artifact_refusal"] for r in results)


def assert_same_pixels(got: torch.Tensor, expected: torch.Tensor) -> None:
    """Equal up to float rounding at the uint8 step: at most one level apart, and rarely that."""
    assert got.dtype == torch.uint8 and got.shape == expected.shape
    difference = (got.int() - expected.int()).abs()
    assert difference.max() <= 1 and difference.float().mean() < 0.01


def assert_videos_match(folder: Path, reference_frames: torch.Tensor, reference_odd: torch.Tensor) -> None:
    first, second = (torch.load(folder / f"video-{rank}.pt") for rank in range(2))
    assert second["videos"] == [] and second["odd"] is None  # only rank 0 gets videos, so only rank 0 saves
    [frames] = first["videos"]
    assert frames.shape == (4, 64, 64, 3)
    assert_same_pixels(frames, reference_frames)
    # 3 frames over 2 ranks (2 + 1, padded for the gather): the same latent, the same pixels, in order.
    assert first["odd"].shape == (1, 3, 64, 64, 3)
    assert_same_pixels(first["odd"], reference_odd)


def assert_exchange_is_exact(folder: Path, ranks: int) -> None:
    """Each rank got its positions over all frames from the all-to-all, and its frame shard back."""
    owned = EXCHANGE_SHAPE[2] // ranks  # [b, frames, positions, c]
    for rank in range(ranks):
        got = torch.load(folder / f"exchange-{rank}.pt")
        assert torch.equal(got["temporal"], got["whole"][:, :, rank * owned:(rank + 1) * owned])
        assert torch.equal(got["back"], got["shard"])


# ---------------------------------------------------------------- jobs

def exchange_round_trip(rank: int, folder: Path, shape: tuple[int, int, int, int], device: torch.device) -> None:
    """A real all-to-all on a frame shard of a tensor every rank knows: saves what it gets both ways."""
    b, frames, positions, c = shape
    ranks = dist.get_world_size()
    whole = torch.randn(shape, generator=torch.Generator().manual_seed(0)).to(device)
    local_frames = frames // ranks
    shard = whole[:, rank * local_frames:(rank + 1) * local_frames].reshape(b, local_frames * positions, c)
    tokens = SequenceShards(dist.group.WORLD, ranks)
    temporal = tokens.to_temporal(shard, b, local_frames, positions)
    back = tokens.from_temporal(temporal, b, local_frames, positions)
    saved = {"whole": whole, "temporal": temporal, "back": back, "shard": shard}
    torch.save({name: t.cpu() for name, t in saved.items()}, folder / f"exchange-{rank}.pt")
