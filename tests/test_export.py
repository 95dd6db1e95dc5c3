"""Exports of the tiny preset on the CPU: ONNX (checked with ONNX Runtime), its spec, one block,
the AOTInductor package in Python, in the C++ runner (built here with CMake) and as the engine's
STDiT in generate(), and the TensorRT cache key. Every artifact is compared with the eager forward.

The exports are made once per session through the CLI (one AOTInductor compile takes 1-2 minutes
on 2 cores), from the same random weights as the `engine` fixture (seed 0).
"""
import contextlib
import dataclasses
import importlib.util
import io
import json
import shutil
import subprocess
from pathlib import Path

import onnx
import pytest
import torch
from golden import rel_error

from stdit_engine import Engine
from stdit_engine.cli import main
from stdit_engine.configs import get_preset
from stdit_engine.models.checkpoint import build_stdit
from stdit_engine.errors import ConfigError
from stdit_engine.export.aoti import load_aoti
from stdit_engine.export.artifact import ArtifactSTDiT, load_artifact
from stdit_engine.export.exportable import example_inputs, stdit_spec
from stdit_engine.export.onnx import OPSET, export_onnx, run_onnx, validate_onnx
from stdit_engine.export.spec import ExportSpec, spec_path
from stdit_engine.export.tensorrt import build_engine, cache_key, file_digest, profile_shapes

PROMPTS = ["a sea turtle swimming over a coral reef", "a red car in the snow"]


@pytest.fixture(scope="session")
def engine():
    return Engine.from_random_weights("tiny", device="cpu")


def cli_export(fmt: str, out: Path) -> str:
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = main(["export", fmt, "--preset", "tiny", "--random-weights", "--out", str(out)])
    assert code == 0
    return printed.getvalue()


@pytest.fixture(scope="session")
def onnx_export(tmp_path_factory):
    path = tmp_path_factory.mktemp("onnx") / "stdit.onnx"
    return path, cli_export("onnx", path)


@pytest.fixture(scope="session")
def aoti_export(tmp_path_factory):
    path = tmp_path_factory.mktemp("aoti") / "stdit.pt2"
    return path, cli_export("aoti", path)


def masked_inputs(batch: int, seed: int = 1):
    """Inputs of STDiT.forward with prefix masks of different lengths, and the same as caption lengths."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 4, 4, 8, 8, generator=g)
    t = torch.rand(batch, generator=g) * 1000
    y = torch.randn(batch, 1, 120, 64, generator=g)
    lengths = torch.randint(1, 121, (batch,), generator=g)
    mask = (torch.arange(120)[None] < lengths[:, None]).long()
    return x, t, y, mask, lengths


# ---------------------------------------------------------------- ONNX

@pytest.mark.parametrize("batch", [2, 6])
def test_onnx_runtime_matches_the_eager_forward(engine, onnx_export, batch):
    path, _ = onnx_export
    x, t, y, mask, lengths = masked_inputs(batch)
    with torch.no_grad():
        expected = engine.stdit(x, t, y, mask)
    assert rel_error(run_onnx(path, (x, t, y, lengths))[0], expected) < 1e-4
    assert validate_onnx(engine.stdit, path, batch=batch) < 1e-4


def test_onnx_caption_lengths_mask_the_caption(onnx_export):
    path, _ = onnx_export
    x, t, y, _, lengths = masked_inputs(2)
    masked = run_onnx(path, (x, t, y, lengths))[0]
    full = run_onnx(path, (x, t, y, torch.full_like(lengths, 120)))[0]
    assert rel_error(masked, full) > 1e-3


def test_onnx_graph_names_axes_and_opset(onnx_export):
    path, printed = onnx_export
    graph = onnx.load(str(path))
    assert graph.opset_import[0].version >= 17
    assert "LayerNormalization" in {node.op_type for node in graph.graph.node}
    shapes = {v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
              for v in (*graph.graph.input, *graph.graph.output)}
    assert shapes == {"x": ["2B", 4, 4, 8, 8], "timestep": ["2B"], "y": ["2B", 1, 120, 64],
                      "caption_lengths": ["2B"], "out": ["2B", 8, 4, 8, 8]}
    assert f"wrote {path}" in printed and "relative error" in printed


def test_onnx_spec_round_trips(engine, onnx_export, tmp_path):
    path, _ = onnx_export
    spec = ExportSpec.load(spec_path(path))
    assert spec == stdit_spec(engine.stdit, "tiny", "onnx", batch=4, opset=OPSET)
    assert spec.dynamic_axes == {"x": [0], "timestep": [0], "y": [0], "caption_lengths": [0], "out": [0]}
    spec.save(tmp_path / "again.json")
    assert ExportSpec.load(tmp_path / "again.json") == spec
    assert json.loads((tmp_path / "again.json").read_text()) == json.loads(spec_path(path).read_text())


def test_single_block_onnx_with_external_data_matches_the_block(engine, tmp_path):
    path = tmp_path / "block0.onnx"
    spec = export_onnx(engine.stdit, path, "tiny", batch=4, block=0, external_data=True)
    assert (tmp_path / "block0.onnx.data").stat().st_size > path.stat().st_size  # the weights
    assert [t.name for t in spec.inputs] == ["x", "t0", "caption_k", "caption_v", "caption_lengths"]
    assert spec.inputs[2].shape == ("2B", 2, 120, 72)
    assert validate_onnx(engine.stdit, path, batch=2) < 1e-4
    assert validate_onnx(engine.stdit, path, batch=6) < 1e-4


# ---------------------------------------------------------------- AOTInductor

@pytest.mark.slow
@pytest.mark.parametrize("batch", [2, 6])
def test_aoti_package_matches_the_eager_forward(engine, aoti_export, batch):
    path, printed = aoti_export
    assert "relative error" in printed
    run, spec = load_aoti(path)
    x, t, y, mask, lengths = masked_inputs(batch)
    artifact = load_artifact(path, engine.stdit, torch.device("cpu"))
    with torch.no_grad():
        expected = engine.stdit(x, t, y, mask)
        assert rel_error(run(x, t, y, lengths), expected) < 1e-4
        assert rel_error(artifact(x, t, y, mask), expected) < 1e-4  # STDiT.forward's contract


def test_aoti_package_refuses_a_batch_outside_its_range(aoti_export):
    run, spec = load_aoti(aoti_export[0])
    assert spec.batch_range == (1, 4, 8)
    with pytest.raises(ConfigError, match="batch of 1 to 8"):
        run(*example_inputs(spec, batch=10))


@pytest.fixture(scope="session")
def cpp_runner(tmp_path_factory):
    if shutil.which("cmake") is None or shutil.which("c++") is None:
        pytest.skip("the C++ runner test needs cmake and a C++ compiler")
    build = tmp_path_factory.mktemp("csrc-build")
    source = Path(__file__).parents[1] / "csrc"
    subprocess.run(["cmake", "-S", str(source), "-B", str(build), f"-DCMAKE_PREFIX_PATH={torch.utils.cmake_prefix_path}"],
                   check=True, capture_output=True)
    subprocess.run(["cmake", "--build", str(build)], check=True, capture_output=True)
    return build / "run_aoti"


@pytest.mark.slow
def test_cpp_runner_matches_the_eager_forward(engine, aoti_export, cpp_runner, tmp_path):
    x, t, y, mask, lengths = masked_inputs(2)
    torch.save([x, t, y, lengths], tmp_path / "inputs.pt")
    result = subprocess.run([str(cpp_runner), str(aoti_export[0]), str(tmp_path / "inputs.pt"), str(tmp_path / "out.pt")],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    with torch.no_grad():
        expected = engine.stdit(x, t, y, mask)
    assert rel_error(torch.load(tmp_path / "out.pt", weights_only=True), expected) < 1e-4


def test_cpp_runner_reports_a_bad_input_file(aoti_export, cpp_runner, tmp_path):
    (tmp_path / "inputs.pt").write_bytes(b"not a tensor file")
    result = subprocess.run([str(cpp_runner), str(aoti_export[0]), str(tmp_path / "inputs.pt"), str(tmp_path / "out.pt")],
                            capture_output=True, text=True)
    assert result.returncode == 1 and "run_aoti:" in result.stderr


def test_aoti_backend_drives_generate(engine, aoti_export):
    artifact_engine = Engine.from_random_weights("tiny", device="cpu").use_artifact(aoti_export[0])
    assert isinstance(artifact_engine.denoiser.model, ArtifactSTDiT)
    kwargs = dict(seed=3, num_steps=4, output="latent", progress=False)
    expected = engine.generate(PROMPTS, **kwargs)
    assert rel_error(artifact_engine.generate(PROMPTS, **kwargs), expected) < 1e-4
    videos = artifact_engine.generate(PROMPTS[:1], seed=0, num_steps=2, progress=False)
    assert tuple(videos[0].frames.shape) == (4, 64, 64, 3)


def test_exports_need_the_eager_backend_and_an_existing_block(engine, tmp_path):
    sdpa_model = build_stdit(get_preset("tiny"), torch.device("cpu"), torch.float32, backend="sdpa")
    with pytest.raises(ConfigError, match="exports trace the eager reference"):
        export_onnx(sdpa_model, tmp_path / "m.onnx", "tiny", block=0)
    with pytest.raises(ConfigError, match="block 2 does not exist"):
        export_onnx(engine.stdit, tmp_path / "m.onnx", "tiny", block=2)


def test_artifact_that_does_not_fit_the_engine(engine, aoti_export, onnx_export, tmp_path):
    spec = ExportSpec.load(spec_path(aoti_export[0]))
    with pytest.raises(ConfigError, match="computes in float16"):
        ArtifactSTDiT(None, dataclasses.replace(spec, dtype="float16"), engine.stdit)
    with pytest.raises(ConfigError, match="one block"):
        ArtifactSTDiT(None, dataclasses.replace(spec, kind="stdit_block"), engine.stdit)
    other_latent = (dataclasses.replace(spec.inputs[0], shape=("2B", 4, 16, 32, 32)), *spec.inputs[1:])
    with pytest.raises(ConfigError, match="exported from another preset"):
        ArtifactSTDiT(None, dataclasses.replace(spec, inputs=other_latent), engine.stdit)
    with pytest.raises(ConfigError, match="does not run"):
        load_artifact(onnx_export[0], engine.stdit, torch.device("cpu"))
    moved = tmp_path / "cuda.pt2"
    dataclasses.replace(spec, device="cuda").save(spec_path(moved))
    with pytest.raises(ConfigError, match="runs on cuda"):
        load_artifact(moved, engine.stdit, torch.device("cpu"))
    with pytest.raises(ConfigError, match="keep the two together"):
        load_artifact(tmp_path / "missing.pt2", engine.stdit, torch.device("cpu"))


# ---------------------------------------------------------------- command line

def test_export_command_loads_a_checkpoint(engine, tmp_path):
    other = build_stdit(get_preset("tiny"), torch.device("cpu"), torch.float32, seed=5)
    torch.save({"ema": other.state_dict()}, tmp_path / "stdit.pth")
    out = tmp_path / "block1.onnx"
    assert main(["export", "onnx", "--preset", "tiny", "--stdit", str(tmp_path / "stdit.pth"), "--block", "1",
                 "--out", str(out)]) == 0
    assert ExportSpec.load(spec_path(out)).block == 1
    assert validate_onnx(other, out) < 1e-4
    assert validate_onnx(engine.stdit, out) > 1e-2  # the checkpoint's weights, not the random ones


@pytest.mark.parametrize("argv, message", [
    (["--preset", "32x32", "--random-weights"], "unknown preset '32x32'"),
    (["--preset", "tiny"], "--stdit PATH"),
    (["--preset", "tiny", "--random-weights", "--stdit", "x.pth"], "--stdit PATH"),
    (["--preset", "tiny", "--random-weights", "--batch", "1"], "must be >= 2"),
])
def test_export_command_bad_input(argv, message, tmp_path, capsys):
    assert main(["export", "onnx", *argv, "--out", str(tmp_path / "m.onnx")]) == 2
    assert message in capsys.readouterr().err


def test_export_command_without_onnxruntime(tmp_path, capsys, monkeypatch):
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnxruntime" else find_spec(name, *a))
    assert main(["export", "onnx", "--preset", "tiny", "--random-weights", "--out", str(tmp_path / "m.onnx")]) == 2
    assert "needs onnxruntime" in capsys.readouterr().err


# ---------------------------------------------------------------- TensorRT (what it consumes)

def test_tensorrt_profile_and_cache_key(onnx_export, tmp_path):
    path, _ = onnx_export
    spec = ExportSpec.load(spec_path(path))
    assert profile_shapes(spec)["x"] == ((1, 4, 4, 8, 8), (4, 4, 4, 8, 8), (8, 4, 4, 8, 8))
    assert profile_shapes(spec)["caption_lengths"] == ((1,), (4,), (8,))
    digest = file_digest(path)
    base = cache_key(spec, digest, "10.9.0", (9, 0))
    assert base == cache_key(ExportSpec.load(spec_path(path)), file_digest(path), "10.9.0", (9, 0))
    variants = [
        cache_key(spec, "0" * 64, "10.9.0", (9, 0)),
        cache_key(dataclasses.replace(spec, batch_range=(1, 4, 16)), digest, "10.9.0", (9, 0)),
        cache_key(dataclasses.replace(spec, opset=17), digest, "10.9.0", (9, 0)),
        cache_key(dataclasses.replace(spec, dtype="float16"), digest, "10.9.0", (9, 0)),
        cache_key(spec, digest, "10.8.0", (9, 0)),
        cache_key(spec, digest, "10.9.0", (8, 0)),
    ]
    assert len({base, *variants}) == 1 + len(variants)
    # The weights are part of the digest, external data included.
    copy = tmp_path / "copy.onnx"
    shutil.copy(path, copy)
    (tmp_path / "copy.onnx.data").write_bytes(b"weights")
    assert file_digest(copy) != digest
    with pytest.raises(ConfigError, match="built from ONNX"):
        cache_key(dataclasses.replace(spec, format="aoti"), digest, "10.9.0", (9, 0))


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="checks the error without TensorRT")
def test_tensorrt_missing_is_a_config_error(onnx_export, tmp_path):
    with pytest.raises(ConfigError, match="tensorrt package"):
        build_engine(onnx_export[0], tmp_path)
