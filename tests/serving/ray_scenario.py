"""The Ray Serve app on a local Ray instance, driven over HTTP; run by test_ray_app.py in a network
namespace of its own (Ray's servers listen on every interface, and there only loopback exists).

    python ray_scenario.py OUT_DIR PORT

Deploys 2 CPU replicas of the tiny preset behind the gateway, with an API key, then: 4 jobs at
once; a job whose engine raises; a long job cancelled while it runs, then 2 jobs at once (which
need both replicas free again); the page at / and a request without the key. It records what it
saw in OUT_DIR/report.json and each video it fetched in OUT_DIR/<job id>.mp4; test_ray_app.py
judges them. Every wait is bounded (DEADLINE_S).
"""
import functools
import hashlib
import json
import os
import sys
from pathlib import Path

import time
import urllib.error
import urllib.request

import ray
import torch
from ray import serve

from stdit_engine import Engine
from stdit_engine.cli import _parser
from stdit_engine.serving.ray_app import APP_NAME, application

DEADLINE_S = 120  # every wait gives up after this
API_KEY = "ray-test-key"
FAULT_PROMPT = "this prompt makes the engine raise"
CRASH_PROMPT = "this prompt makes the replica's process exit"
STEPS = 2
LONG_STEPS = 1000


def frames_file(folder: Path, prompt: str) -> Path:
    return folder / (hashlib.sha1(prompt.encode()).hexdigest() + ".pt")


class FaultyEngine:
    """The tiny engine, raising for FAULT_PROMPT (an engine failure inside a replica) and ending
    its process for CRASH_PROMPT (a replica that dies). It keeps the frames it made in `frames_dir`
    (see test_ray_app.py for why)."""

    def __init__(self, frames_dir: Path):
        self.frames_dir = frames_dir
        self.engine = Engine.from_random_weights("tiny", device="cpu")
        self.device = self.engine.device

    def generate(self, prompts, **options):
        if FAULT_PROMPT in prompts:
            raise RuntimeError("injected fault")
        if CRASH_PROMPT in prompts:
            os._exit(1)
        videos = self.engine.generate(prompts, **options)
        for prompt, video in zip(prompts, videos):
            torch.save(video.frames, frames_file(self.frames_dir, prompt))
        return videos


class Client:
    """Requests to the app at 127.0.0.1:port, with the API key unless told otherwise."""

    def __init__(self, port: int):
        self.base = f"http://127.0.0.1:{port}"

    def request(self, method: str, path: str, body=None, headers=None):
        """(status, headers, body: parsed when JSON, else bytes)."""
        headers = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json", **(headers or {})}
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.base + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=DEADLINE_S) as response:
                status, got, content = response.status, dict(response.headers), response.read()
        except urllib.error.HTTPError as err:
            status, got, content = err.code, dict(err.headers), err.read()
        got = {name.lower(): value for name, value in got.items()}
        return status, got, json.loads(content) if got.get("content-type") == "application/json" else content

    def submit(self, **request) -> dict:
        status, _, job = self.request("POST", "/v1/videos", request)
        assert status == 202, (status, job)
        return job

    def job(self, job_id: str) -> dict:
        return self.request("GET", f"/v1/videos/{job_id}")[2]

    def wait(self, job_id: str, until=("completed", "failed", "cancelled"), progressed=False) -> dict:
        deadline = time.monotonic() + DEADLINE_S
        while (job := self.job(job_id))["status"] not in until or (progressed and job["progress"] == 0):
            assert time.monotonic() < deadline, f"timed out waiting for job {job_id} to be {until}"
            time.sleep(0.05)
        return job


def main(out: Path, port: int) -> None:
    args = _parser().parse_args(["serve", "--ray", "--preset", "tiny", "--random-weights", "--device", "cpu",
                                 "--replicas", "2", "--max-batch", "1", "--api-key", API_KEY,
                                 "--output-dir", str(out / "videos")])
    ray.init(num_cpus=4, include_dashboard=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        (out / "frames").mkdir()
        make_engine = functools.partial(FaultyEngine, out / "frames")
        serve.run(application(args, make_engine=make_engine), name=APP_NAME, route_prefix="/")
        report = drive(Client(port), out)
    finally:
        serve.shutdown()
        ray.shutdown()
    (out / "report.json").write_text(json.dumps(report, indent=1))


def drive(client: Client, out: Path) -> dict:
    report = {}
    status, _, page = client.request("GET", "/", headers={"Authorization": ""})  # the page needs no key
    report["page"] = [status, page.decode(errors="replace")]
    report["no_key_status"] = client.request("GET", "/v1/videos", headers={"Authorization": ""})[0]

    batch = [client.submit(prompt=f"a red car, take {i}", seed=10 + i, num_steps=STEPS) for i in range(4)]
    failing = client.submit(prompt=FAULT_PROMPT, seed=1, num_steps=STEPS)
    report["batch"] = [client.wait(job["id"]) for job in batch]
    report["failing"] = client.wait(failing["id"])

    long = client.submit(prompt="a long video", seed=2, num_steps=LONG_STEPS)
    client.wait(long["id"], until=("in_progress",), progressed=True)  # progress reaches the gateway
    report["cancel_status"], _, _ = client.request("DELETE", f"/v1/videos/{long['id']}")
    report["cancelled"] = client.wait(long["id"])
    after = [client.submit(prompt=f"after the cancel, take {i}", seed=20 + i, num_steps=STEPS) for i in range(2)]
    report["after"] = [client.wait(job["id"]) for job in after]
    report["crashed"] = client.wait(client.submit(prompt=CRASH_PROMPT, seed=3, num_steps=STEPS)["id"])

    for job in report["batch"] + report["after"]:
        status, _, mp4 = client.request("GET", f"/v1/videos/{job['id']}/content")
        assert status == 200, (status, mp4)
        (out / f"{job['id']}.mp4").write_bytes(mp4)
    first = report["batch"][0]["id"]
    status, headers, part = client.request("GET", f"/v1/videos/{first}/content", headers={"Range": "bytes=10-109"})
    report["range"] = [status, headers.get("content-range"), len(part)]
    report["listing"] = client.request("GET", "/v1/videos?limit=100")[2]
    return report


if __name__ == "__main__":
    main(Path(sys.argv[1]), int(sys.argv[2]))
