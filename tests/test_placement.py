"""Placement modes move each model to the device only for its stage (checked on the meta device,
which stands in for a GPU on CPU-only machines), and the estimate before loading."""
from contextlib import contextmanager

import pytest
import torch
from torch import nn

from stdit_engine import Engine
from stdit_engine.configs import PRESETS
from stdit_engine.engine.placement_choice import choose_placement
from stdit_engine.engine.memory import (GIB, LEAN_RESERVED_BYTES, RESERVE_FACTOR, STDIT_CUDA_EXTRA_BYTES,
                                        STDIT_TRITON_EXTRA_TOKEN_TENSORS,
                                        VAE_RESERVE_FACTOR, caption_kv_bytes, choose_vae_chunk, decode_budget,
                                        decode_chunk, estimate_memory, parameter_counts, stdit_step_bytes,
                                        vae_frame_bytes)
from stdit_engine.engine.placement import BlockStream, Placement
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


class FakeCudaStreams:
    """Stands in for CUDA streams and events on the CPU: logs what BlockStream asks of them, in order."""

    def __init__(self, monkeypatch):
        self.log, self.events = [], 0
        fakes = self

        class Event:
            def __init__(self):
                self.id = fakes.events
                fakes.events += 1

            def record(self, stream=None):
                fakes.log.append(("record", self.id, stream if isinstance(stream, str) else "compute"))

            def synchronize(self):
                fakes.log.append(("host waits", self.id))

        class Stream:
            def wait_event(self, event):
                fakes.log.append(("compute waits", event.id))

        @contextmanager
        def on_stream(stream):
            yield

        monkeypatch.setattr(torch.cuda, "Event", Event)
        monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: Stream())
        monkeypatch.setattr(torch.cuda, "stream", on_stream)
        monkeypatch.setattr(torch.Tensor, "record_stream", lambda tensor, stream: fakes.log.append(("read by compute",)))


def test_prefetch_copies_the_next_block_on_the_side_stream_and_keeps_two_blocks_at_most(monkeypatch):
    fakes = FakeCudaStreams(monkeypatch)
    encoder = Blocks()
    streamer = BlockStream(encoder.block, META, prefetch=False)
    streamer.prefetch, streamer.copy_stream = True, "copy"  # as on a GPU
    on_device = []
    for block in encoder.block:  # runs after the streamer's own pre-hook
        block.register_forward_pre_hook(lambda module, args: on_device.append([b.weight.device.type for b in encoder.block]))
    encoder.embed.to(META)
    encoder.norm.to(META)
    encoder(torch.empty(2, 4, device=META))
    # While block i computes, block i+1 is already coming in; never three at once.
    assert on_device == [["meta", "meta", "cpu"], ["cpu", "meta", "meta"], ["cpu", "cpu", "meta"]]
    assert devices(encoder.block) == {"cpu"}
    copies_arrive = [entry[1] for entry in fakes.log if entry[0] == "record" and entry[2] == "copy"]
    blocks_done = [entry[1] for entry in fakes.log if entry[0] == "record" and entry[2] == "compute"]
    assert copies_arrive == [0, 1, 3] and blocks_done == [2, 4, 5]
    # The compute waits for each block's copy; the host waits for block 0 to finish before block 2's
    # copy asks for memory (then block 0's can be reused), and for nothing else.
    assert [entry[1] for entry in fakes.log if entry[0] == "compute waits"] == [0, 1, 3]
    assert [entry[1] for entry in fakes.log if entry[0] == "host waits"] == [2]
    assert fakes.log.index(("host waits", 2)) < fakes.log.index(("record", 3, "copy"))
    # Each block's weight and bias were handed to the compute stream before their memory went back.
    assert fakes.log.count(("read by compute",)) == 2 * len(encoder.block)


@pytest.mark.parametrize("mode, emptied_around", [
    ("lean", ["encode"]), ("sequential", ["encode", "denoise", "decode"]), ("offload", ["encode", "denoise", "decode"]),
    ("resident", [])])
def test_cached_blocks_go_back_around_the_stages_whose_peaks_would_stack(monkeypatch, mode, emptied_around):
    # Lean keeps the decode's cached blocks from one call to the next (a call on cached prompts then
    # allocates nothing), and returns them around the encode, where T5's blocks would stack on them.
    placement, _ = make(mode)
    placement.device = torch.device("cuda")  # the models stay on the meta device
    log = []
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: log.append("empty"))
    for call in range(2):
        for stage in ("encode", "denoise", "decode"):
            with placement.stage(stage):
                log.append(stage)
    expected = []
    for stage in ("encode", "denoise", "decode"):
        expected += ["empty", stage, "empty"] if stage in emptied_around else [stage]
    assert log == expected * 2


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
    assert choose_placement("auto", PRESETS["tiny"], torch.device("cpu"), torch.float32, torch.float32).mode == "resident"


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


@pytest.mark.parametrize("free_gib, expected", [(40, "lean"), (8, "lean"), (4, "sequential")])
def test_auto_placement_is_lean_where_it_fits(monkeypatch, free_gib, expected):
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (int(free_gib * GIB), int(80 * GIB)))
    preset = PRESETS["16x256x256"]
    # Estimated peaks (allocated) x 1.25 for the allocator's cache: lean 4.9 GiB, sequential 2.5 GiB.
    choice = choose_placement("auto", preset, torch.device("cuda"), torch.float16, torch.float32)
    assert choice.mode == expected
    assert "\n" not in choice.reason
    # One line says why, in the figures the choice was made from: what it needs of what is free (the
    # estimate of the mode chosen, at the decode chunk it will use), and what did not fit.
    chunk = decode_chunk(preset, 2, expected, torch.float16, torch.float32, int(free_gib * GIB))
    peak = estimate_memory(preset, 2, expected, vae_chunk_frames=chunk).peak
    assert choice.reason == (
        f"auto, the first of lean, sequential that fits: its estimated peak of {peak / GIB:.1f} GiB allocated at 2 "
        f"prompt(s), x1.25 for the allocator's cache = {peak * RESERVE_FACTOR / GIB:.1f} GiB, is within the "
        f"{free_gib:.1f} GiB free" + ("; its decode is sized to stay within 8 GiB reserved" if expected == "lean"
                                      else "; lean's is 4.9 GiB, more than is free"))


def test_a_preset_that_cannot_fit_is_refused_before_loading(monkeypatch):
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (1 * GIB, 80 * GIB))
    with pytest.raises(ConfigError, match=r"64x512x512 needs about .* GiB .* 'sequential' .* has 1.0 GiB free"):
        choose_placement("auto", PRESETS["64x512x512"], torch.device("cuda"), torch.float16, torch.float32)


def test_estimate_counts_the_gelu_fused_into_fc1():
    # The triton backend's fc1 computes its GELU in the epilogue: the MLP's peak moves from the GELU
    # (3 + 2 x 4 token-sized tensors) to fc2 (3 + 4 + 1), and the allocator's peaks on an H200 held
    # STDIT_TRITON_EXTRA_TOKEN_TENSORS more (BENCHMARKS.md).
    sdpa = estimate_memory("64x512x512", 1, "sequential", vae_chunk_frames=1, backend="sdpa")
    triton = estimate_memory("64x512x512", 1, "sequential", vae_chunk_frames=1, backend="triton")
    token_tensor_bytes = 2 * 64 * 32 * 32 * 1152 * 2  # the guidance pair's tokens x hidden, fp16
    assert sdpa.denoise - triton.denoise == (11 - 8 - STDIT_TRITON_EXTRA_TOKEN_TENSORS) * token_tensor_bytes
    assert estimate_memory("64x512x512", 1, "sequential", vae_chunk_frames=1, backend="auto") == triton


def test_lean_keeps_the_stdit_streams_t5_and_brings_the_vae_for_its_stage():
    placement, models = make("lean")
    encoder, stdit, vae = models["encode"], models["denoise"], models["decode"]
    assert devices(stdit) == {"meta"} and devices(encoder) == devices(vae) == {"cpu"}
    assert placement.keeps("denoise") and not placement.keeps("encode") and not placement.keeps("decode")
    with placement.stage("encode"):
        assert devices(encoder.embed) == {"meta"}
        assert all(devices(block) == {"cpu"} for block in encoder.block)  # they come in one by one
        encoder(torch.empty(2, 4, device=META))
    with placement.stage("decode"):
        assert devices(vae) == {"meta"}
    assert devices(stdit) == {"meta"} and devices(encoder) == devices(vae) == {"cpu"}


DEFAULT_RUNS = [("16x256x256", 2), ("16x512x512", 2), ("64x512x512", 1)]  # SPEC section 6's workloads


def default_estimate(preset, prompts, mode, dtype=torch.float16, fp8=False, free=140 * GIB):
    chunk = decode_chunk(preset, prompts, mode, dtype, torch.float32, free, backend="triton", fp8=fp8)
    return estimate_memory(preset, prompts, mode, dtype, torch.float32, vae_chunk_frames=chunk, backend="triton",
                           fp8=fp8)


@pytest.mark.parametrize("dtype, fp8", [(torch.float16, False), (torch.bfloat16, False), (torch.bfloat16, True)])
@pytest.mark.parametrize("preset, prompts", DEFAULT_RUNS)
def test_lean_fits_8_gib_reserved_at_every_preset_by_construction(preset, prompts, dtype, fp8):
    lean = default_estimate(preset, prompts, "lean", dtype, fp8)
    assert lean.peak * RESERVE_FACTOR <= LEAN_RESERVED_BYTES
    # Its decode counts the VAE's fragmentation as well, and what stays: the STDiT, its graph's
    # buffers and its memory pool (reserved).
    chunk = decode_chunk(preset, prompts, "lean", dtype, torch.float32, 140 * GIB, backend="triton", fp8=fp8)
    frame = vae_frame_bytes(PRESETS[preset], dtype)
    kept = lean.decode - chunk * frame
    pool = stdit_step_bytes(PRESETS[preset], prompts, dtype, "cuda", "triton", fp8)
    assert RESERVE_FACTOR * kept + pool + VAE_RESERVE_FACTOR * chunk * frame <= LEAN_RESERVED_BYTES
    assert chunk >= 2  # the budget leaves room for more than the slowest decode


def test_lean_encode_and_decode_count_what_the_kept_graph_allocates_not_its_pool():
    # Between calls the lean placement keeps the STDiT and its step's graph. The graph's memory pool
    # (the step's activations) is reserved, not allocated: a replay allocates nothing, so a later
    # call's encode and decode see only the graph's static caption K/V and the workspaces (the
    # measured peaks: BENCHMARKS.md).
    preset = PRESETS["16x256x256"]
    lean = estimate_memory(preset, 2, "lean", vae_chunk_frames=1)
    sequential = estimate_memory(preset, 2, "sequential", vae_chunk_frames=1)
    counts = parameter_counts(preset)
    graph_kept = caption_kv_bytes(preset, 2, torch.float16) + STDIT_CUDA_EXTRA_BYTES
    kept = lean.weights["stdit"] + graph_kept
    assert lean.encode == kept + sequential.encode + counts["t5_block"] * 4  # a prefetched fp32 block
    assert lean.decode == kept + sequential.decode
    # The denoise stage's peak is the first call's capture, as in sequential (which captures every call).
    assert lean.denoise == sequential.denoise
    assert lean.denoise - lean.weights["stdit"] == (stdit_step_bytes(preset, 2, torch.float16, "cuda")
                                                    + caption_kv_bytes(preset, 2, torch.float16) + graph_kept)


@pytest.mark.parametrize("mode", ["lean", "resident"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_encode_estimate_does_not_depend_on_the_video_size(mode, dtype):
    # The prompts' encode sees nothing of the video but what the kept graph allocates, which is
    # caption-sized: the same prompts at 16x256x256 and 16x512x512 give the same encode estimate,
    # but for the STDiT's weights (its positional embedding grows with the video: 1.7 MB).
    small, large = (estimate_memory(preset, 2, mode, dtype, vae_chunk_frames=1) for preset in ("16x256x256", "16x512x512"))
    assert small.encode - small.weights["stdit"] == large.encode - large.weights["stdit"]
    assert small.denoise < large.denoise  # the step's activations do grow with the video


def test_lean_decode_budget_counts_the_graph_pool_as_reserved():
    # The pool is reserved whole while the VAE decodes beside it: the decode budget leaves room for
    # it (and for the allocator's margin on what stays allocated), so the lean decode chunks are
    # the ones measured within 8 GiB reserved (18 / 3 / 2 frames, BENCHMARKS.md).
    chunks = [decode_chunk(preset, prompts, "lean", torch.float16, torch.float32, 140 * GIB, backend="triton")
              for preset, prompts in DEFAULT_RUNS]
    assert chunks == [18, 3, 2]
    preset = PRESETS["16x512x512"]
    kept = estimate_memory(preset, 2, "lean", vae_chunk_frames=1).decode - vae_frame_bytes(preset, torch.float16)
    pool = stdit_step_bytes(preset, 2, torch.float16, "cuda")
    assert decode_budget(preset, 2, "lean", torch.float16, torch.float32, 140 * GIB) == int(
        (LEAN_RESERVED_BYTES - RESERVE_FACTOR * kept - pool) / VAE_RESERVE_FACTOR)


@pytest.mark.parametrize("preset, prompts", DEFAULT_RUNS)
def test_resident_stays_below_the_reference_peak(preset, prompts):
    # SPEC section 6's reference peaks (allocated / reserved GiB); resident decodes in chunks of at most
    # RESIDENT_DECODE_BYTES, where the reference decodes every frame at once.
    reference_allocated, reference_reserved = {"16x256x256": (23.8, 28.2), "16x512x512": (35.9, 52.2),
                                               "64x512x512": (49.9, 67.2)}[preset]
    resident = default_estimate(preset, prompts, "resident")
    assert resident.peak <= reference_allocated * GIB
    assert resident.peak * RESERVE_FACTOR <= reference_reserved * GIB


def test_the_stage_report_and_last_stats_say_why_the_placement(capsys):
    engine = Engine.from_random_weights("tiny", device="cpu")
    engine.generate(["a red car in the snow"], seed=0, num_steps=2, output="latent", progress=True)
    printed = capsys.readouterr().out
    assert "placement resident (the only placement on cpu):" in printed
    # last_stats carries the same one line, and the report printed is its describe().
    assert engine.last_stats.plan.endswith("placement resident (the only placement on cpu)")
    assert "\n" not in engine.last_stats.plan
    assert engine.last_stats.describe(engine.device) in printed
    assert [s.name for s in engine.last_stats] == ["encode", "denoise"]
