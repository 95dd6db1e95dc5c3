"""Step caching (engine/step_cache.py, engine/cache_calibration.py) on the tiny preset, CPU: never-skip
settings change nothing, skipped steps do not run the skipped modules, stored outputs stand for the
computed ones, the schedule rules, per-request and per-call independence, the calibration file."""
import json
import math
import threading

import pytest
import torch

from stdit_engine import Engine
from stdit_engine.configs import PRESETS
from stdit_engine.engine import step_cache
from stdit_engine.engine.cache_calibration import (CacheCalibration, calibrate, interpolate_sensitivity,
                                                   sensitivity_steps)
from stdit_engine.engine.cache_defaults import DEFAULTS, FALLBACK, cache_defaults
from stdit_engine.engine.denoise import GuidedDenoiser
from stdit_engine.engine.memory import GIB, estimate_memory, step_cache_bytes
from stdit_engine.engine.placement_choice import check_step_cache_memory, choose_placement
from stdit_engine.engine.plan import resolve_plan
from stdit_engine.engine.step_cache import (FULL, RESIDUAL, AttentionBroadcast, BroadcastRange, StepVariant,
                                            attention_plan, make_plan, one_reuse_plan, residual_plan, schedule_cost)
from stdit_engine.errors import ConfigError
from stdit_engine.schedulers import make_sampler

PROMPTS = ["a sea turtle swimming over a coral reef", "a red car in the snow"]
STEPS = 8
NEVER_REUSE = AttentionBroadcast.uniform((1, 1, 1), 0.0, 1.0)
EVERY_OTHER = AttentionBroadcast.uniform((2, 2, 2), 0.0, 1.0)


def null_caption(engine):
    """The learned caption of guidance's unconditional half, [1, 1, L, C]."""
    return engine.stdit.y_embedder.y_embedding[None, None]


@pytest.fixture(scope="module")
def engine():
    engine = Engine.from_random_weights("tiny", device="cpu")
    engine.cache_calibration = calibrate(engine, runs=[("iddpm", STEPS)], prompts=PROMPTS)
    return engine


def latents(engine, prompts=PROMPTS, seed=1, **kwargs):
    return engine.generate(prompts, seed=seed, num_steps=STEPS, output="latent", progress=False, **kwargs)


def skipping_threshold(engine, skips: int) -> float:
    """The smallest threshold (of a few) at which the calibrated schedule skips at least `skips` steps."""
    for threshold in (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.4, 0.8, 1.6, 3.2):
        plan = make_plan("residual", sampler="iddpm", evaluations=STEPS, threshold=threshold,
                         calibration=engine.cache_calibration)
        if plan.reused(RESIDUAL) >= skips:
            return threshold
    raise AssertionError("no threshold skips enough")


# ------------------------------------------------------------------ never skip: nothing changes

def test_never_skip_settings_give_the_uncached_output_bitwise(engine):
    reference = latents(engine)
    assert torch.equal(latents(engine, cache="residual", cache_threshold=0.0), reference)
    assert torch.equal(latents(engine, cache="attention", cache_broadcast=NEVER_REUSE), reference)


def test_steps_that_store_for_later_give_the_uncached_output_bitwise(engine):
    """A recording forward (the step before a skip) returns exactly what forward_embedded does."""
    model, inputs = engine.stdit, forward_inputs(engine)
    plain = model.forward_embedded(*inputs)
    for plan in (residual_plan([0.0] * 4, [0.0] * 4, threshold=1.0), attention_plan(EVERY_OTHER, 4)):
        recording = next(v for v in plan.variants if v.record)
        forwards = plan.forwards(model, inputs[0])
        assert torch.equal(forwards(recording)(*inputs), plain), plan.mode


def test_reused_outputs_stand_for_the_computed_ones(engine):
    """Reusing what was stored at the same inputs gives the computed output: the residual (up to
    rounding of h0 + (out - h0)) and the attention outputs (exactly)."""
    model, inputs = engine.stdit, forward_inputs(engine)
    plain = model.forward_embedded(*inputs)
    forwards = residual_plan([0.0] * 4, [0.0] * 4, threshold=1.0).forwards(model, inputs[0])
    forwards(StepVariant(record=frozenset({RESIDUAL})))(*inputs)
    torch.testing.assert_close(forwards(StepVariant(reuse=frozenset({RESIDUAL})))(*inputs), plain,
                               rtol=1e-5, atol=1e-5)
    kinds = frozenset({"spatial", "temporal", "cross"})
    forwards = attention_plan(EVERY_OTHER, 4).forwards(model, inputs[0])
    forwards(StepVariant(record=kinds))(*inputs)
    assert torch.equal(forwards(StepVariant(reuse=kinds))(*inputs), plain)


def forward_inputs(engine):
    """forward_embedded's inputs for a guidance batch of the two prompts at step 3 of STEPS."""
    model = engine.stdit
    y, mask = engine.encode_prompts(PROMPTS)
    captions = torch.cat([y, null_caption(engine).expand_as(y)])
    caption_kv, lengths = model.embed_caption(captions, mask)
    temb, t0 = model.embed_timestep(make_sampler("iddpm", num_steps=STEPS).model_timesteps("cpu")[3:4].expand(4))
    x = torch.randn(4, *engine.preset.latent_shape, generator=torch.Generator().manual_seed(0))
    return x, temb, t0, caption_kv, lengths


# ------------------------------------------------------------------ skipped work is not run

class ModuleCalls:
    def __init__(self, modules):
        self.count = 0
        self.handles = [m.register_forward_hook(self.hook) for m in modules]

    def hook(self, *_):
        self.count += 1

    def __enter__(self):
        return self

    def __exit__(self, *_):
        for handle in self.handles:
            handle.remove()


def test_residual_cache_skips_the_blocks(engine):
    threshold = skipping_threshold(engine, 3)
    plan = make_plan("residual", sampler="iddpm", evaluations=STEPS, threshold=threshold,
                     calibration=engine.cache_calibration)
    with ModuleCalls(engine.stdit.blocks) as blocks:
        cached = latents(engine, cache="residual", cache_threshold=threshold)
    assert blocks.count == (STEPS - plan.reused(RESIDUAL)) * len(engine.stdit.blocks)
    assert not plan.variants[0].reuse and not plan.variants[-1].reuse  # first and last always run
    reference = latents(engine)
    assert not torch.equal(cached, reference)
    assert torch.isfinite(cached).all()


@pytest.mark.parametrize("kind, module", [("spatial", "attn"), ("temporal", "attn_temp"), ("cross", "cross_attn")])
def test_attention_cache_skips_each_kind_on_its_own_interval(engine, kind, module):
    broadcast = AttentionBroadcast(**{k: BroadcastRange(3 if k == kind else 1, 0.0, 1.0)
                                      for k in ("spatial", "temporal", "cross")})
    plan = make_plan("attention", sampler="iddpm", evaluations=STEPS, broadcast=broadcast)
    # Steps 1..6 are inside the range; the first of them computes, then two of every three reuse.
    assert [i for i, v in enumerate(plan.variants) if v.reuse] == [2, 3, 5, 6]
    assert all(v.reuse <= {kind} for v in plan.variants)
    modules = [getattr(block, module).proj for block in engine.stdit.blocks]
    with ModuleCalls(modules) as calls:
        cached = latents(engine, cache="attention", cache_broadcast=broadcast)
    assert calls.count == (STEPS - 4) * len(modules)
    assert not torch.equal(cached, latents(engine))


# ------------------------------------------------------------------ the schedules

def test_residual_rule_spends_the_threshold_on_the_cheapest_skips():
    """Every change 0.1 and every sensitivity 0.1: a skip right after a step that ran the blocks
    costs 0.1, the n-th in a row 0.1 n, so a budget of 0.35 buys three lone skips (a fourth, or a
    second in a row, would cost 0.2 more)."""
    plan = residual_plan([0.0] + [0.1] * 7, [0.1] * 8, threshold=0.35)
    assert [bool(v.reuse) for v in plan.variants] == [False, True, False, True, False, True, False, False]
    # The step before a skip stores the residual; the others store nothing.
    assert [bool(v.record) for v in plan.variants] == [True, False, True, False, True, False, False, False]
    assert residual_plan([5.0] * 6, [0.0] * 6, threshold=0.0).variants == (FULL,) * 6
    assert residual_plan([0.1] * 6, [0.1] * 6, threshold=100.0).reused(RESIDUAL) == 4  # never the first or last


def test_schedule_cost_adds_each_skips_sensitivity_times_its_staleness():
    changes, sensitivities = [0.0, 0.1, 0.1, 0.3, 0.1], [0.0, 0.2, 0.2, 0.2, 0.2]
    assert schedule_cost(changes, sensitivities, {1, 2}) == pytest.approx(0.2 + 0.2 * 2)
    # Step 3 has changed (0.1 + 0.3) / 0.3 of its own change since step 1 ran the blocks.
    assert schedule_cost(changes, sensitivities, {2, 3}) == pytest.approx(0.2 + 0.2 * 4 / 3)
    # A step that changes nothing is as measured alone, and unbounded after one that changed.
    assert schedule_cost([0.0, 0.1, 0.0, 0.1], [0.1] * 4, {2}) == pytest.approx(0.1)
    assert schedule_cost([0.0, 0.1, 0.0, 0.1], [0.1] * 4, {1, 2}) == math.inf


def test_residual_rule_keeps_the_steps_whose_errors_grow():
    """The first steps change least here, so a rule on the change alone skips them; their
    sensitivity (an error there moves the result 20-100x more) keeps them, and later steps, which
    change more, are skipped instead."""
    changes = [0.0, 0.01, 0.01, 0.01, 0.05, 0.05, 0.05, 0.05, 0.05, 0.05]
    plan = residual_plan(changes, [1.0, 1.0, 0.5, 0.2] + [0.01] * 6, threshold=0.05)
    assert [i for i, v in enumerate(plan.variants) if v.reuse] == [4, 6, 8]
    unweighted = residual_plan(changes, [0.01] * len(changes), threshold=0.05)
    assert [i for i, v in enumerate(unweighted.variants) if v.reuse] == [1, 3, 5, 7]


def test_sensitivity_is_interpolated_geometrically():
    assert interpolate_sensitivity({1: 1.0, 3: 0.01}, 5) == pytest.approx((1.0, 1.0, 0.1, 0.01, 0.01))
    assert interpolate_sensitivity({}, 3) == (0.0, 0.0, 0.0)
    assert sensitivity_steps(20, at_most=6) == [1, 4, 8, 11, 15, 18]
    assert sensitivity_steps(5) == [1, 2, 3] and sensitivity_steps(2) == []


def test_attention_ranges_are_fractions_of_the_steps():
    broadcast = AttentionBroadcast(spatial=BroadcastRange(2, 0.0, 0.5), temporal=BroadcastRange(1),
                                   cross=BroadcastRange(4, 0.5, 1.0))
    plan = attention_plan(broadcast, 20)
    assert [i for i, v in enumerate(plan.variants) if "spatial" in v.reuse] == [2, 4, 6, 8]
    assert [i for i, v in enumerate(plan.variants) if "cross" in v.reuse] == [11, 12, 13, 15, 16, 17]
    assert plan.reused("temporal") == 0
    assert plan.recorded == {"spatial", "cross"}


# ------------------------------------------------------------------ defaults per sampler and steps

# A curve that changes by 0.1 at every step after an identity polynomial, and sensitivity 0.001 at
# every step: a lone skip costs 0.001, so different thresholds give different plans.
EVEN_CHANGES = CacheCalibration((1.0, 0.0), {f"{s}:{n}": (0.0,) + (0.1,) * (n - 1) for s, n in DEFAULTS},
                                {f"{s}:{n}": (0.001,) * n for s, n in DEFAULTS}, {}, 0)


@pytest.mark.parametrize("sampler, steps", list(DEFAULTS))
def test_default_settings_are_the_tables(sampler, steps):
    table = DEFAULTS[sampler, steps]
    changes = EVEN_CHANGES.rescaled_changes(sampler, steps)
    sensitivity = EVEN_CHANGES.sensitivity(sampler, steps)
    default = make_plan("residual", sampler=sampler, evaluations=steps, calibration=EVEN_CHANGES)
    assert default == residual_plan(changes, sensitivity, table.residual_threshold)
    assert default.reused(RESIDUAL) > 0
    explicit = make_plan("residual", sampler=sampler, evaluations=steps, threshold=0.0035, calibration=EVEN_CHANGES)
    assert explicit == residual_plan(changes, sensitivity, 0.0035) != default
    expected = attention_plan(AttentionBroadcast.uniform(table.attention_intervals, *table.attention_range), steps)
    assert make_plan("attention", sampler=sampler, evaluations=steps) == expected
    assert (make_plan("attention", sampler=sampler, evaluations=steps, broadcast=EVERY_OTHER)
            == attention_plan(EVERY_OTHER, steps) != expected)


def test_defaults_of_calls_without_an_entry():
    """The sampler's entry of the nearest step count; FALLBACK (the most cautious entry) for a
    sampler the table does not name."""
    assert cache_defaults("iddpm", 250) == DEFAULTS["iddpm", 100]
    assert cache_defaults("dpm-solver++", 10) == DEFAULTS["dpm-solver++", 20]
    assert cache_defaults("ddim", 50) == FALLBACK
    assert FALLBACK.residual_threshold == min(d.residual_threshold for d in DEFAULTS.values())


def test_generate_uses_the_default_threshold(engine):
    threshold = cache_defaults("iddpm", STEPS).residual_threshold
    default = latents(engine, cache="residual")
    assert torch.equal(default, latents(engine, cache="residual", cache_threshold=threshold))
    assert not torch.equal(default, latents(engine))  # the default skips steps here


@pytest.mark.parametrize("kwargs, message", [
    (dict(cache="teacache"), "unknown cache 'teacache'"),
    (dict(cache_threshold=0.1), "without a cache"),
    (dict(cache="attention", cache_threshold=0.1), "cache_threshold belongs to cache='residual'"),
    (dict(cache="residual", cache_threshold=-1.0), "cache_threshold must be a number >= 0"),
    (dict(cache="residual", num_steps=7), "nothing for sampler 'iddpm' at 7 steps"),
])
def test_bad_cache_arguments(engine, kwargs, message):
    kwargs = {"num_steps": STEPS, **kwargs}
    with pytest.raises(ConfigError, match=message):
        engine.generate(PROMPTS, seed=1, output="latent", progress=False, **kwargs)


def test_bad_broadcast_ranges():
    with pytest.raises(ConfigError, match="integer >= 1"):
        BroadcastRange(0)
    with pytest.raises(ConfigError, match="0 <= start <= stop <= 1"):
        BroadcastRange(2, 0.7, 0.2)


# ------------------------------------------------------------------ per request, per call

@pytest.mark.parametrize("cache, setting", [("residual", None), ("attention", EVERY_OTHER)])
def test_a_requests_skips_do_not_depend_on_its_batchmates(engine, cache, setting):
    threshold = skipping_threshold(engine, 3) if cache == "residual" else None
    plan = make_plan(cache, sampler="iddpm", evaluations=STEPS, threshold=threshold, broadcast=setting,
                     calibration=engine.cache_calibration)
    denoiser = GuidedDenoiser(engine.stdit, use_cuda_graphs=False)
    y, mask = engine.encode_prompts(PROMPTS)
    z = torch.randn(2, *engine.preset.latent_shape, generator=torch.Generator().manual_seed(3))

    def sample(rows: slice, plan):
        # DDIM (eta 0) draws no noise: a request's latent does not depend on a draw for the batch.
        return denoiser.sample(make_sampler("ddim", num_steps=STEPS), z[rows], y[rows], mask[rows], null_caption(engine),
                               cache=plan)

    def one_by_one(plan):
        return torch.cat([sample(slice(i, i + 1), plan) for i in range(2)])

    alone, alone_uncached = one_by_one(plan), one_by_one(None)
    batching_noise = (sample(slice(0, 2), None) - alone_uncached).abs().max()
    assert (sample(slice(0, 2), plan) - alone).abs().max() <= batching_noise + 1e-6
    assert not torch.allclose(alone, alone_uncached)


def test_concurrent_calls_do_not_share_a_cache(engine):
    settings = [dict(cache="residual", cache_threshold=skipping_threshold(engine, 3)),
                dict(cache="attention", cache_broadcast=EVERY_OTHER), dict()]
    alone = [latents(engine, seed=i, **kw) for i, kw in enumerate(settings)]
    results = [None] * len(settings)
    barrier = threading.Barrier(len(settings))

    def run(i):
        barrier.wait(timeout=60)
        results[i] = latents(engine, seed=i, **settings[i])

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(settings))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(thread.is_alive() for thread in threads)
    for got, expected in zip(results, alone):
        assert torch.equal(got, expected)


# ------------------------------------------------------------------ the calibration file

def test_calibration_file_round_trip_and_model_check(engine, tmp_path):
    path = tmp_path / "cache.json"
    engine.cache_calibration.save(path)
    again = Engine.from_random_weights("tiny", device="cpu", cache_calibration=path)
    assert again.cache_calibration == engine.cache_calibration
    threshold = skipping_threshold(engine, 3)
    assert torch.equal(latents(again, cache="residual", cache_threshold=threshold),
                       latents(engine, cache="residual", cache_threshold=threshold))
    with pytest.raises(ConfigError, match="other weights"):
        Engine.from_random_weights("tiny", device="cpu", seed=1, cache_calibration=path)
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(ConfigError, match="not a step-cache calibration"):
        CacheCalibration.load(tmp_path / "bad.json")


def test_residual_cache_needs_a_calibration():
    engine = Engine.from_random_weights("tiny", device="cpu")
    with pytest.raises(ConfigError, match="calibrate-cache"):
        latents(engine, cache="residual")


def test_calibration_curve_and_polynomial(engine):
    calibration = engine.cache_calibration
    curve = calibration.curves[f"iddpm:{STEPS}"]
    assert len(curve) == STEPS and curve[0] == 0.0 and all(c > 0 for c in curve[1:])
    assert len(calibration.polynomial) == 5
    assert calibration.model["preset"] == "tiny" and calibration.prompts == len(PROMPTS)


def test_calibration_sensitivity_is_what_one_reuse_does_to_the_result(engine):
    """At each measured step: the final latent's relative L2 (mean over the prompts) when that step
    alone reuses the residual, against the uncached run from the same noise (calibrate()'s seed 0)."""
    sensitivity = engine.cache_calibration.sensitivity("iddpm", STEPS)
    assert len(sensitivity) == STEPS and sensitivity_steps(STEPS) == list(range(1, STEPS - 1))
    y, mask = engine.encode_prompts(PROMPTS)

    def sample(plan):
        generator = torch.Generator().manual_seed(0)
        z = torch.randn((len(PROMPTS), *engine.preset.latent_shape), generator=generator)
        return GuidedDenoiser(engine.stdit, use_cuda_graphs=False).sample(
            make_sampler("iddpm", num_steps=STEPS), z, y, mask, null_caption(engine), generator=generator, cache=plan)

    reference = sample(None)
    for step in (1, STEPS - 2):
        moved = sample(one_reuse_plan(step, STEPS)) - reference
        expected = (moved.flatten(1).norm(dim=1) / reference.flatten(1).norm(dim=1)).mean()
        assert sensitivity[step] == pytest.approx(float(expected), rel=1e-4) and sensitivity[step] > 0


def test_a_calibration_without_sensitivities_is_refused(engine, tmp_path):
    path = tmp_path / "old.json"
    engine.cache_calibration.save(path)
    record = json.loads(path.read_text())
    del record["sensitivities"]
    record["version"] = 1
    path.write_text(json.dumps(record))
    with pytest.raises(ConfigError, match="version 2; make it \\(again\\)"):
        CacheCalibration.load(path)



def test_a_polynomial_below_zero_never_pays_back_the_sum():
    """x^2 - 0.1 is negative for changes below 0.32: those steps count as no change, not as a
    negative one that would let the sum of the later steps skip more."""
    calibration = CacheCalibration((1.0, 0.0, -0.1), {"ddim:6": (0.0, 0.1, 0.1, 0.5, 0.5, 0.5)},
                                   {"ddim:6": (0.15,) * 6}, {}, 0)
    assert calibration.rescaled_changes("ddim", 6) == pytest.approx([0.0, 0.0, 0.0, 0.15, 0.15, 0.15])
    plan = make_plan("residual", sampler="ddim", evaluations=6, threshold=0.65, calibration=calibration)
    # Skipping steps 1-3 costs 0.15 each; step 4 as well would cost 0.15 x 2 (its change since the
    # blocks ran, 0.3, is twice its own): 0.75. Unclamped, that change would be -0.09 -0.09 +0.15
    # +0.15, less than its own, and step 4 would skip for 0.15 more: 0.6.
    assert [bool(v.reuse) for v in plan.variants] == [False, True, True, True, False, False]

# ------------------------------------------------------------------ memory: the buffers are in the estimate

@pytest.mark.parametrize("cache, setting", [("residual", None), ("attention", EVERY_OTHER)])
def test_estimate_counts_the_buffers_the_cache_allocates(engine, monkeypatch, cache, setting):
    """What a call's CacheBuffers allocate (every kind the plan can store: EVERY_OTHER stores all
    three attention kinds) is what estimate_memory adds to the denoise stage for that cache."""
    allocated = []

    class Recorded(step_cache.CacheBuffers):
        def __init__(self, *args):
            super().__init__(*args)
            tensors = [self.residual, *self.attention.values()]
            allocated.append(sum(t.numel() * t.element_size() for t in tensors if t is not None))

    monkeypatch.setattr(step_cache, "CacheBuffers", Recorded)
    threshold = skipping_threshold(engine, 3) if cache == "residual" else None
    latents(engine, cache=cache, cache_threshold=threshold, cache_broadcast=setting)
    assert len(allocated) == 1 and allocated[0] > 0

    def estimate(cache):
        return estimate_memory("tiny", len(PROMPTS), "resident", engine.dtype, engine.text_encoder.dtype,
                               device="cpu", cache=cache)

    with_cache, without = estimate(cache), estimate(None)
    assert with_cache.denoise - without.denoise == allocated[0]
    assert (with_cache.encode, with_cache.decode) == (without.encode, without.decode)  # freed with the call on CPU


def test_on_cuda_the_graph_keeps_the_buffers_where_it_stays():
    """At 64x512x512, 1 prompt: the attention cache stores 28 blocks x 3 kinds x [2, 65536, 1152]
    bf16; resident and lean keep the captured graph (and so the buffers) through the later stages."""
    attention = 28 * 3 * 2 * 65536 * 1152 * 2
    for mode in ("resident", "lean", "offload", "sequential"):
        with_cache, without = (estimate_memory("64x512x512", 1, mode, torch.bfloat16, vae_chunk_frames=1,
                                               backend="triton", fp8=True, cache=cache)
                               for cache in ("attention", None))
        kept = attention if mode in ("resident", "lean") else 0
        assert with_cache.denoise - without.denoise == attention, mode
        assert with_cache.decode - without.decode == kept and with_cache.encode - without.encode == kept, mode
    assert step_cache_bytes(PRESETS["64x512x512"], 1, torch.bfloat16, "residual") == 2 * 65536 * 1152 * 4


def test_auto_placement_leaves_room_for_the_step_cache(monkeypatch):
    """64x512x512 bf16 + FP8 on a GPU with 24 GiB free: lean fits with no cache or the residual
    cache, and nothing fits the attention cache's 23.6 GiB of buffers: refused before loading."""
    preset = PRESETS["64x512x512"]
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (24 * GIB, 80 * GIB))

    def choose(step_cache):
        return choose_placement("auto", preset, torch.device("cuda"), torch.bfloat16, torch.float32, "triton", True,
                                step_cache)

    assert choose(None).mode == choose("residual").mode == "lean"
    assert "with the residual step cache's 0.6 GiB" in choose("residual").reason
    with pytest.raises(ConfigError, match=r"'sequential' with the attention step cache's 23.6 GiB .*"
                                          r"t5_dtype=torch.bfloat16, cache='residual' \(smaller buffers\), or use"):
        choose("attention")
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (40 * GIB, 80 * GIB))
    lean = choose("attention")
    # Its buffers stay with the graph beside the lean decode, outside lean's reserved bound.
    assert lean.mode == "lean" and "stay within" not in lean.reason and "attention step cache" in lean.reason
    with pytest.raises(ConfigError, match="unknown cache 'teacache'"):
        resolve_plan("tiny", device="cpu", step_cache="teacache")


def test_a_call_whose_cache_cannot_fit_is_refused_before_work():
    def check(cache, available_gib):
        check_step_cache_memory(PRESETS["64x512x512"], 1, "resident", torch.bfloat16, torch.float32,
                                torch.device("cuda"), "triton", True, cache, int(available_gib * GIB))

    check("residual", 40)
    check("attention", 60)
    with pytest.raises(ConfigError, match=r"cache='attention' does not fit: its buffers take 23.6 GiB .* "
                                          r"placement 'resident' would need about 56.\d GiB of the 40.0 GiB.*"
                                          r"use cache='residual' \(smaller buffers\), a smaller batch_size"):
        check("attention", 40)
