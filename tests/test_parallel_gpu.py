"""Two GPUs through NCCL give the one-GPU result (fp32, tiny preset): cfg and dsp latents, the split
decode, the all-to-all. The CPU/gloo suite (test_parallel.py) checks the same code paths; this
one checks NCCL's side of them."""
import pytest
import torch
from parallel_ranks import (assert_exchange_is_exact, assert_latents_match, assert_videos_match, checks,
                            one_process_results, run_ranks)

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 GPUs")]


def test_two_gpus_give_the_one_gpu_results(tmp_path):
    latent, frames, odd = one_process_results("cuda")
    run_ranks(2, tmp_path, checks, tmp_path, ("cfg", "dsp"), "dsp", "cuda", backend="nccl")
    for mode in ("cfg", "dsp"):
        # fp32, but cuDNN convolutions may use TF32 and kernels differ with the batch size.
        assert_latents_match(tmp_path, mode, 2, latent, tolerance=1e-3)
        # T5 runs on rank 0 only; rank 1 keeps it off its GPU.
        assert [torch.load(tmp_path / f"{mode}-{rank}.pt")["t5_device"] for rank in range(2)] == ["cuda", "cpu"]
    assert_videos_match(tmp_path, frames, odd)
    assert_exchange_is_exact(tmp_path, 2)
