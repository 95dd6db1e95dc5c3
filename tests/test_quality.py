"""The quality harness: its numbers on the analytic model and on the tiny preset are sane, the
command writes its CSV and plot, and the proxy model follows its captions."""
import csv
import math

import numpy as np
import pytest
import torch

from stdit_engine import Engine
from stdit_engine.cli import main
from stdit_engine.errors import ConfigError
from stdit_engine.quality.analytic import GaussianModel
from stdit_engine.quality.harness import SamplerConfig, evaluate
from stdit_engine.quality.metrics import psnr, ssim
from stdit_engine.quality.proxy import load_proxy_engine
from stdit_engine.quality.proxy_task import CAPTIONS, caption_accuracy, render
from stdit_engine.quality.runners import AnalyticRunner, EngineRunner
from stdit_engine.schedulers.base import guide, linear_betas


def configs(*texts):
    return [SamplerConfig.parse(t) for t in texts]


def test_more_steps_are_never_further_away_on_the_analytic_model():
    generator = torch.Generator().manual_seed(0)
    model = GaussianModel(torch.randn(4, 1, 2, 2, generator=generator), torch.randn(4, 1, 2, 2, generator=generator), 0.5)
    runner = AnalyticRunner(model, (4, 1, 2, 2), draws=64)
    for name in ("ddim", "dpm-solver++"):
        steps = (5, 10, 20, 40, 80)
        rows = evaluate(runner, configs(*(f"{name}@{s}" for s in steps)), seeds=[0], reference=SamplerConfig("ddim", 250))
        distances = [row.latent_rel_l2 for row in rows[1:]]
        assert all(fine <= coarse for coarse, fine in zip(distances, distances[1:])), distances


def test_identical_config_is_infinitely_close_and_three_steps_clearly_worse():
    engine = Engine.from_random_weights("tiny", device="cpu")
    runner = EngineRunner(engine, ["a red car in the snow"])
    told = []
    rows = evaluate(runner, configs("ddim@20", "dpm-solver++@10", "dpm-solver++@3"), seeds=[0],
                    reference=SamplerConfig("ddim", 20), progress=told.append)
    assert [line.split(":")[0] for line in told] == [
        "[1/4] seed 0, ddim@20", "[2/4] seed 0, ddim@20", "[3/4] seed 0, dpm-solver++@10", "[4/4] seed 0, dpm-solver++@3"]
    reference, same, good, poor = rows
    assert same.latent_rel_l2 == 0 and math.isinf(same.psnr_db) and same.ssim == pytest.approx(1.0)
    assert reference.config == "ddim@20" and math.isinf(reference.psnr_db)
    assert good.psnr_db > poor.psnr_db + 6  # dB
    assert good.latent_rel_l2 < poor.latent_rel_l2 / 2
    assert not good.stochastic and good.seconds > 0


def test_metrics_against_known_values():
    frames = torch.full((2, 4, 16, 16, 3), 100, dtype=torch.uint8)
    noisy = frames.clone()
    noisy[..., 0, 0, :] += 10  # one pixel per frame off by 10
    mse = 100 / (16 * 16)
    assert psnr(noisy, frames) == pytest.approx(10 * math.log10(255 ** 2 / mse))
    assert ssim(frames, frames) == pytest.approx(1.0)
    assert 0 < ssim(torch.randint(0, 255, frames.shape, dtype=torch.uint8), frames) < 0.2


def test_config_list_keeps_a_samplers_own_options_together():
    configs = SamplerConfig.parse_list("ddim:eta=1,grid=uniform@20,unipc@15")
    assert [c.label for c in configs] == ["ddim:eta=1,grid=uniform@20", "unipc@15"]
    assert configs[0].build(7.0, None).grid == "uniform"
    with pytest.raises(ConfigError, match="NAME@STEPS"):
        SamplerConfig.parse_list("unipc@15,ddim:eta=1")


@pytest.mark.parametrize("text", ["dpm-solver++", "ddim@x", "@20"])
def test_bad_config_text_is_a_config_error(text):
    with pytest.raises(ConfigError, match="NAME@STEPS|sampler"):
        SamplerConfig.parse(text).build(7.0, None)


def test_quality_command_writes_csv_and_plot(tmp_path):
    code = main(["quality", "--model", "random", "--preset", "tiny", "--device", "cpu", "--prompt", "a cat",
                 "--seeds", "0", "--configs", "dpm-solver++@4,iddpm@4", "--reference", "ddim@6",
                 "--out", str(tmp_path)])
    assert code == 0
    with open(tmp_path / "quality.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["config"] for r in rows] == ["ddim@6", "dpm-solver++@4", "iddpm@4"]
    assert [r["stochastic"] for r in rows] == ["False", "False", "True"]
    assert (tmp_path / "quality.png").read_bytes()[:4] == b"\x89PNG"
    assert main(["quality", "--model", "random", "--preset", "tiny", "--prompt", "x", "--configs", "euler@5",
                 "--out", str(tmp_path)]) == 2


def test_proxy_task_is_read_back_exactly_from_its_clean_latents():
    """The task is well posed: colour, direction and speed of every caption read back from its
    rendered latents at every start place drawn (so a model's samples can be scored by them)."""
    ids = torch.arange(len(CAPTIONS)).repeat(8)
    latents = render(ids, torch.Generator().manual_seed(0))
    assert latents.shape == (len(ids), 4, 16, 32, 32)
    assert caption_accuracy(latents, [CAPTIONS[i] for i in ids]) == {"colour": 1.0, "direction": 1.0, "speed": 1.0}


# Eight captions of the proxy's task: every colour, direction and speed (twice, twice, four times).
EIGHT_CAPTIONS = [CAPTIONS[8 * colour + 2 * direction + speed] for colour, direction, speed in
                  [(0, 0, 0), (0, 2, 1), (1, 1, 0), (1, 3, 1), (2, 0, 1), (2, 2, 0), (3, 1, 1), (3, 3, 0)]]


def proxy_x0(engine, x_t, t, captions, cfg_scale):
    """The committed proxy's x0 prediction at timestep t for x_t [n, ...] captioned `captions`,
    guided by cfg_scale over all four eps channels (1: the conditional prediction alone)."""
    y, mask = engine.encode_prompts([c.text for c in captions])
    y_null = engine.stdit.y_embedder.y_embedding[None, None].expand_as(y)
    with torch.inference_mode():
        out = engine.stdit(torch.cat([x_t, x_t]), torch.full((2 * len(x_t),), float(t)), torch.cat([y, y_null]), mask)
    eps = guide(out, cfg_scale, 4)[:, :4]
    alpha_bar = float(np.prod(1 - linear_betas()[: t + 1]))
    return (x_t - (1 - alpha_bar) ** 0.5 * eps) / alpha_bar ** 0.5


def test_trained_proxy_draws_the_captions_colour_and_direction_from_pure_noise():
    """Caption following: from one pure-noise latent shared by eight captions (t = 999), the committed
    proxy's guided x0 prediction shows each caption's colour and direction (chance 1/4 each), so the
    differences come from the captions alone. Speed it does not follow from pure noise
    (BENCHMARKS.md, proxy model)."""
    engine = load_proxy_engine()
    z = torch.randn(1, *engine.preset.latent_shape, generator=torch.Generator().manual_seed(0))
    x0 = proxy_x0(engine, z.expand(len(EIGHT_CAPTIONS), *z.shape[1:]), 999, EIGHT_CAPTIONS, 7.0)
    accuracy = caption_accuracy(x0, EIGHT_CAPTIONS)
    assert accuracy["colour"] >= 7 / 8 and accuracy["direction"] >= 7 / 8, accuracy


def test_trained_proxy_denoises_the_balls_motion():
    """The committed proxy has learned the task's videos: from renders noised until their motion no
    longer reads back from the noisy latent, its x0 prediction shows the direction (t = 600) and
    the speed (t = 300) they were rendered with (chance 1/4 and 1/2)."""
    engine = load_proxy_engine()
    ids = torch.tensor([CAPTIONS.index(c) for c in EIGHT_CAPTIONS])
    for t, field in ((600, "direction"), (300, "speed")):
        generator = torch.Generator().manual_seed(0)
        x0 = render(ids, generator)
        alpha_bar = float(np.prod(1 - linear_betas()[: t + 1]))
        x_t = alpha_bar ** 0.5 * x0 + (1 - alpha_bar) ** 0.5 * torch.randn(x0.shape, generator=generator)
        assert caption_accuracy(x_t, EIGHT_CAPTIONS)[field] <= 5 / 8
        assert caption_accuracy(proxy_x0(engine, x_t, t, EIGHT_CAPTIONS, 1.0), EIGHT_CAPTIONS)[field] >= 7 / 8
