"""Cold start (issue 20): the first generate() after loading against a warm one, in a fresh process
with an empty Triton cache and in a second process that finds the cache the first one left; import
and loading times reported apart. Select with `-k cold_start`."""
import json
import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).parent / "cold_start.py"
PRESET, STEPS = "16x256x256", 20


def run_process(env: dict) -> dict:
    done = subprocess.run([sys.executable, str(SCRIPT), PRESET, "auto", str(STEPS)], env=env, capture_output=True,
                          text=True, timeout=300, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_cold_start(benchmark, tmp_path):
    env = dict(os.environ, TRITON_CACHE_DIR=str(tmp_path / "triton-cache"))  # empty: nothing compiled yet
    first_process = benchmark.pedantic(lambda: run_process(env), rounds=1, iterations=1)
    second_process = run_process(env)
    benchmark.extra_info.update(
        workload=f"cold start {PRESET}, {STEPS} steps, default placement", backend="triton + CUDA graph",
        dtype="torch.float16", empty_triton_cache=first_process, second_process=second_process,
    )
