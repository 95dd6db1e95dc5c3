"""Serving under load: CLIENTS concurrent HTTP clients, each submitting REQUESTS videos one after
another (submit, poll, download), against the app of `stdit-engine serve` on a real uvicorn on
127.0.0.1, at 16x256x256 with random weights, few steps and the engine `serve` builds by default
(placement auto); once per max_batch (1, 2, 4), so that the service's default batch can be set from
what is measured.

Recorded per max_batch: videos per minute, client-side latency (submit to MP4 received) p50 and
p99 (to POLL_S), the batch sizes that formed, peak VRAM of the timed round, and failed or lost jobs (must be 0).
Each max_batch is warmed up first (as `serve` does: a call per batch size, then one untimed round)."""
import json
import statistics
import time
import urllib.request
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from stdit_engine import Engine

pytest.importorskip("fastapi", reason="the serving benchmark needs the serve extra's wheels (fastapi, uvicorn)")
from stdit_engine.serving import VideoService, create_app  # noqa: E402
from stdit_engine.serving.background import BackgroundServer  # noqa: E402

PRESET, STEPS = "16x256x256", 10
CLIENTS, REQUESTS = 8, 3
POLL_S = 0.1  # a client's polling period: the latencies' resolution, and light on the server's GIL
DEADLINE_S = 300
GIB = 1024**3


@pytest.fixture(scope="module")
def engine():
    return Engine.from_random_weights(PRESET, device="cuda")


def call(url: str, method: str = "GET", body: dict | None = None) -> bytes:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=DEADLINE_S) as response:
        return response.read()


def client(url: str, index: int, requests: int) -> list[dict]:
    """Submits `requests` videos one after another; each one's job and client-side latency."""
    results = []
    for turn in range(requests):
        start = time.perf_counter()
        request = {"prompt": f"client {index} video {turn}", "seed": 1000 * index + turn, "num_steps": STEPS}
        job = json.loads(call(f"{url}/v1/videos", "POST", request))
        deadline = time.monotonic() + DEADLINE_S
        while job["status"] in ("queued", "in_progress") and time.monotonic() < deadline:
            time.sleep(POLL_S)
            job = json.loads(call(f"{url}/v1/videos/{job['id']}"))
        size = len(call(f"{url}/v1/videos/{job['id']}/content")) if job["status"] == "completed" else 0
        results.append({**job, "latency_s": time.perf_counter() - start, "bytes": size})
    return results


def load(url: str, requests: int) -> tuple[list[dict], float]:
    start = time.perf_counter()
    with ThreadPoolExecutor(CLIENTS) as pool:
        runs = list(pool.map(lambda i: client(url, i, requests), range(CLIENTS)))
    return [job for run in runs for job in run], time.perf_counter() - start


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]


@pytest.mark.parametrize("max_batch", [1, 2, 4])
def test_serving_throughput(benchmark, engine, tmp_path, max_batch):
    service = VideoService(engine, max_queue=CLIENTS, max_batch=max_batch, output_dir=tmp_path)
    with BackgroundServer(create_app(service)) as server:
        engine.warmup(range(1, max_batch + 1))  # as `stdit-engine serve` does on a GPU
        load(server.url, 1)  # untimed: the HTTP stack and the service's first jobs
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        jobs, seconds = benchmark.pedantic(lambda: load(server.url, REQUESTS), rounds=1, iterations=1)
        listed = json.loads(call(f"{server.url}/v1/videos?limit=100"))["data"]
    completed = [job for job in jobs if job["status"] == "completed" and job["bytes"] > 0]
    latencies = [job["latency_s"] for job in completed]
    listed_ids = {job["id"] for job in listed}
    benchmark.extra_info.update(
        workload=f"serving {PRESET}, {STEPS} steps, {CLIENTS} clients x {REQUESTS}, max_batch {max_batch}",
        backend=engine.stdit.ops.name, dtype=str(engine.dtype), placement=engine.placement.mode,
        max_batch=max_batch, videos=len(jobs), seconds=seconds,
        videos_per_minute=len(completed) / seconds * 60,
        latency_p50_s=percentile(latencies, 50) if latencies else float("nan"),
        latency_p99_s=percentile(latencies, 99) if latencies else float("nan"),
        batch_sizes=dict(Counter(job["batch_size"] for job in jobs)),
        failed=len(jobs) - len(completed), lost=sum(job["id"] not in listed_ids for job in jobs),
        peak_allocated_gib=torch.cuda.max_memory_allocated() / GIB,
        peak_reserved_gib=torch.cuda.max_memory_reserved() / GIB,
    )
    assert len(completed) == len(jobs) == CLIENTS * REQUESTS, [j["error"] for j in jobs if j["status"] != "completed"]
    assert benchmark.extra_info["lost"] == 0
