"""Exports on the GPU (tiny preset, half precision): the AOTInductor package against the eager
forward, the engine's generate() on it, and a TensorRT engine where TensorRT is installed."""
import importlib.util

import pytest
import torch
from golden import rel_error

from stdit_engine import Engine
from stdit_engine.export.aoti import export_aoti, load_aoti
from stdit_engine.export.exportable import example_inputs, exportable

pytestmark = pytest.mark.gpu
PROMPTS = ["a sea turtle swimming over a coral reef", "a red car in the snow"]


@pytest.fixture(scope="module", params=[torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def exported(request, tmp_path_factory):
    # Exports trace the eager reference; a CUDA engine's default backend is another.
    engine = Engine.from_random_weights("tiny", device="cuda", dtype=request.param, backend="eager")
    path = tmp_path_factory.mktemp("aoti") / "stdit.pt2"
    export_aoti(engine.stdit, path, "tiny", batch=4, verbose=True)
    return engine, path


def test_aoti_package_matches_eager(exported):
    engine, path = exported
    run, spec = load_aoti(path)
    for batch in (2, 6):
        inputs = example_inputs(spec, batch, device="cuda")
        with torch.inference_mode():
            expected = exportable(engine.stdit, spec)(*inputs)
            assert rel_error(run(*inputs).float(), expected.float()) < 1e-2


def test_aoti_backend_generate_matches_eager(exported):
    engine, path = exported
    kwargs = dict(seed=3, num_steps=10, output="latent", progress=False)
    expected = engine.generate(PROMPTS, **kwargs)
    artifact = Engine.from_random_weights("tiny", device="cuda", dtype=engine.dtype).use_artifact(path)
    assert rel_error(artifact.generate(PROMPTS, **kwargs), expected) < 1e-2


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is None, reason="TensorRT is not installed")
def test_tensorrt_engine_matches_eager(tmp_path):
    from stdit_engine.export.onnx import export_onnx
    from stdit_engine.export.tensorrt import build_engine, load_engine

    engine = Engine.from_random_weights("tiny", device="cuda", dtype=torch.float16, backend="eager")
    export_onnx(engine.stdit, tmp_path / "stdit.onnx", "tiny", batch=4)
    engine_file = build_engine(tmp_path / "stdit.onnx", tmp_path / "cache")
    assert build_engine(tmp_path / "stdit.onnx", tmp_path / "cache") == engine_file  # a cache hit
    run, spec = load_engine(engine_file)
    inputs = example_inputs(spec, 6, device="cuda")
    with torch.inference_mode():
        expected = exportable(engine.stdit, spec)(*inputs)
        assert rel_error(run(*inputs).float(), expected.float()) < 1e-2
    kwargs = dict(seed=3, num_steps=10, output="latent", progress=False)
    trt_engine = Engine.from_random_weights("tiny", device="cuda", dtype=torch.float16).use_artifact(engine_file)
    assert rel_error(trt_engine.generate(PROMPTS, **kwargs), engine.generate(PROMPTS, **kwargs)) < 1e-2
