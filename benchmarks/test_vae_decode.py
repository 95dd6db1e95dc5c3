"""The VAE decode stage alone: the preset's frames (2 prompts) through the decoder at once, in
PyTorch's default layout (NCHW, what the engine uses) and channels-last (weights NHWC, which the
activations then follow), each with cuDNN's heuristic and with its benchmark mode picking the
convolutions: whether channels-last would pay on this card (BENCHMARKS.md has the measured ones)."""
import pytest
import torch
from workloads import cuda_time_ms, median

from stdit_engine.configs import get_preset
from stdit_engine.models.vae import VideoVAE

LAYOUTS = {"NCHW": torch.contiguous_format, "channels-last": torch.channels_last}


@pytest.mark.parametrize("cudnn_benchmark", [False, True], ids=["heuristic", "cudnn-benchmark"])
@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("preset", ["16x256x256"])
def test_vae_decode(benchmark, preset, layout, cudnn_benchmark):
    spec = get_preset(preset)
    vae = VideoVAE.from_random_weights(spec.vae, device="cuda", dtype=torch.float16)
    vae.model.to(memory_format=LAYOUTS[layout])
    z = torch.randn(2, *spec.latent_shape, device="cuda", dtype=torch.float16)
    frames = z.shape[0] * z.shape[2]
    with torch.backends.cudnn.flags(enabled=True, benchmark=cudnn_benchmark):
        ms = median(cuda_time_ms(lambda: vae.decode(z, to_uint8=True), warmup=2, reps=5))
        benchmark.pedantic(lambda: vae.decode(z, to_uint8=True), rounds=1, iterations=1)
    benchmark.extra_info.update(
        workload=f"VAE decode {preset}, {frames} frames at once",
        backend=f"{layout}, {'cuDNN benchmark' if cudnn_benchmark else 'cuDNN heuristic'}",
        dtype=str(torch.float16), decode_ms=ms, frames_per_s=frames / ms * 1e3,
    )
