"""Placement modes move each model to the device only for its stage (checked on the meta device,
which stands in for a GPU on CPU-only machines), and the estimate before loading."""
import pytest
import torch
from torch import nn

from stdit_engine import Engine
from stdit_engine.configs import PRESETS
from stdit_engine.engine.api import choose_placement
from stdit_engine.engine.memory import GIB, choose_vae_chunk, estimate_memory, parameter_counts
from stdit_engine.engine.placement import Placement
from stdit_engine.errors import ConfigError

META = torch.device("meta")


class Blocks(nn.Module):
    """A stand-in T5: an embedding, a list of blocks, a final norm; records where each block ran."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Linear(4, 4)
        self.block = nn.ModuleList(nn.Linear(4, 4) for _ in range(3))
        self.norm = nn.LayerNorm(4)

    def forward(self, x):
        x = self.embed(x)
        for block in self.block:
            x = block(x)
        return self.norm(x)


def devices(module: nn.Module) -> set[str]:
    return {t.device.type for t in (*module.parameters(), *module.buffers())}


def make(mode):
    models = {"encode": Blocks(), "denoise": nn.Linear(4, 4), "decode": nn.Conv2d(3, 3, 1)}
    placement = Placement(mode, META, models, streamed={"encode": models["encode"].block})
    return placement, models


def test_offload_moves_each_model_for_its_stage_only():
    placement, models = make("offload")
    assert all(devices(m) == {"cpu"} for m in models.values())
    for stage, model in models.items():
        with placement.stage(stage):
            assert devices(model) == {"meta"}
            assert all(devices(other) == {"cpu"} for name, other in models.items() if name != stage)
        assert devices(model) == {"cpu"}


def test_sequential_streams_one_block_at_a_time():
    placement, models = make("sequential")
    encoder = models["encode"]
    seen = []
    for block in encoder.block:  # runs after the placement's own pre-hook
        block.register_forward_pre_hook(lambda module, args: seen.append([b.weight.device.type for b in encoder.block]))
    with placement.stage("encode"):
        assert devices(encoder.embed) == devices(encoder.norm) == {"meta"}
        assert all(devices(block) == {"cpu"} for block in encoder.block)
        encoder(torch.empty(2, 4, device=META))
    # During block i's forward only block i was on the device.
    assert seen == [["meta", "cpu", "cpu"], ["cpu", "meta", "cpu"], ["cpu", "cpu", "meta"]]
    assert devices(encoder) == {"cpu"}


def test_resident_keeps_everything_on_the_device():
    placement, models = make("resident")
    assert all(devices(m) == {"meta"} for m in models.values())
    with placement.stage("denoise"):
        assert devices(models["encode"]) == {"meta"}


def test_tied_weights_stay_tied_and_outputs_unchanged():
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4))
    model[1].weight = model[0].weight
    x = torch.randn(3, 4)
    expected = model(x)
    placement = Placement("offload", torch.device("cpu"), {"denoise": model})
    with placement.stage("denoise"):
        assert model[0].weight.data_ptr() == model[1].weight.data_ptr()
        assert torch.equal(model(x), expected)


def test_unknown_placement():
    with pytest.raises(ConfigError, match="unknown placement 'gpu'"):
        make("gpu")


def test_offload_on_cpu_engine_is_refused():
    with pytest.raises(ConfigError, match="on cpu use 'resident'"):
        Engine.from_random_weights("tiny", device="cpu", placement="offload")
    assert choose_placement("auto", PRESETS["tiny"], torch.device("cpu"), torch.float32, torch.float32) == "resident"


def test_estimate_matches_released_architecture_sizes():
    counts = parameter_counts("16x256x256")
    assert counts["t5"] == pytest.approx(4.76e9, rel=0.01)  # SPEC section 4
    resident = estimate_memory("16x256x256", 2, "resident")
    # SPEC section 6 measured the reference (T5 fp32 resident, 32 frames decoded at once): 23.8 GiB.
    assert resident.peak / GIB == pytest.approx(23.8, rel=0.15)
    sequential = estimate_memory("64x512x512", 1, "sequential", vae_chunk_frames=4)
    assert sequential.peak < resident.peak / 4
    assert sequential.encode < 2 * GIB  # one 0.77 GiB T5 block plus the 0.5 GiB embedding


def test_vae_chunk_fits_the_budget():
    preset = PRESETS["64x512x512"]
    assert choose_vae_chunk(preset, torch.float16, 4 * GIB, 64) == 6
    assert choose_vae_chunk(preset, torch.float16, 100 * GIB, 64) == 64
    assert choose_vae_chunk(preset, torch.float16, 1, 64) == 1


@pytest.mark.parametrize("free_gib, expected", [(40, "resident"), (25, "offload"), (8, "sequential")])
def test_auto_placement_picks_the_fastest_that_fits(monkeypatch, free_gib, expected):
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (int(free_gib * GIB), int(80 * GIB)))
    preset = PRESETS["16x256x256"]
    # Estimates x 1.25 for reserved memory: resident 28.9 GiB, offload 22.2 GiB, sequential 2.5 GiB.
    assert choose_placement("auto", preset, torch.device("cuda"), torch.float16, torch.float32) == expected


def test_a_preset_that_cannot_fit_is_refused_before_loading(monkeypatch):
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (1 * GIB, 80 * GIB))
    with pytest.raises(ConfigError, match=r"64x512x512 needs about .* GiB .* 'sequential' .* has 1.0 GiB free"):
        choose_placement("auto", PRESETS["64x512x512"], torch.device("cuda"), torch.float16, torch.float32)


def test_estimate_counts_the_gelu_fused_into_fc1():
    # The triton backend's fc1 computes its GELU in the epilogue: the MLP's peak moves from the GELU
    # (3 + 2 x 4 token-sized tensors) to fc2 (3 + 4 + 1), measured on an H200 within -6% (BENCHMARKS.md).
    sdpa = estimate_memory("64x512x512", 1, "sequential", vae_chunk_frames=1, backend="sdpa")
    triton = estimate_memory("64x512x512", 1, "sequential", vae_chunk_frames=1, backend="triton")
    token_tensor_bytes = 2 * 64 * 32 * 32 * 1152 * 2  # the guidance pair's tokens x hidden, fp16
    assert sdpa.denoise - triton.denoise == 3 * token_tensor_bytes
    assert estimate_memory("64x512x512", 1, "sequential", vae_chunk_frames=1, backend="auto") == triton
