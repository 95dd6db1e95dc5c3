"""Fixtures of the serving tests (used as fixtures only, so that no test imports this file): one
tiny CPU engine, a real uvicorn server on 127.0.0.1 (an ephemeral port) in a thread, driven with
http.client (nothing but loopback), and bounded waiting."""
import http.client
import json
import time

import pytest

from stdit_engine import Engine
from stdit_engine.serving import VideoService, create_app
from stdit_engine.serving.background import BackgroundServer
from stdit_engine.serving.jobs import FINISHED

STEPS = 2  # few steps: the tests are about the service, not the pictures
DEADLINE_S = 120  # every wait in these tests gives up after this (CI's CPU is shared)


@pytest.fixture(scope="session")
def engine():
    return Engine.from_random_weights("tiny", device="cpu")


class LiveServer(BackgroundServer):
    """A BackgroundServer (uvicorn on 127.0.0.1, an ephemeral port) with a client's calls."""

    def request(self, method: str, path: str, body=None, headers: dict | None = None, raw=None):
        return http_request(self.port, method, path, body, headers, raw)

    def submit(self, **request) -> dict:
        status, _, job = self.request("POST", "/v1/videos", {"num_steps": STEPS, **request})
        assert status == 202, job
        return job

    def wait(self, job_id: str, until=FINISHED, headers=None) -> dict:
        job = {}

        def reached():
            nonlocal job
            _, _, job = self.request("GET", f"/v1/videos/{job_id}", headers=headers)
            return job["status"] in until

        wait_until(reached, f"job {job_id} to be {until}")
        return job


def http_request(port: int, method: str, path: str, body=None, headers: dict | None = None, raw=None):
    """(status, headers (lower-case names), body: parsed JSON where it is JSON, else bytes) of one
    request to 127.0.0.1:port; `body` is sent as JSON, `raw` as it is (an iterable: chunked)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=DEADLINE_S)
    try:
        headers = dict(headers or {})
        if body is not None:
            raw = json.dumps(body).encode()
            headers.setdefault("Content-Type", "application/json")
        chunked = headers.get("Transfer-Encoding") == "chunked"
        connection.request(method, path, body=raw, headers=headers, encode_chunked=chunked)
        response = connection.getresponse()
        data = response.read()
        got = {name.lower(): value for name, value in response.getheaders()}
    finally:
        connection.close()
    if got.get("content-type", "").startswith("application/json"):
        data = json.loads(data)
    return response.status, got, data


def wait_until(condition, what: str, timeout: float = DEADLINE_S) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


class RecordingEngine:
    """The engine, keeping the videos each generate() call returned, by (prompt, seed): the frames
    the service produced, before H.264 (whose encodes of equal frames are not always equal bytes
    under concurrent load)."""

    def __init__(self, engine):
        self.engine, self.device, self.videos, self.calls = engine, engine.device, {}, []

    def generate(self, prompts, *, seed, **kwargs):
        videos = self.engine.generate(prompts, seed=seed, **kwargs)
        self.calls.append(len(prompts))
        self.videos.update(zip(zip(prompts, seed), videos))
        return videos

    def produced(self, job: dict):
        return self.videos[job["prompt"], job["seed"]]

    def direct(self, job: dict):
        """The job's reproducing call: engine.generate([prompt], seed=seed, ...) (README, Serving)."""
        return self.engine.generate([job["prompt"]], seed=job["seed"], num_steps=job["num_steps"],
                                    cfg_scale=job["cfg_scale"], sampler=job["sampler"],
                                    guidance_channels=job["guidance_channels"], progress=False)[0]


@pytest.fixture
def serve(engine, tmp_path):
    """serve(**service_and_app_options) -> a LiveServer; every one made is stopped at the end."""
    servers = []

    def start(engine=engine, api_key=None, **options):
        """A server on a fresh VideoService over `engine` (wrapped in a RecordingEngine)."""
        options.setdefault("output_dir", tmp_path / "videos")
        engine = RecordingEngine(engine)
        service = VideoService(engine, **options)
        server = LiveServer(create_app(service, api_key=api_key))
        server.service, server.engine = service, engine
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop(DEADLINE_S)


@pytest.fixture(name="wait_until")
def wait_until_fixture():
    return wait_until


@pytest.fixture(name="http")
def http_fixture():
    """http_request(port, method, path, ...), for servers the test starts itself."""
    return http_request
