"""The command line as a process: `--help` and argument errors never import torch, and Ctrl-C ends
with one line and exit code 130, no traceback."""
import os
import select
import signal
import subprocess
import sys
import time

import pytest

from stdit_engine import Engine
from stdit_engine.cli import main

# Runs main(argv) in a fresh interpreter and prints the exit code and whether torch was imported.
PROBE = """
import sys
from stdit_engine.cli import main
try:
    code = main(sys.argv[1:])
except SystemExit as exit:
    code = exit.code
print("exit", code, "torch imported:", "torch" in sys.modules, file=sys.stderr)
"""


def run_probe(*argv: str) -> str:
    result = subprocess.run([sys.executable, "-c", PROBE, *argv], capture_output=True, text=True, timeout=120,
                            env=os.environ.copy())  # PYTHONPATH carries over: the worktree's code is imported
    return result.stderr.strip().splitlines()[-1]


@pytest.mark.parametrize("argv, code", [
    (["--help"], 0),
    (["generate", "--help"], 0),
    (["export", "--help"], 0),
    (["generate", "--preset", "no-such-preset", "--prompt", "x", "--out", "x.mp4"], 2),
    (["generate", "--prompt", "x"], 2),  # --out missing
    (["generate", "--prompt", "x", "--out", "x.mp4", "--steps", "many"], 2),
    (["generate", "--prompt", "x", "--out", "x.mp4", "--seed", "-5"], 2),
    (["generate", "--prompt", "x", "--out", "/proc/x.mp4"], 2),
    (["generate", "--prompt", "x", "--out", "x.avi"], 2),
])
def test_help_and_argument_errors_do_not_import_torch(argv, code):
    assert run_probe(*argv) == f"exit {code} torch imported: False"


def test_ctrl_c_prints_one_line_and_exits_130(tmp_path, monkeypatch, capsys):
    def interrupted(self, *args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(Engine, "generate", interrupted)
    code = main(["generate", "--preset", "tiny", "--random-weights", "--device", "cpu", "--prompt", "x",
                 "--out", str(tmp_path / "x.mp4")])
    assert code == 130
    err = capsys.readouterr().err
    assert err.splitlines() == ["interrupted: stdit-engine generate stopped while generating 1 video(s); "
                                "no partially written file was left"]
    assert list(tmp_path.iterdir()) == []


def wait_for(stream, text: str, deadline_s: float) -> None:
    """Reads the raw pipe until `text` appears (progress bars end their lines with \\r, not \\n)."""
    seen, deadline = "", time.monotonic() + deadline_s
    while text not in seen:
        ready, _, _ = select.select([stream], [], [], max(0.0, deadline - time.monotonic()))
        assert ready, f"no {text!r} within {deadline_s} s: {seen[-500:]}"
        chunk = os.read(stream.fileno(), 4096)
        assert chunk, f"the process closed its output before {text!r}: {seen[-500:]}"
        seen += chunk.decode(errors="replace")


def test_sigint_to_a_running_generate(tmp_path):
    """A real Ctrl-C (SIGINT) during the denoising steps: exit 130, one line, no traceback."""
    out = tmp_path / "x.mp4"
    # As a terminal's foreground process gets Ctrl-C. A process started in the background by a
    # non-interactive shell (as CI may run the tests) inherits SIGINT ignored, and an ignored signal
    # stays ignored across exec; a handled one is reset to the default, so handle it while starting.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        process = subprocess.Popen(
            [sys.executable, "-m", "stdit_engine", "generate", "--preset", "tiny", "--random-weights", "--device",
             "cpu", "--steps", "1000", "--prompt", "a cat", "--out", str(out)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=os.environ.copy())
    finally:
        signal.signal(signal.SIGINT, previous)
    try:
        wait_for(process.stderr, "denoise:", deadline_s=120)  # loaded: the interrupt lands in generate()
        process.send_signal(signal.SIGINT)
        _, stderr_bytes = process.communicate(timeout=120)
    finally:
        process.kill()
    stderr = stderr_bytes.decode(errors="replace")
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("interrupted: stdit-engine generate stopped while") and "no partially written file" in last
    assert not out.exists()


def test_option_names_are_the_engines():
    """The torch-free names the command line offers are the ones the engine accepts."""
    from stdit_engine import options
    from stdit_engine.engine.placement import MODES as PLACEMENT_MODES
    from stdit_engine.kernels.registry import BACKENDS
    from stdit_engine.parallel.plan import MODES as PARALLEL_MODES

    assert options.KERNEL_BACKENDS == tuple(BACKENDS)
    assert options.PLACEMENT_MODES == PLACEMENT_MODES and options.PARALLEL_MODES == PARALLEL_MODES
    assert str(options.torch_dtype("bf16")) == "torch.bfloat16"
