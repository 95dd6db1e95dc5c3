"""Output targets are checked before any work, and files appear whole or not at all (an error or
Ctrl-C part-way leaves nothing at the final name, and an older file there intact)."""
import json

import pytest
import torch

from stdit_engine import Engine, Video
from stdit_engine.cli import main
from stdit_engine.configs import get_preset
from stdit_engine.models.checkpoint import build_stdit
from stdit_engine.errors import ConfigError
from stdit_engine.export import aoti, onnx
from stdit_engine.files import (atomic_folder_outputs, atomic_path, check_output_target, remove_partials,
                                write_text_atomic)

TINY = ["generate", "--preset", "tiny", "--random-weights", "--device", "cpu", "--prompt", "a cat"]


def gradient_video(frames: int = 12) -> Video:
    ramp = torch.arange(64, dtype=torch.uint8).mul(4)
    return Video(ramp.view(1, 1, 64, 1).expand(frames, 64, 64, 3).contiguous(), fps=8)


def tiny_stdit():
    return build_stdit(get_preset("tiny"), torch.device("cpu"), torch.float32)


def test_unusable_targets_are_config_errors(tmp_path):
    (tmp_path / "taken.mp4").mkdir()
    with pytest.raises(ConfigError, match="is an existing folder"):
        check_output_target(tmp_path / "taken.mp4")
    with pytest.raises(ConfigError, match="folder .*missing does not exist: create it first"):
        check_output_target(tmp_path / "missing" / "x.mp4")
    with pytest.raises(ConfigError, match="files cannot be created in /proc"):
        check_output_target("/proc/a.mp4")
    assert check_output_target(tmp_path / "fine.mp4") == tmp_path / "fine.mp4"
    assert [p.name for p in tmp_path.iterdir()] == ["taken.mp4"]  # the probe left nothing


@pytest.mark.parametrize("out, message", [
    ("/proc/a.mp4", "files cannot be created in /proc"),
    ("{tmp}/taken.mp4", "is an existing folder"),
    ("{tmp}/missing/a.mp4", "does not exist: create it first"),
])
def test_cli_checks_the_output_before_loading_models(tmp_path, monkeypatch, capsys, out, message):
    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the output target was checked")

    monkeypatch.setattr(Engine, "from_random_weights", refuse)
    (tmp_path / "taken.mp4").mkdir()
    (tmp_path / "taken.json").mkdir()
    assert main([*TINY, "--out", out.format(tmp=tmp_path)]) == 2
    assert message in capsys.readouterr().err
    assert main(["bench", "--preset", "tiny", "--json", out.format(tmp=tmp_path).replace(".mp4", ".json")]) == 2


@pytest.mark.parametrize("name", ["clip.mp4", "clip.gif"])
def test_interrupted_save_leaves_no_file(tmp_path, monkeypatch, name):
    encode = Video._encode

    def encode_then_interrupt(container, stream, frames):
        def some_frames():
            for index, frame in enumerate(frames):
                if index == 5:
                    raise KeyboardInterrupt
                yield frame
        encode(container, stream, some_frames())

    video = gradient_video()
    target = tmp_path / name
    monkeypatch.setattr(Video, "_encode", staticmethod(encode_then_interrupt))
    with pytest.raises(KeyboardInterrupt):
        video.save(target)
    assert list(tmp_path.iterdir()) == []  # neither the target nor a temporary file
    monkeypatch.setattr(Video, "_encode", staticmethod(encode))
    video.save(target)
    good = target.read_bytes()
    monkeypatch.setattr(Video, "_encode", staticmethod(encode_then_interrupt))
    with pytest.raises(KeyboardInterrupt):
        gradient_video(frames=20).save(target)
    assert target.read_bytes() == good and list(tmp_path.iterdir()) == [target]  # the older file, intact


def test_text_written_whole_or_not_at_all(tmp_path, monkeypatch):
    target = tmp_path / "bench.json"
    write_text_atomic(target, "old")
    original = type(target).write_text

    def write_half_then_fail(self, text):
        original(self, text[: len(text) // 2])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(type(target), "write_text", write_half_then_fail)
    with pytest.raises(OSError):
        write_text_atomic(target, json.dumps({"records": list(range(100))}))
    assert target.read_text() == "old" and list(tmp_path.iterdir()) == [target]


def test_bench_json_is_written_atomically(tmp_path, monkeypatch, capsys):
    import stdit_engine.bench as bench

    record = {"workload": "w", "device": "cpu", "backend": "eager", "placement": "resident", "sampling_s": 1.0,
              "total_s": 1.0, "reference_sampling_s": None, "peak_allocated_gib": 0.1, "peak_reserved_gib": 0.2,
              "estimated_peak_gib": 0.1}
    monkeypatch.setattr(bench, "bench_preset", lambda preset, **kwargs: dict(record, workload=preset))
    target = tmp_path / "bench.json"
    assert main(["bench", "--preset", "tiny", "--json", str(target)]) == 0
    assert json.loads(target.read_text())[0]["workload"] == "tiny"
    assert list(tmp_path.iterdir()) == [target]


class _FakeOnnxProgram:
    """Stands for torch.onnx's program: saves a model and its external data named after it."""

    model = None

    def __init__(self, fail: bool):
        self.fail = fail

    def save(self, path, external_data=None):
        data_name = path.rsplit("/", 1)[-1] + ".data"
        open(path + ".data", "wb").write(b"weights")
        open(path, "wb").write(b"model referencing " + data_name.encode())
        if self.fail:
            raise KeyboardInterrupt


@pytest.mark.parametrize("fail", [False, True])
def test_onnx_export_files_appear_whole_or_not_at_all(tmp_path, monkeypatch, fail):
    model = tiny_stdit()
    monkeypatch.setattr(onnx, "export_program", lambda *args: None)
    monkeypatch.setattr(onnx, "exportable", lambda *args: None)
    monkeypatch.setattr(onnx, "name_batch_axis", lambda *args: None)
    monkeypatch.setattr(torch.onnx, "export", lambda *args, **kwargs: _FakeOnnxProgram(fail))
    target = tmp_path / "stdit.onnx"
    if fail:
        with pytest.raises(KeyboardInterrupt):
            onnx.export_onnx(model, target, "tiny")
        assert list(tmp_path.iterdir()) == []
    else:
        onnx.export_onnx(model, target, "tiny")
        assert sorted(p.name for p in tmp_path.iterdir()) == ["stdit.onnx", "stdit.onnx.data", "stdit.onnx.json"]
        # the data file keeps the name recorded in the model
        assert target.read_bytes() == b"model referencing stdit.onnx.data"


def test_interrupted_aoti_export_leaves_no_package(tmp_path, monkeypatch):
    def compile_part_then_interrupt(program, package_path):
        open(package_path, "wb").write(b"half a package")
        raise KeyboardInterrupt

    model = tiny_stdit()
    monkeypatch.setattr(aoti, "export_program", lambda *args: None)
    monkeypatch.setattr(aoti, "exportable", lambda *args: None)
    monkeypatch.setattr(torch._inductor, "aoti_compile_and_package", compile_part_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        aoti.export_aoti(model, tmp_path / "stdit.pt2", "tiny")
    assert list(tmp_path.iterdir()) == []


def test_staged_outputs_are_removed_on_error(tmp_path):
    with pytest.raises(RuntimeError):
        with atomic_folder_outputs(tmp_path / "m.onnx") as staged:
            staged.write_bytes(b"x")
            raise RuntimeError("export failed")
    assert list(tmp_path.iterdir()) == []


def test_partials_a_killed_writer_left_are_removed_and_nothing_else(tmp_path):
    """A serving folder is cleaned with remove_partials when it opens: only the temporary files of
    atomic_path writes to targets of the given suffix go."""
    class Killed(BaseException):
        pass

    with pytest.raises(Killed), atomic_path(tmp_path / "job.mp4") as partial:
        partial.write_bytes(b"half")
        leftover = tmp_path / "leftover"
        leftover.hardlink_to(partial)  # what stays when the process dies here (atomic_path cannot remove it)
        raise Killed
    leftover.rename(partial)
    kept = [tmp_path / "other.mp4", tmp_path / "x.partial.mp4", tmp_path / ".a.gif.0123456789ab.partial.gif"]
    for path in kept:
        path.write_bytes(b"not an MP4 write's temporary file")
    remove_partials(tmp_path, ".mp4")
    assert sorted(tmp_path.iterdir()) == sorted(kept)
