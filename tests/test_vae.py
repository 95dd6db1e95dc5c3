"""VideoVAE (diffusers AutoencoderKL) on the tiny preset: loading and frame-chunked decode."""
import pytest
import torch
from helpers_hf import make_hub_cache_repo, make_tiny_vae_dir

from stdit_engine.configs import PRESETS, VAE_SCALE_FACTOR
from stdit_engine.errors import CheckpointError, ConfigError
from stdit_engine.models.frames import quantize_frames
from stdit_engine.models.vae import VideoVAE

CFG = PRESETS["tiny"].vae


@pytest.fixture(scope="module")
def vae():
    return VideoVAE.from_random_weights(CFG, device="cpu")


@pytest.fixture(scope="module")
def vae_dir(vae, tmp_path_factory):
    return make_tiny_vae_dir(tmp_path_factory.mktemp("vae"), CFG, model=vae)


@pytest.fixture(scope="module")
def z():
    return torch.randn(2, 4, 3, 8, 8, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def video(vae, z):
    return vae.decode(z)


def test_decode_shape_and_frame_order(vae, z, video):
    assert video.shape == (2, 3, 3, 64, 64) and video.dtype == torch.float32
    assert torch.isfinite(video).all()
    # Frame t of sample b is the image decoded from latent frame t of sample b.
    with torch.inference_mode():
        image = vae.model.decode(z[1, :, 2][None] / VAE_SCALE_FACTOR).sample[0]
    torch.testing.assert_close(video[1, :, 2], image, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("chunk_frames", [1, 4, 6, 100])
def test_decode_in_chunks_equals_all_at_once(vae, z, video, chunk_frames):
    torch.testing.assert_close(vae.decode(z, chunk_frames=chunk_frames), video, rtol=1e-5, atol=1e-5)


def test_decode_rejects_bad_input(vae, z):
    with pytest.raises(ConfigError, match="chunk_frames"):
        vae.decode(z, chunk_frames=0)
    for bad in (z[0], z[:, :3], z[:, :, :0]):
        with pytest.raises(ConfigError, match=r"\[n, 4, T, h, w\]"):
            vae.decode(bad)


def test_random_weights_are_seeded(vae, z, video):
    state = torch.get_rng_state()
    assert torch.equal(VideoVAE.from_random_weights(CFG, device="cpu").decode(z), video)
    assert torch.equal(torch.get_rng_state(), state)


def test_from_pretrained_local_folder_gives_identical_outputs(vae_dir, z, video):
    assert (vae_dir / "diffusion_pytorch_model.safetensors").is_file()
    assert torch.equal(VideoVAE.from_pretrained(str(vae_dir), device="cpu").decode(z), video)


def test_from_pretrained_hub_id_offline(vae, vae_dir, z, video, tmp_path, monkeypatch):
    cache = tmp_path / "hub"
    make_hub_cache_repo(cache, "stabilityai/vae-tiny", vae_dir)
    # A repo that has pickled weights only (older diffusers format).
    bin_dir = tmp_path / "bin"
    vae.model.save_pretrained(bin_dir, safe_serialization=False)
    assert (bin_dir / "diffusion_pytorch_model.bin").is_file()
    make_hub_cache_repo(cache, "stabilityai/vae-tiny-bin", bin_dir)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    for repo_id in ("stabilityai/vae-tiny", "stabilityai/vae-tiny-bin"):
        assert torch.equal(VideoVAE.from_pretrained(repo_id, device="cpu").decode(z), video)
    with pytest.raises(CheckpointError, match="stabilityai/not-cached"):
        VideoVAE.from_pretrained("stabilityai/not-cached", device="cpu")


def test_missing_folder_is_a_checkpoint_error(tmp_path):
    with pytest.raises(CheckpointError, match="no local folder"):
        VideoVAE.from_pretrained(str(tmp_path / "vae"), device="cpu")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="diffusers AutoencoderKL folder"):
        VideoVAE.from_pretrained(str(tmp_path / "empty"), device="cpu")


def test_low_precision_decode_is_close(vae_dir, z, video):
    bf16 = VideoVAE.from_pretrained(str(vae_dir), device="cpu", dtype=torch.bfloat16)
    out = bf16.decode(z, chunk_frames=2)
    assert out.dtype == torch.bfloat16
    rel = ((out.double() - video.double()).norm() / video.double().norm()).item()
    assert rel < 5e-2
    random_fp16 = VideoVAE.from_random_weights(CFG, device="cpu", dtype=torch.float16)
    assert {p.dtype for p in random_fp16.model.parameters()} == {torch.float16}
    assert torch.get_default_dtype() == torch.float32


def test_uint8_decode_equals_quantised_float_decode(vae, z):
    frames = vae.decode(z, chunk_frames=3, to_uint8=True)
    assert frames.dtype == torch.uint8 and frames.device.type == "cpu"
    expected = torch.stack([quantize_frames(sample) for sample in vae.decode(z, chunk_frames=3)])
    assert torch.equal(frames, expected)


def test_out_of_memory_chunk_is_retried_in_halves(vae, z, video, monkeypatch, caplog):
    """A forced tiny memory budget: any decode of more than 2 frames runs out of memory."""
    decode = vae.model.decode
    sizes = []

    def budgeted_decode(images):
        sizes.append(len(images))
        if len(images) > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated budget)")
        return decode(images)

    monkeypatch.setattr(vae.model, "decode", budgeted_decode)
    out = vae.decode(z)  # asks for all frames at once
    assert torch.allclose(out, video, atol=1e-5)
    assert sizes[:3] == [z.shape[0] * z.shape[2], z.shape[0] * z.shape[2] // 2, z.shape[0] * z.shape[2] // 4]
    assert max(sizes[3:]) <= 2
    assert "retrying with" in caplog.text
