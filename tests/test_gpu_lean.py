"""Placement "lean" on the GPU: the resident latent, the STDiT and its graphs kept across calls, T5
streamed with prefetch giving resident T5's embeddings bitwise, T5-XXL's rows independent of the
batch they are encoded in (what the prompt cache relies on to be exact across batches), and the
opt-in bf16 T5 near fp32."""
import pytest
import torch

from stdit_engine import Engine
from stdit_engine.configs import PRESETS
from stdit_engine.models.text_encoder import TextEncoder

pytestmark = pytest.mark.gpu
PROMPTS = ["a sea turtle swimming over a coral reef", "a red car in the snow"]


def test_lean_gives_the_resident_latent_and_keeps_the_stdit_and_its_graphs():
    kwargs = dict(seed=4, num_steps=5, output="latent", progress=False)
    resident = Engine.from_random_weights("tiny", device="cuda", dtype=torch.float16, placement="resident")
    expected = resident.generate(PROMPTS, **kwargs)
    expected_y = resident.text_encoder.encode(PROMPTS)[0]
    lean = Engine.from_random_weights("tiny", device="cuda", dtype=torch.float16)  # auto: lean on a big GPU
    assert lean.placement.mode == "lean"
    assert torch.equal(lean.generate(PROMPTS, **kwargs), expected)
    assert all(p.device.type == "cuda" for p in lean.stdit.parameters())
    assert all(p.device.type == "cpu" for p in lean.text_encoder.model.parameters())
    assert all(p.device.type == "cpu" for p in lean.vae.model.parameters())
    graphs = dict(lean.denoiser._graphs._entries)  # key -> captured step
    assert len(graphs) == 1
    lean.prompt_cache.clear()  # T5 streams again (with its prefetch)
    assert torch.equal(lean.generate(PROMPTS, **kwargs), expected)
    assert dict(lean.denoiser._graphs._entries) == graphs  # the same captured step, replayed
    with torch.inference_mode():
        streamed_y = lean._encode_cleaned(PROMPTS)[0]
    assert torch.equal(streamed_y, expected_y)


def test_lean_and_resident_warmed_up_while_loading_give_every_call_the_same_latent():
    kwargs = dict(seed=4, num_steps=5, output="latent", progress=False)
    resident = Engine.from_random_weights("tiny", device="cuda", dtype=torch.float16, placement="resident", warmup=True)
    expected = resident.generate(PROMPTS, **kwargs)
    lean = Engine.from_random_weights("tiny", device="cuda", dtype=torch.float16, warmup=True)
    assert torch.equal(lean.generate(PROMPTS, **kwargs), expected)
    lean.prompt_cache.clear()
    assert torch.equal(lean.generate(PROMPTS, **kwargs), expected)


def test_warmup_captures_each_batch_size_so_later_calls_only_replay():
    engine = Engine.from_random_weights("tiny", device="cuda", dtype=torch.float16)
    engine.warmup([1, 2])
    graphs = dict(engine.denoiser._graphs._entries)  # key -> captured step
    assert sorted(key[0][0] for key in graphs) == [1, 2]  # the latent's batch
    engine.generate(PROMPTS, seed=1, num_steps=3, progress=False)
    engine.generate(PROMPTS[:1], seed=1, num_steps=3, progress=False)
    assert dict(engine.denoiser._graphs._entries) == graphs


def test_loading_warms_up_so_the_first_call_only_replays_and_each_report_says_what_it_paid():
    engine = Engine.from_random_weights("tiny", device="cuda", dtype=torch.float16, warmup=True)
    stages = [f"warm-up {stage} x2" for stage in ("encode", "denoise", "decode")]
    assert [stage.name for stage in engine.load_stats] == ["weights", "placement", *stages]
    assert set(engine.load_stats[3].parts) == {"compile", "capture"}
    graphs = dict(engine.denoiser._graphs._entries)
    assert len(graphs) == 1
    engine.generate(PROMPTS, seed=1, num_steps=3, progress=False)
    assert dict(engine.denoiser._graphs._entries) == graphs  # no capture on the first call
    assert [stage.parts for stage in engine.last_stats] == [{}, {}, {}]
    cold = Engine.from_random_weights("tiny", device="cuda", dtype=torch.float16, warmup=False)
    assert [stage.name for stage in cold.load_stats] == ["weights", "placement"]
    cold.generate(PROMPTS, seed=1, num_steps=3, progress=False)
    assert set(cold.last_stats[1].parts) == {"compile", "capture"}  # the first call's report shows them
    assert "(of which compile " in cold.last_stats.describe(cold.device)


def test_a_placement_that_captures_every_call_allocates_no_more_call_after_call():
    # Sequential drops its graphs after each denoise and captures again on the next call: nothing
    # of those captures may stay allocated (a cuBLAS workspace per new warm-up stream would).
    engine = Engine.from_random_weights("tiny", device="cuda", dtype=torch.float16, placement="sequential")
    engine.generate(PROMPTS, seed=1, num_steps=2, progress=False)
    engine.generate(PROMPTS, seed=1, num_steps=2, progress=False)
    torch.cuda.synchronize()
    after_two = torch.cuda.memory_allocated()
    for _ in range(4):
        engine.generate(PROMPTS, seed=1, num_steps=2, progress=False)
    torch.cuda.synchronize()
    assert torch.cuda.memory_allocated() == after_two


@pytest.fixture(scope="module")
def t5_xxl():
    return TextEncoder.from_random_weights(PRESETS["16x256x256"].text, device="cuda")


def test_t5_xxl_rows_do_not_depend_on_their_batch(t5_xxl):
    third = "two dogs playing on the beach at sunset, aerial view"
    prompts = [*PROMPTS, third]
    seen = []  # the batch each block's attention layer gets: 1, prompt by prompt
    hook = t5_xxl.model.encoder.block[5].layer[0].register_forward_pre_hook(lambda m, args: seen.append(args[0].shape[0]))
    try:
        together, _ = t5_xxl.encode(prompts)
    finally:
        hook.remove()
    assert seen == [1, 1, 1]
    together_again, _ = t5_xxl.encode(prompts)
    for i, prompt in enumerate(prompts):
        alone, _ = t5_xxl.encode([prompt])
        alone_again, _ = t5_xxl.encode([prompt])
        # Each difference named, so that a failure tells batch dependence from run-to-run variation.
        assert torch.equal(together[i], alone[0]), (
            f"row {i}: together vs alone max difference {(together[i] - alone[0]).abs().max():.3g}; the same "
            f"batch twice {(together - together_again).abs().max():.3g}, alone twice {(alone - alone_again).abs().max():.3g}")


def test_t5_xxl_in_bf16_stays_near_fp32(t5_xxl):
    # The opt-in t5_dtype=torch.bfloat16, on random weights (BENCHMARKS.md); trained ones, with
    # their outlier channels, may differ.
    fp32, _ = t5_xxl.encode(PROMPTS)
    bf16 = TextEncoder(t5_xxl.model.to(torch.bfloat16), t5_xxl.tokenizer, max_length=t5_xxl.max_length)
    y, _ = bf16.encode(PROMPTS)
    rel = ((y.double() - fp32.double()).norm() / fp32.double().norm()).item()
    assert rel < 4e-2
