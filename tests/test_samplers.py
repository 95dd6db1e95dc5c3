"""The samplers behind one interface: the reference's DPM-Solver against its golden vectors, every
sampler through Engine.generate (hoisted loop = plain loop), argument errors."""
import pytest
import torch
from golden import load_golden, rel_error

from stdit_engine import Engine
from stdit_engine.errors import ConfigError
from stdit_engine.models.stdit import STDiT
from stdit_engine.schedulers import SAMPLERS, make_sampler
from stdit_engine.schedulers.ode import DDIM

PROMPTS = ["a sea turtle swimming over a coral reef", "a red car in the snow"]


@pytest.fixture(scope="module")
def engine():
    return Engine.from_random_weights("tiny", device="cpu")


@pytest.mark.slow
def test_reference_dpm_solver_matches_golden_vectors():
    golden = load_golden("dpm_solver.pt")
    weights = load_golden(golden["model"])
    model = STDiT(**weights["config"]).eval()
    state = dict(weights["state_dict"])
    state["final_layer.linear.weight"] = state["final_layer.linear.weight"] * 0.1  # as the vectors' note says
    model.load_state_dict(state)
    for case in golden["cases"]:  # 10 steps (its last step first order) and 20 steps
        sampler = make_sampler("dpm-solver", num_steps=case["steps"], cfg_scale=case["cfg_scale"])
        assert sampler.guidance_channels == 4  # the reference guides every eps channel
        with torch.no_grad():
            sample = sampler.sample(model, case["z"], golden["y"], golden["mask"], golden["y_null"])
        assert rel_error(sample, case["sample"]) < 1e-4, case["steps"]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["ddim", "ddim:eta=1", "dpm-solver++", "unipc", "dpm-solver"])
def test_engine_loop_matches_plain_loop(engine, name):
    y, mask = engine.encode_prompts(PROMPTS)
    y_null = engine.stdit.y_embedder.y_embedding[None, None]
    generator = torch.Generator().manual_seed(7)
    z = torch.randn(2, *engine.preset.latent_shape, generator=generator)
    with torch.no_grad():
        plain = make_sampler(name, num_steps=6).sample(engine.stdit, z, y, mask, y_null, generator=generator)
    hoisted = engine.generate(PROMPTS, seed=7, num_steps=6, sampler=name, output="latent", progress=False)
    assert rel_error(hoisted, plain) < 1e-5
    again = engine.generate(PROMPTS, seed=7, num_steps=6, sampler=name, output="latent", progress=False)
    assert torch.equal(hoisted, again)  # the multistep memory does not leak from the previous call


@pytest.mark.slow
def test_samplers_give_different_latents_and_iddpm_stays_the_default(engine):
    def run(**kwargs):
        return engine.generate(PROMPTS[:1], seed=1, num_steps=6, output="latent", progress=False, **kwargs)

    default = run()
    assert torch.equal(default, run(sampler="iddpm"))
    others = [run(sampler=name) for name in ("ddim", "dpm-solver++", "unipc", "ddim:eta=1")]
    for i, latent in enumerate(others):
        assert not torch.equal(latent, default)
        assert all(not torch.equal(latent, other) for other in others[i + 1:])


def test_grid_option_spaces_the_steps_evenly_in_t_or_in_sqrt_t():
    assert make_sampler("unipc", 10).grid == "uniform"  # the defaults: measured on the proxy model
    assert make_sampler("dpm-solver++", 10).grid == make_sampler("ddim:eta=1", 10).grid == "quadratic"
    uniform = make_sampler("dpm-solver++:grid=uniform", 10).model_timesteps("cpu")
    assert uniform.tolist() == [999, 899, 799, 699, 599, 500, 400, 300, 200, 100]
    quadratic = make_sampler("unipc:grid=quadratic", 10).model_timesteps("cpu")
    assert quadratic.tolist() == make_sampler("dpm-solver++", 10).model_timesteps("cpu").tolist()
    assert quadratic[:4].tolist() == [999, 815, 649, 502]


def test_ddim_eta_draws_noise_only_when_positive():
    assert not DDIM(10).draws_noise
    assert DDIM(10, eta=0.5).draws_noise


@pytest.mark.parametrize("name, steps, message", [
    ("euler", 20, "iddpm, ddim, dpm-solver\\+\\+, unipc, dpm-solver"),
    ("dpm-solver++", 0, "num_steps"),
    ("ddim", 1000, "from 1 to 999"),
    ("dpm-solver", 1, "from 2 to 999"),
    ("ddim:eta=2", 20, "eta"),
    ("ddim:gamma=1", 20, "no option 'gamma'"),
    ("ddim:eta=x", 20, "not a float"),
    ("unipc:grid=log", 20, "grid one of: quadratic, uniform; got 'log'"),
    ("dpm-solver:grid=uniform", 20, "no option 'grid'"),
    ("unipc:grid=uniform,grid=quadratic", 20, "given twice"),
    ("iddpm:eta=1", 20, "options: none"),
])
def test_bad_sampler_or_steps_is_a_config_error(engine, name, steps, message):
    with pytest.raises(ConfigError, match=message):
        engine.generate(PROMPTS[:1], num_steps=steps, sampler=name, progress=False)


def test_every_sampler_is_registered_under_its_name():
    assert {name: cls.name for name, cls in SAMPLERS.items()} == {name: name for name in SAMPLERS}
