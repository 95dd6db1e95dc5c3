"""Every bad input gets its typed error, through the API and the command line (exit code 2), and the
command line finds the argument errors before it loads any model."""
import pathlib
import pickle

import numpy
import pytest
import torch
from helpers_hf import make_tiny_t5_dir

from stdit_engine import Engine
from stdit_engine.cli import main
from stdit_engine.errors import CheckpointError, ConfigError, DeviceError, SamplingError
from stdit_engine.models.checkpoint import read_state_dict
from stdit_engine.models.text_encoder import TextEncoder

TINY = ["generate", "--preset", "tiny", "--random-weights", "--device", "cpu", "--prompt", "a cat"]


@pytest.fixture(scope="module")
def engine():
    return Engine.from_random_weights("tiny", device="cpu")


@pytest.mark.parametrize("kwargs, message", [
    (dict(prompts=None), "prompts must be a string or a list of strings, got NoneType"),
    (dict(prompts=123), "prompts must be a string or a list of strings, got int"),
    (dict(prompts=["x", None]), "prompts must be strings"),
    (dict(seed="42"), "seed must be an integer from 0 to 2\\*\\*64-1, got str"),
    (dict(seed=4.0), "seed must be an integer .* got float"),
    (dict(seed=True), "seed must be an integer .* got bool"),
    (dict(seed=-1), "seed must be from 0 to 2\\*\\*64-1 .* got -1"),
    (dict(seed=2**64), "seed must be from 0 to 2\\*\\*64-1"),
    (dict(seed=2**70), "got 1180591620717411303424"),
    (dict(prompts=["a", "b"], seed=[1, "2"]), "seed\\[1\\] must be an integer"),
    (dict(prompts=["a", "b"], seed=[1, -2]), "seed\\[1\\] must be from 0"),
    (dict(prompts=["a", "b"], seed=[1]), "1 seeds for 2 prompts"),
    (dict(cfg_scale="7"), "cfg_scale must be a number, got str"),
    (dict(cfg_scale=None), "cfg_scale must be a number, got NoneType"),
    (dict(cfg_scale=float("inf")), "cfg_scale must be a finite number"),
    (dict(cfg_scale=float("nan")), "cfg_scale must be a finite number"),
    (dict(batch_size=0), "batch_size must be an integer >= 1 or None"),
    (dict(batch_size=1.5), "batch_size must be an integer >= 1 or None for the default, got 1.5"),
    (dict(vae_chunk_frames=0), "vae_chunk_frames must be an integer >= 1 or None for the default, got 0"),
    (dict(num_steps=1), "num_steps for sampler 'iddpm' must be an integer from 2"),
    (dict(num_steps=2.0), "num_steps for sampler 'iddpm' must be an integer"),
    (dict(num_steps=True, sampler="ddim"), "num_steps for sampler 'ddim' must be an integer .* got True"),
    (dict(guidance_channels=3.0), "guidance_channels must be 3 .* got 3.0"),
    (dict(prompts=["a \ud800 cat"]), "prompt #0 is not valid Unicode text"),
    (dict(stats="oops"), "stats must be a list"),
    (dict(cache="residual", cache_threshold="x"), "cache_threshold must be a number >= 0"),
    (dict(cache="residual", cache_threshold=True), "cache_threshold must be a number >= 0"),
    (dict(cache="attention", cache_broadcast="x"), "cache_broadcast must be an AttentionBroadcast"),
])
def test_generate_rejects_bad_arguments_with_config_error(engine, kwargs, message):
    kwargs = {"prompts": ["a cat"], "num_steps": 2, "progress": False, **kwargs}
    with pytest.raises(ConfigError, match=message):
        engine.generate(kwargs.pop("prompts"), **kwargs)


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(device="tpu"), DeviceError, "unknown device 'tpu': pass 'cuda', 'cuda:N' or 'cpu'"),
    (dict(device="meta"), DeviceError, "not supported"),
    (dict(device=0.5), ConfigError, "device must be a string"),
    (dict(seed="0"), ConfigError, "seed must be an integer"),
    (dict(dtype="fp16"), ConfigError, "dtype must be torch.float32, torch.float16 or torch.bfloat16, got 'fp16'"),
    (dict(dtype=torch.int8), ConfigError, "dtype must be .* got torch.int8"),
    (dict(t5_dtype=None), ConfigError, "t5_dtype must be .* got None"),
])
def test_engine_constructors_reject_bad_arguments(kwargs, error, message):
    with pytest.raises(error, match=message):
        Engine.from_random_weights("tiny", **kwargs)
    if "device" in kwargs:
        with pytest.raises(error, match=message):
            Engine.from_pretrained("16x256x256", **kwargs)


@pytest.mark.parametrize("extra, message", [
    (["--seed", "1180591620717411303424"], "seed must be from 0 to 2**64-1"),
    (["--seed", "-1"], "seed must be from 0 to 2**64-1"),
    (["--batch-size", "0"], "batch_size must be an integer >= 1"),
    (["--vae-chunk-frames", "0"], "vae_chunk_frames must be an integer >= 1"),
    (["--cfg-scale", "nan"], "cfg_scale must be a finite number"),
])
def test_cli_rejects_bad_arguments_before_loading(no_model_loads, tmp_path, capsys, extra, message):
    assert main([*TINY, "--out", str(tmp_path / "x.mp4"), *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


def test_numpy_integers_are_integers(engine):
    as_numpy = engine.generate(["a cat"], seed=numpy.uint64(3), num_steps=numpy.int64(2), batch_size=numpy.int32(1),
                               progress=False, output="latent")
    assert torch.equal(as_numpy, engine.generate(["a cat"], seed=3, num_steps=2, progress=False, output="latent"))


def test_cli_unknown_device_or_steps_exits_2(tmp_path, capsys):
    assert main([*TINY[:4], "--device", "tpu", "--prompt", "x", "--out", str(tmp_path / "x.mp4")]) == 2
    assert "unknown device 'tpu'" in capsys.readouterr().err
    assert main([*TINY, "--steps", "0", "--out", str(tmp_path / "x.mp4")]) == 2  # the sampler's own range
    assert "num_steps for sampler 'iddpm'" in capsys.readouterr().err


def test_huge_cfg_scale_is_blamed_not_fp16(engine, tmp_path, capsys):
    with pytest.raises(SamplingError) as raised:
        engine.generate(["a cat"], seed=0, num_steps=2, cfg_scale=1e30, progress=False, output="latent")
    message = str(raised.value)
    assert engine.dtype == torch.float32
    assert "cfg_scale=1e+30" in message and "float32" in message and "fp16" not in message
    assert main([*TINY, "--steps", "2", "--cfg-scale", "1e30", "--out", str(tmp_path / "x.mp4")]) == 2
    assert "cfg_scale=1e+30" in capsys.readouterr().err
    assert not (tmp_path / "x.mp4").exists()


def test_corrupt_safetensors_is_a_checkpoint_error(engine, tmp_path, capsys):
    from safetensors.torch import save_file

    good = tmp_path / "stdit.safetensors"
    save_file({k: v.contiguous() for k, v in engine.stdit.state_dict().items()}, str(good))
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(good.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="damaged or truncated.*download it again"):
        read_state_dict(corrupt)
    t5 = make_tiny_t5_dir(tmp_path / "t5", engine.preset.text, model=engine.text_encoder)
    code = main(["generate", "--preset", "tiny", "--device", "cpu", "--prompt", "x", "--out", str(tmp_path / "x.mp4"),
                 "--stdit", str(corrupt), "--t5", str(t5), "--vae", str(tmp_path)])
    assert code == 2 and "damaged or truncated" in capsys.readouterr().err


class _RunsCode:
    """A pickle that would create `marker` when unpickled unsafely."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return pathlib.Path.touch, (self.marker,)


def test_t5_pickle_that_runs_code_is_refused_with_checkpoint_error(engine, tmp_path):
    folder = make_tiny_t5_dir(tmp_path / "t5", engine.preset.text, model=engine.text_encoder)
    for weights in folder.glob("model*.safetensors*"):
        weights.unlink()
    marker = tmp_path / "code-ran"
    torch.save({"shared.weight": _RunsCode(marker)}, folder / "pytorch_model.bin", pickle_protocol=2)
    with pytest.raises(CheckpointError, match="loading them would run code from the file, which is refused"):
        TextEncoder.from_pretrained(str(folder), device="cpu")
    assert not marker.exists()
    # A .bin that is no pickle at all gets the same typed error.
    (folder / "pytorch_model.bin").write_bytes(pickle.dumps("not a checkpoint", protocol=2)[:5])
    with pytest.raises(CheckpointError, match="cannot load the T5 text encoder"):
        TextEncoder.from_pretrained(str(folder), device="cpu")
