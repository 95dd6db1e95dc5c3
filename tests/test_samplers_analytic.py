"""The samplers on the analytic model (quality/analytic.py): Gaussian data whose eps predictor and
probability-flow ODE solution are closed form, with different conditional and unconditional means
so that classifier-free guidance is exercised (its exact result is again a Gaussian)."""
import math

import pytest
import torch

from stdit_engine.quality.analytic import GaussianModel
from stdit_engine.schedulers import make_sampler

SHAPE = (4, 1, 1, 2)  # one latent: 4 channels, so the unguided channel 3 is covered


def gaussian_model(std=0.5):
    generator = torch.Generator().manual_seed(0)
    cond, uncond = (0.8 * torch.randn(SHAPE, generator=generator) for _ in range(2))
    return GaussianModel(cond, uncond, std)


def ode_error(model, name, steps, cfg_scale, z):
    sampler = make_sampler(name, num_steps=steps, cfg_scale=cfg_scale)
    captions = torch.zeros(z.shape[0], 1, 1, 1)
    sample = sampler.sample(model, z, captions, None, captions)
    exact = model.ode_solution(z, cfg_scale, sampler.guidance_channels)
    return float((sample - exact).norm() / exact.norm())


# UniPC's corrector raises the 2M predictor's order by one; measured on the quadratic grid (DPM-Solver++'s)
# from 20 steps, as at 160 the whole steps crowd the low-noise end and its error nears float64's reach there.
# (name, order, step counts, most the ratio may exceed 2^order by)
@pytest.mark.parametrize("name, order, steps, above", [("ddim", 1, (40, 80, 160), 1.3),
                                                       ("dpm-solver++", 2, (40, 80, 160), 1.3),
                                                       ("dpm-solver", 2, (40, 80, 160), 1.3),
                                                       ("unipc:grid=quadratic", 3, (20, 40, 80), 1.35)])
def test_ode_samplers_converge_with_their_order(name, order, steps, above):
    # float64 latents: the error stays well above float32 rounding at these step counts
    z = torch.randn(64, *SHAPE, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    model = gaussian_model()
    errors = [ode_error(model, name, n, 4.0, z) for n in steps]
    for coarse, fine in zip(errors, errors[1:]):
        # error ratio when the steps double: 2^order, within -20% / +30% (+35% for UniPC's)
        assert 0.8 * 2 ** order < coarse / fine < above * 2 ** order, errors


@pytest.mark.parametrize("cfg_scale", [1.0, 4.0, 7.0])
def test_tuned_solver_is_closer_to_the_ode_than_ddim_and_the_reference_grid(cfg_scale):
    z = torch.randn(64, *SHAPE, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    model = gaussian_model()
    for steps in (10, 15, 20):
        tuned = ode_error(model, "dpm-solver++", steps, cfg_scale, z)
        assert tuned < ode_error(model, "ddim", steps, cfg_scale, z)
        assert tuned < ode_error(model, "dpm-solver", steps, cfg_scale, z)
        if steps >= 15:  # at 10 steps UniPC's corrector does not pay off on this model
            assert ode_error(model, "unipc:grid=quadratic", steps, cfg_scale, z) < tuned


# Allowed bias at these step counts (in units of the data std), measured on this model: what a
# sampler's discretisation costs; the statistical part of the bound is 4 standard errors on top.
DISTRIBUTION_CASES = [
    ("dpm-solver++", 20, 0.08, 0.05),
    ("unipc", 20, 0.08, 0.05),
    ("ddim", 20, 0.08, 0.10),
    ("ddim:eta=1", 20, 0.05, 0.20),
    ("iddpm", 100, 0.05, 0.05),
]


@pytest.mark.parametrize("name, steps, mean_bias, std_bias", DISTRIBUTION_CASES)
def test_sample_mean_and_std_match_the_guided_data(name, steps, mean_bias, std_bias):
    draws = 4000
    model = gaussian_model()
    generator = torch.Generator().manual_seed(3)
    z = torch.randn(draws, *SHAPE, generator=generator)
    sampler = make_sampler(name, num_steps=steps, cfg_scale=4.0)
    captions = torch.zeros(draws, 1, 1, 1)
    samples = sampler.sample(model, z, captions, None, captions, generator=generator).double()
    mean, std = model.end_distribution(4.0, sampler.guidance_channels)
    mean_error = (samples.mean(0) - mean).abs() / std  # per element, in data stds
    std_error = (samples.std(0) / std - 1).abs()
    assert mean_error.max() < 4 / math.sqrt(draws) + mean_bias
    assert std_error.max() < 4 * math.sqrt(1 / (2 * draws)) + std_bias
