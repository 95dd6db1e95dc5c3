"""The CUDA-graph cache stays bounded (least recently used dropped), and the cfg scale as a graph
input (a 0-dim tensor) gives the bits of the Python float it replaces. The captured graphs
themselves are tested on the GPU (test_gpu_concurrency.py)."""
import gc
import weakref

import pytest
import torch

from stdit_engine.engine.denoise import warmup_stream
from stdit_engine.engine.graph_cache import GraphCache
from stdit_engine.schedulers.base import guide, scale_by, scale_dtype


class Captured:
    """Stands for a GraphedStep: something the cache must stop referencing once dropped."""


def test_many_distinct_keys_keep_at_most_capacity_entries():
    cache, alive, captures = GraphCache(capacity=3), [], []
    for key in range(50):
        entry = cache.get(key, lambda: captures.append(1) or Captured())
        alive.append(weakref.ref(entry))
        del entry
        assert len(cache) <= 3
    gc.collect()
    assert len(captures) == 50
    assert sum(ref() is not None for ref in alive) == 3  # the dropped ones are freed


def test_least_recently_used_goes_first_and_hits_do_not_capture():
    cache = GraphCache(capacity=2)
    first = cache.get("a", Captured)
    cache.get("b", Captured)
    assert cache.get("a", lambda: pytest.fail("a hit must not capture")) is first
    cache.get("c", Captured)  # drops b, the least recently used
    assert "a" in cache and "c" in cache and "b" not in cache


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
@pytest.mark.parametrize("cfg", [7.0, 7.3, 4.1, 0.37, 12.9])
def test_a_tensor_cfg_scale_gives_the_python_float_bits(dtype, cfg):
    out = torch.randn(4, 8, 3, 5, 5, generator=torch.Generator().manual_seed(0)).to(dtype)
    scale = torch.full((), cfg, dtype=scale_dtype(dtype))
    assert torch.equal(guide(out, scale, 3), guide(out, cfg, 3))
    assert torch.equal(scale_by(scale, out), cfg * out)


def test_captures_warm_up_on_one_side_stream_per_device(monkeypatch):
    # cuBLAS keeps a workspace per stream that ran a GEMM: a new stream per capture would leak one
    # on every call of a placement that drops its graphs (test_gpu_lean.py checks the memory itself).
    made = []
    monkeypatch.setattr(torch.cuda, "Stream", lambda device=None: made.append(device) or object())
    warmup_stream.cache_clear()
    try:
        first, second = torch.device("cuda", 0), torch.device("cuda", 1)
        assert warmup_stream(first) is warmup_stream(torch.device("cuda", 0)) is not warmup_stream(second)
        assert made == [first, second]
    finally:
        warmup_stream.cache_clear()
