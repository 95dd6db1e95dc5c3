"""The command line: the README's demo command writes a real H.264 MP4; bad input gets exit 2."""
import argparse
import json

import av
import pytest

from stdit_engine import cli
from stdit_engine.cli import main, output_paths

DEMO_PROMPT = "a sea turtle swimming over a coral reef"


@pytest.mark.slow
def test_demo_command_writes_playable_mp4(tmp_path, capsys):
    out = tmp_path / "demo.mp4"
    # What `make demo` runs, 100 steps included.
    code = main(["generate", "--preset", "tiny", "--random-weights", "--device", "cpu",
                 "--prompt", DEMO_PROMPT, "--out", str(out)])
    assert code == 0
    with av.open(str(out)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264"
        assert (stream.width, stream.height) == (64, 64)
        assert stream.average_rate == 8
        assert sum(1 for _ in container.decode(stream)) == 4
    printed = capsys.readouterr().out
    for stage in ("encode", "denoise", "decode"):
        assert stage in printed  # time and peak memory per stage
    assert "random weights" in printed


def test_several_prompts_from_a_file(tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a cat\n\na dog\n")
    code = main(["generate", "--preset", "tiny", "--random-weights", "--device", "cpu", "--steps", "2",
                 "--prompts-file", str(prompts), "--out", str(tmp_path / "clip.gif")])
    assert code == 0
    assert sorted(p.name for p in tmp_path.glob("clip-*.gif")) == ["clip-0.gif", "clip-1.gif"]


@pytest.mark.parametrize("extra, message", [
    (["--out", "/no/such/folder/x.mp4"], "output folder /no/such/folder does not exist"),
    (["--out", "x.avi"], "must end in .mp4 or .gif"),
])
def test_bad_output_path_fails_before_work(extra, message, capsys):
    assert main(["generate", "--preset", "tiny", "--random-weights", "--prompt", "x", *extra]) == 2
    assert message in capsys.readouterr().err


def test_bad_output_folders_and_prompt_files_are_named(tmp_path, capsys):
    a_file, latin1 = tmp_path / "a-file", tmp_path / "prompts-latin1.txt"
    a_file.write_text("")
    latin1.write_bytes("a caf\xe9\n".encode("latin-1"))
    tiny = ["generate", "--preset", "tiny", "--random-weights", "--device", "cpu"]
    cases = [(["--prompt", "x", "--out", str(a_file / "x.mp4")], f"{a_file} is a file, not a folder"),
             (["--prompt", "x", "--out", str(a_file / "sub" / "x.mp4")], f"{a_file} is a file, not a folder"),
             (["--prompts-file", str(tmp_path), "--out", str(tmp_path / "x.mp4")], "is a folder"),
             (["--prompts-file", str(latin1), "--out", str(tmp_path / "x.mp4")], "is not UTF-8 text (byte 5)")]
    for argv, message in cases:
        assert main([*tiny, *argv]) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err


def test_a_prompts_file_may_start_with_a_byte_order_mark(tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\ufeffa cat\na dog\n", encoding="utf-8")
    assert cli.read_prompts(argparse.Namespace(prompt=[], prompts_file=prompts)) == ["a cat", "a dog"]


def test_output_suffix_in_any_case(tmp_path):
    assert output_paths(tmp_path / "x.MP4", 2) == [tmp_path / "x-0.MP4", tmp_path / "x-1.MP4"]


def test_no_prompt(tmp_path, capsys):
    assert main(["generate", "--preset", "tiny", "--random-weights", "--out", str(tmp_path / "x.mp4")]) == 2
    assert "no prompts" in capsys.readouterr().err


def test_info(capsys):
    assert main(["info"]) == 0
    printed = capsys.readouterr().out
    assert "torch" in printed and "kernel backends: auto, eager, sdpa, triton" in printed and "onnxruntime" in printed


def test_fp8_flag(tmp_path, capsys):
    out = tmp_path / "fp8.mp4"
    assert main(["generate", "--preset", "tiny", "--random-weights", "--device", "cpu", "--dtype", "bf16", "--fp8",
                 "--steps", "2", "--prompt", DEMO_PROMPT, "--out", str(out)]) == 0
    assert out.stat().st_size > 0 and "bfloat16 with FP8 block linears" in capsys.readouterr().out
    # FP8 takes half-precision activations; the CPU default is fp32.
    assert main(["generate", "--preset", "tiny", "--random-weights", "--device", "cpu", "--fp8",
                 "--prompt", "x", "--out", str(out)]) == 2
    assert "--dtype bf16" in capsys.readouterr().err


def test_offload_placement_without_gpu_is_refused(tmp_path, capsys):
    code = main(["generate", "--preset", "tiny", "--random-weights", "--device", "cpu", "--placement", "offload",
                 "--prompt", "x", "--out", str(tmp_path / "x.mp4")])
    assert code == 2
    assert "use 'resident'" in capsys.readouterr().err


def test_bench_writes_records(tmp_path, capsys, monkeypatch):
    from stdit_engine import Engine
    encoded, encode = [], Engine._encode_cleaned
    monkeypatch.setattr(Engine, "_encode_cleaned", lambda self, prompts: encoded.append(prompts) or encode(self, prompts))
    out = tmp_path / "bench.json"
    assert main(["bench", "--preset", "tiny", "--device", "cpu", "--steps", "3", "--json", str(out)]) == 0
    assert len(encoded) == 2  # the warm-up call's and the timed call's: the timed one encodes, as the reference's
    [record] = json.loads(out.read_text())
    assert record["workload"] == "end to end tiny, 2 prompt(s), 3 steps"
    assert set(record["stage_seconds"]) == {"encode", "denoise", "decode"}
    assert record["sampling_s"] > 0 and record["reference_sampling_s"] is None
    assert "end to end tiny" in capsys.readouterr().out


def test_calibrate_cache_then_generate_with_it(tmp_path, capsys):
    calibration = tmp_path / "cache.json"
    tiny = ["--preset", "tiny", "--random-weights", "--device", "cpu"]
    assert main(["calibrate-cache", *tiny, "--run", "iddpm:4", "--prompt", "a cat", "--prompt", "a dog",
                 "--sensitivity-steps", "1", "--out", str(calibration)]) == 0
    assert "curves and sensitivities for iddpm:4" in capsys.readouterr().out
    # One step measured, the others take its value.
    from stdit_engine.engine.cache_calibration import CacheCalibration
    assert len(set(CacheCalibration.load(calibration).sensitivity("iddpm", 4))) == 1
    for cache in (["--cache", "residual", "--cache-calibration", str(calibration), "--cache-threshold", "0.5"],
                  ["--cache", "attention", "--cache-intervals", "2,2,3", "--cache-range", "0:1"]):
        out = tmp_path / f"{cache[1]}.gif"
        assert main(["generate", *tiny, "--steps", "4", "--prompt", "a cat", "--out", str(out), *cache]) == 0
        assert out.is_file()
    assert main(["generate", *tiny, "--steps", "4", "--prompt", "a cat", "--out", str(tmp_path / "x.gif"),
                 "--cache", "residual"]) == 2
    assert "calibrate-cache" in capsys.readouterr().err


def test_cache_flags_left_out_take_the_samplers_defaults():
    from stdit_engine.cli import _cache_arguments, _parser
    from stdit_engine.engine.cache_defaults import cache_defaults
    from stdit_engine.engine.step_cache import AttentionBroadcast
    from stdit_engine.errors import ConfigError

    def cache_arguments(*flags):
        return _cache_arguments(_parser().parse_args(["generate", "--prompt", "a cat", "--out", "x.mp4",
                                                      "--sampler", "dpm-solver++", "--steps", "20", *flags]))

    assert cache_arguments("--cache", "residual") == dict(cache="residual", cache_threshold=None)
    assert cache_arguments("--cache", "attention") == dict(cache="attention", cache_threshold=None)
    default = cache_defaults("dpm-solver++", 20)
    assert cache_arguments("--cache", "attention", "--cache-intervals", "1,2,8")["cache_broadcast"] == \
        AttentionBroadcast.uniform((1, 2, 8), *default.attention_range)
    assert cache_arguments("--cache", "attention", "--cache-range", "0:1")["cache_broadcast"] == \
        AttentionBroadcast.uniform(default.attention_intervals, 0.0, 1.0)
    with pytest.raises(ConfigError, match="add --cache attention"):
        cache_arguments("--cache-range", "0:1")


@pytest.mark.parametrize("run", ["iddpm", "iddpm:", ":100", "iddpm:x"])
def test_a_malformed_calibration_run_is_refused_before_work(tmp_path, run, capsys):
    assert main(["calibrate-cache", "--preset", "tiny", "--random-weights", "--device", "cpu", "--run", run,
                 "--out", str(tmp_path / "cache.json")]) == 2
    assert "SAMPLER:STEPS" in capsys.readouterr().err
    assert not (tmp_path / "cache.json").exists()


def test_a_calibration_without_sensitivity_steps_is_refused_before_work(tmp_path, capsys):
    assert main(["calibrate-cache", "--preset", "tiny", "--random-weights", "--device", "cpu", "--run", "iddpm:4",
                 "--sensitivity-steps", "0", "--out", str(tmp_path / "cache.json")]) == 2
    assert "sensitivity at >= 1 step per run, got 0" in capsys.readouterr().err
    assert not (tmp_path / "cache.json").exists()


@pytest.mark.parametrize("flags, message", [
    (["--steps", "-3"], "from 2 to 1000"),
    (["--sampler", "euler"], "unknown sampler 'euler'"),
    (["--cache", "residual"], "pass --cache-calibration FILE"),
])
def test_sampler_and_cache_flags_are_checked_before_the_model_loads(no_model_loads, capsys, tmp_path, flags, message):
    assert main(["generate", "--preset", "tiny", "--random-weights", "--device", "cpu", "--prompt", "x",
                 "--out", str(tmp_path / "x.mp4"), *flags]) == 2
    assert message in capsys.readouterr().err
