"""The IDDPM sampler against the reference: spacing, betas, single steps, a 5-step guided loop, and
the RNG protocol of the reference script."""
import math

import pytest
import torch
from golden import load_golden, rel_error

from stdit_engine.errors import ConfigError, SamplingError
from stdit_engine.models.stdit import STDiT
from stdit_engine.schedulers.iddpm import IDDPM, SpacedSchedule, coefficient_table, guide, p_sample_step


@pytest.mark.parametrize("steps", [100, 25, 10])
def test_timestep_map_and_betas(steps):
    golden = load_golden("iddpm.pt")
    schedule = SpacedSchedule.build(steps)
    assert schedule.timestep_map.tolist() == golden[f"timestep_map_{steps}"].tolist()
    assert torch.allclose(torch.from_numpy(schedule.betas), golden[f"betas_{steps}"], rtol=1e-12, atol=0)


def test_single_steps():
    golden = load_golden("iddpm.pt")
    coefs = coefficient_table(SpacedSchedule.build(100))
    for case in golden["p_sample_steps"]:
        sample, pred_x0 = p_sample_step(coefs[case["index"]], case["x"], case["model_output"], case["noise"])
        assert rel_error(sample, case["sample"]) < 1e-10, case["index"]
        assert rel_error(pred_x0, case["pred_xstart"]) < 1e-10, case["index"]


def _golden_loop_inputs():
    loop = load_golden("sampling_loop.pt")
    golden = load_golden(loop["model"])
    model = STDiT(**golden["config"]).eval()
    model.load_state_dict(golden["state_dict"])
    return loop, model


def test_five_step_guided_loop_with_recorded_noise():
    loop, model = _golden_loop_inputs()
    noises = iter(loop["noises"])

    def replay(shape, dtype, device):
        noise = next(noises)
        assert tuple(noise.shape) == shape  # the protocol draws the full 2n-row shape
        return noise

    sampler = IDDPM(num_steps=loop["steps"], cfg_scale=loop["cfg_scale"])
    y_null = model.y_embedder.y_embedding[None, None]
    with torch.no_grad():
        sample = sampler.sample(model, loop["z0"], loop["y"], loop["mask"], y_null, noise_fn=replay)
    assert next(noises, None) is None  # one draw per step, the last step included
    assert rel_error(sample, loop["sample"]) < 1e-5


class RecordingModel:
    """A stand-in STDiT: records its inputs and returns a fixed function of them."""

    def __init__(self):
        self.calls = []

    def __call__(self, x, timestep, y, mask):
        self.calls.append((x.clone(), timestep.clone(), y.clone(), mask))
        eps = 0.1 * x + y.mean() * torch.arange(x.shape[0], dtype=x.dtype).view(-1, 1, 1, 1, 1)
        return torch.cat([eps, torch.zeros_like(x)], dim=1)


def test_rng_protocol_matches_reference_script():
    """manual_seed once; z = randn(n,...); each step randn(2n,...) of which rows 0..n-1 are used."""
    n, shape, steps = 2, (4, 2, 4, 4), 4
    y = torch.randn(n, 1, 3, 8)
    y_null = torch.randn(1, 1, 3, 8)
    sampler = IDDPM(num_steps=steps)

    torch.manual_seed(7)
    z = torch.randn(n, *shape)
    model = RecordingModel()
    ours = sampler.sample(model, z, y, None, y_null)

    torch.manual_seed(7)
    x = torch.randn(n, *shape)
    coefs = coefficient_table(sampler.schedule)
    for index in reversed(range(steps)):
        t = torch.full((2 * n,), float(sampler.schedule.timestep_map[index]))
        out = RecordingModel()(torch.cat([x, x]), t, torch.cat([y, y_null.expand_as(y)]), None)
        noise = torch.randn(2 * n, *shape)
        x, _ = p_sample_step(coefs[index], x, guide(out, 7.0, 3), noise[:n])
    assert torch.equal(ours, x)

    # The model saw the guidance batch [x; x], captions [y; y_null] and the ORIGINAL timesteps.
    first_x, first_t, first_y, _ = model.calls[0]
    assert torch.equal(first_x[:n], first_x[n:])
    assert torch.equal(first_y[n:], y_null.expand_as(y))
    assert first_t.tolist() == [999.0] * (2 * n)
    assert model.calls[-1][1].tolist() == [0.0] * (2 * n)


def test_guidance_channels():
    out = torch.randn(4, 8, 1, 2, 2)
    cond, uncond = out[:2], out[2:]
    three = guide(out, 7.0, 3)
    four = guide(out, 7.0, 4)
    expected = uncond[:, :4] + 7.0 * (cond[:, :4] - uncond[:, :4])
    assert torch.allclose(three[:, :3], expected[:, :3])
    assert torch.equal(three[:, 3], cond[:, 3])  # the released sampler leaves eps channel 3 unguided
    assert torch.allclose(four[:, :4], expected)
    assert torch.equal(three[:, 4:], cond[:, 4:]) and torch.equal(four[:, 4:], cond[:, 4:])


@pytest.mark.parametrize("kwargs, message", [
    (dict(num_steps=0), "num_steps"),
    (dict(num_steps=1001), "num_steps"),
    (dict(cfg_scale=math.nan), "cfg_scale"),
    (dict(cfg_scale=math.inf), "cfg_scale"),
    (dict(guidance_channels=2), "guidance_channels"),
])
def test_bad_sampler_arguments(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        IDDPM(**kwargs)


def test_nan_latent_stops_and_names_the_step():
    calls = []

    def model(x, timestep, y, mask):
        calls.append(1)
        out = torch.zeros(x.shape[0], 2 * x.shape[1], *x.shape[2:])
        return out.fill_(math.nan) if len(calls) == 3 else out

    z = torch.randn(1, 4, 1, 2, 2)
    with pytest.raises(SamplingError, match="step 3 of 20"):
        IDDPM(num_steps=20).sample(model, z, torch.zeros(1, 1, 2, 4), None, torch.zeros(1, 1, 2, 4))
    assert len(calls) <= 10  # it stopped at the first periodic check, not after all 20 steps


def test_half_precision_latent_is_updated_in_float32():
    # The reference multiplies by full float32 coefficient tensors, which promotes an fp16 latent.
    coefs = coefficient_table(SpacedSchedule.build(10))
    x = torch.randn(1, 4, 1, 2, 2).half()
    out = torch.randn(1, 8, 1, 2, 2).half()
    noise = torch.randn(1, 4, 1, 2, 2).half()
    sample, _ = p_sample_step(coefs[5], x, out, noise)
    expected, _ = p_sample_step(coefs[5].double(), x.double(), out.double(), noise.double())
    assert sample.dtype == torch.float32
    assert rel_error(sample, expected) < 1e-6
