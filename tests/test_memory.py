"""The live-tensor accounting used off CUDA, and the memory estimate against what it measures on the
tiny preset (CPU)."""
import threading

import pytest
import torch

from stdit_engine import Engine
from stdit_engine.engine.live_memory import LiveTensorPeak
from stdit_engine.engine.memory import StageStats, estimate_memory

CPU = torch.device("cpu")
MIB = 2**20


def mib_of_floats() -> torch.Tensor:
    return torch.empty(MIB // 4)


def test_views_share_their_storage_and_frees_are_seen():
    with LiveTensorPeak(CPU) as live:
        a = mib_of_floats()
        view = a[10:].view(-1, 2)
        a.add_(1)  # in place: no new storage
        b = a * 2
        assert live.current == 2 * MIB
        del a
        assert live.current == 2 * MIB  # the view keeps a's storage alive
        del view
        assert live.current == MIB
        del b
        assert live.current == 0
    assert live.peak == 2 * MIB


def test_present_tensors_count_once_and_other_devices_not_at_all():
    weight = mib_of_floats()
    with LiveTensorPeak(CPU, present=[weight, weight[:3], torch.empty(MIB, device="meta")]) as live:
        assert live.current == MIB
        scratch = mib_of_floats()
        del scratch
        torch.empty(MIB, device="meta")
    assert live.peak == 2 * MIB


def test_a_storage_grown_by_an_out_op_is_recounted():
    with LiveTensorPeak(CPU) as live:
        out = torch.empty(0)
        torch.mul(mib_of_floats(), 2, out=out)
        assert live.current == MIB
    assert live.peak == 2 * MIB  # the input and the output


def test_a_storage_freed_on_another_thread_while_the_measurement_ends():
    """A finalizer runs on the thread that frees the storage (another call dropping a shared tensor):
    here, while the measurement's exit goes over its finalizers."""
    handed_over, freer = [], None

    class FreedWhileRead(dict):
        def values(self):
            nonlocal freer
            for index, value in enumerate(super().values()):  # a change under it raises
                yield value
                if index == 0:
                    freer = threading.Thread(target=handed_over.clear)
                    freer.start()
                    freer.join(0.2)  # it frees now, or waits until the exit lets it

    live = LiveTensorPeak(CPU)
    live._finalizers = FreedWhileRead()
    with live:
        kept = mib_of_floats()
        handed_over.append(mib_of_floats())
        assert live.current == 2 * MIB
    freer.join()
    assert live.peak == 2 * MIB and live.current == MIB  # the release was counted, and nothing raised
    del kept


def test_estimate_is_within_15_percent_of_the_measured_peaks_on_tiny():
    engine = Engine.from_random_weights("tiny", device="cpu", placement="resident")
    engine.generate(["a sea turtle swimming over a coral reef", "a red car in the snow"], seed=0, num_steps=2,
                    progress=False)
    measured = {stats.name: stats.peak_allocated for stats in engine.last_stats}
    estimate = estimate_memory("tiny", 2, "resident", engine.dtype, engine.text_encoder.dtype, device="cpu")
    weights = sum(estimate.weights.values())
    # Each stage counts the resident weights plus its own activations, so a stage's figure cannot
    # pass on the weights alone.
    assert all(peak > weights for peak in measured.values())
    predicted = {"encode": estimate.encode, "denoise": estimate.denoise, "decode": estimate.decode}
    assert predicted == pytest.approx(measured, rel=0.15)
    assert estimate.peak == pytest.approx(max(measured.values()), rel=0.15)
    assert max(measured, key=measured.get) == "decode" == max(predicted, key=predicted.get)


def test_stage_report_uses_mib_below_a_gib():
    stats = StageStats("decode", 0.5, peak_allocated=17 * MIB + MIB // 2, peak_reserved=3 * 2**30)
    assert stats.describe(CPU).endswith("peak 17.5 MiB of tensors / process peak RSS 3.00 GiB")


def test_what_a_kept_step_graph_allocates_is_its_static_buffers(monkeypatch):
    """memory.graph_kept_bytes counts, beside the workspaces, the captured step's static caption K/V:
    traced here on the GraphedStep itself (its static buffers are made before any capture; the pool
    handle, a CUDA call, is stubbed), whose other buffers are latent-sized."""
    from stdit_engine.configs import PRESETS
    from stdit_engine.engine.denoise import WHOLE_BATCH, GraphedStep, StepInputs
    from stdit_engine.engine.memory import STDIT_CUDA_EXTRA_BYTES, caption_kv_bytes, graph_kept_bytes
    from stdit_engine.schedulers import make_sampler

    monkeypatch.setattr(torch.cuda, "graph_pool_handle", lambda: None)
    engine = Engine.from_random_weights("tiny", device="cpu", placement="resident")
    model, preset, n = engine.stdit, PRESETS["tiny"], 2
    y, mask = engine.encode_prompts(["a sea turtle swimming over a coral reef", "a red car in the snow"])
    with torch.inference_mode():
        caption_kv, kv_lengths = model.embed_caption(WHOLE_BATCH.captions(y, model.y_embedder.y_embedding[None, None]),
                                                     mask)
        sampler = make_sampler("iddpm", num_steps=2, cfg_scale=7.0)
        z = torch.randn(n, *preset.latent_shape)
        temb, t0 = model.embed_timestep(sampler.model_timesteps(z.device))
        inputs = StepInputs(temb[0].expand(2 * n, -1), t0[0].expand(2 * n, -1), caption_kv, kv_lengths,
                            sampler.coefficient_table(z.device)[0], sampler.new_memory(z), sampler.cfg_scale)
        with LiveTensorPeak(CPU) as live:
            step = GraphedStep(model, sampler, z, z, inputs, WHOLE_BATCH)
    static_kv = sum(t.untyped_storage().nbytes() for pair in step.inputs.caption_kv for t in pair)
    assert static_kv == caption_kv_bytes(preset, n, engine.dtype) > 0
    latent = z.float().untyped_storage().nbytes()
    assert static_kv <= live.current <= static_kv + 6 * latent  # x, noise, the sampler's memory, temb, t0, ...
    assert graph_kept_bytes(preset, n, engine.dtype, "cuda") == static_kv + STDIT_CUDA_EXTRA_BYTES
    assert graph_kept_bytes(preset, n, engine.dtype, "cpu") == 0  # no graph off CUDA
