"""Cold start (issue 20): the first generate() after loading against a warm one, in a fresh process
with an empty Triton cache, in a second process that finds the cache the first one left (both
warmed up while loading, the engine's default on a GPU), and, for comparison, in a fresh process
with another empty cache and no warm-up, where the first call pays it all; import and loading
times (with the warm-up's part) reported apart. Select with `-k cold_start`."""
import json
import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).parent / "cold_start.py"
PRESET, STEPS = "16x256x256", 20


def run_process(triton_cache: Path, *options: str) -> dict:
    env = dict(os.environ, TRITON_CACHE_DIR=str(triton_cache))
    done = subprocess.run([sys.executable, str(SCRIPT), PRESET, "auto", str(STEPS), *options], env=env,
                          capture_output=True, text=True, timeout=300, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_cold_start(benchmark, tmp_path):
    first_process = benchmark.pedantic(lambda: run_process(tmp_path / "cache"), rounds=1, iterations=1)  # empty
    second_process = run_process(tmp_path / "cache")  # what the first process compiled
    unwarmed = run_process(tmp_path / "another-cache", "--no-warmup")
    benchmark.extra_info.update(
        workload=f"cold start {PRESET}, {STEPS} steps, default placement", backend="triton + CUDA graph",
        dtype="torch.float16", empty_triton_cache=first_process, second_process=second_process,
        empty_cache_no_warmup=unwarmed,
    )
