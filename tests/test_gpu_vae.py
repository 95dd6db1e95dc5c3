"""The VAE decode in the GPU layout (channels-last) against PyTorch's default layout."""
import pytest
import torch
from golden import rel_error

from stdit_engine.configs import get_preset
from stdit_engine.models.vae import VideoVAE

pytestmark = pytest.mark.gpu


def test_channels_last_decode_matches_nchw(monkeypatch):
    spec = get_preset("16x256x256")
    vae = VideoVAE.from_random_weights(spec.vae, device="cuda", dtype=torch.float16)
    z = torch.randn(1, spec.latent_shape[0], 4, *spec.latent_shape[2:], device="cuda", dtype=torch.float16)
    fast = vae.decode(z)
    assert vae.model.decoder.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    monkeypatch.setattr(VideoVAE, "CUDA_MEMORY_FORMAT", torch.contiguous_format)
    plain = vae.decode(z)
    assert rel_error(fast.float(), plain.float()) < 1e-2
