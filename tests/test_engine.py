"""Engine end to end on the tiny preset (CPU): seeds, the reference RNG protocol, loading the
released-format files of all three parts (local paths and hub ids offline), and bad input."""
import math

import pytest
import torch
from helpers_hf import make_hub_cache_repo, make_tiny_t5_dir, make_tiny_vae_dir

from stdit_engine import Engine, Video
from stdit_engine.errors import CheckpointError, ConfigError, DeviceError
from stdit_engine.schedulers.iddpm import IDDPM

PROMPTS = ["a sea turtle swimming over a coral reef", "a red car in the snow"]
STEPS = 4


@pytest.fixture(scope="module")
def engine():
    return Engine.from_random_weights("tiny", device="cpu")


def latents(engine, seed, prompts=PROMPTS, **kwargs):
    return engine.generate(prompts, seed=seed, num_steps=STEPS, output="latent", progress=False, **kwargs)


def test_same_seed_same_latent_different_seed_different(engine):
    first, again, other = latents(engine, 1), latents(engine, 1), latents(engine, 2)
    assert first.shape == (2, 4, 4, 8, 8)
    assert torch.equal(first, again)
    assert (first - other).abs().mean() > 0.1


def test_seed_reproduces_the_reference_script_protocol(engine):
    """torch.manual_seed(s); z = randn(n, ...); sample(...) with the global generator."""
    y, mask = engine.encode_prompts(PROMPTS)
    torch.manual_seed(5)
    z = torch.randn(2, *engine.preset.latent_shape)
    y_null = engine.stdit.y_embedder.y_embedding[None, None]
    with torch.no_grad():
        reference = IDDPM(num_steps=STEPS).sample(engine.stdit, z, y, mask, y_null)
    assert torch.equal(latents(engine, 5), reference)


def test_batches_continue_one_generator(engine):
    # 3 prompts in batches of 2 then 1, like the reference's loop: the last one differs from
    # running it alone, and the first two equal running them alone.
    three = latents(engine, 3, PROMPTS + ["a cat"])
    assert torch.equal(three[:2], latents(engine, 3))
    assert not torch.equal(three[2:], latents(engine, 3, ["a cat"]))


def test_generate_videos(engine):
    videos = engine.generate(PROMPTS[:1], seed=0, num_steps=2, progress=False)
    assert len(videos) == 1 and isinstance(videos[0], Video)
    assert tuple(videos[0].frames.shape) == (4, 64, 64, 3) and videos[0].fps == 8
    assert [s.name for s in engine.last_stats] == ["encode", "denoise", "decode"]


def test_guidance_channels_option_changes_result(engine):
    assert not torch.equal(latents(engine, 1), latents(engine, 1, guidance_channels=4))


@pytest.mark.parametrize("call, error, message", [
    (lambda e: e.generate([], num_steps=1), ConfigError, "no prompts"),
    (lambda e: e.generate(["x"], num_steps=0), ConfigError, "num_steps"),
    (lambda e: e.generate(["x"], cfg_scale=math.nan), ConfigError, "cfg_scale"),
    (lambda e: e.generate(["x"], output="png"), ConfigError, "output"),
    (lambda e: e.generate([3]), ConfigError, "strings"),
])
def test_bad_generate_arguments(engine, call, error, message):
    with pytest.raises(error, match=message):
        call(engine)


def test_unknown_preset():
    with pytest.raises(ConfigError, match="unknown preset '32x32'.*16x256x256"):
        Engine.from_random_weights("32x32")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU error")
def test_cuda_without_gpu():
    with pytest.raises(DeviceError, match="no CUDA GPU"):
        Engine.from_random_weights("tiny", device="cuda")


def test_tiny_preset_has_no_released_weights():
    with pytest.raises(ConfigError, match="from_random_weights"):
        Engine.from_pretrained("tiny", device="cpu")


@pytest.fixture(scope="module")
def saved_parts(engine, tmp_path_factory):
    """The random engine's three parts saved in the released file formats."""
    root = tmp_path_factory.mktemp("parts")
    stdit_file = root / "stdit.pth"
    torch.save({"ema": engine.stdit.state_dict()}, stdit_file)
    t5_dir = make_tiny_t5_dir(root / "t5", engine.preset.text, model=engine.text_encoder)
    vae_dir = make_tiny_vae_dir(root / "vae", engine.preset.vae, model=engine.vae)
    return stdit_file, t5_dir, vae_dir


def test_from_pretrained_local_paths_gives_the_same_latent(engine, saved_parts):
    stdit_file, t5_dir, vae_dir = saved_parts
    loaded = Engine.from_pretrained("tiny", stdit=str(stdit_file), t5=str(t5_dir), vae=str(vae_dir), device="cpu")
    assert not loaded.random_weights
    assert torch.equal(latents(loaded, 9), latents(engine, 9))


def test_from_pretrained_hub_ids_offline(engine, saved_parts, tmp_path, monkeypatch):
    stdit_file, t5_dir, vae_dir = saved_parts
    cache = tmp_path / "hub"
    stdit_repo = tmp_path / "stdit_repo"
    stdit_repo.mkdir()
    (stdit_repo / "OpenSora-v1-HQ-16x256x256.pth").write_bytes(stdit_file.read_bytes())
    make_hub_cache_repo(cache, "hpcai-tech/Open-Sora", stdit_repo)
    make_hub_cache_repo(cache, "DeepFloyd/t5-tiny", t5_dir)
    make_hub_cache_repo(cache, "stabilityai/vae-tiny", vae_dir)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    preset = engine.preset.__class__(**{**engine.preset.__dict__, "stdit_hub_id": "hpcai-tech/Open-Sora",
                                        "stdit_filename": "OpenSora-v1-HQ-16x256x256.pth"})
    loaded = Engine.from_pretrained(preset, t5="DeepFloyd/t5-tiny", vae="stabilityai/vae-tiny", device="cpu")
    assert torch.equal(latents(loaded, 9), latents(engine, 9))
    with pytest.raises(CheckpointError):
        Engine.from_pretrained(preset, t5="DeepFloyd/not-in-cache", vae="stabilityai/vae-tiny", device="cpu")
