"""The HTTP API against a real uvicorn server on 127.0.0.1: a job's life cycle (the MP4 decoded
by PyAV, seeking by Range), cancellation, auth, every refused input with its status, a full queue,
an injected out-of-memory fault, and 8 concurrent clients whose videos equal direct engine calls."""
import io
import re
import threading

import av
import numpy as np
import pytest
import torch
from fastapi import FastAPI

from stdit_engine.errors import ConfigError, JobNotReady
from stdit_engine.serving import VideoService, create_app
from stdit_engine.serving.background import BackgroundServer
from stdit_engine.serving.schema import MAX_BODY_BYTES, MAX_SEED

STEPS = 2  # the server fixture's default; few: these tests are about the service
LONG_STEPS = 1000  # a job that keeps the worker busy until cancelled
DEADLINE_S = 120


def decode_mp4(data: bytes) -> np.ndarray:
    """The RGB frames [T, H, W, 3] of an H.264 MP4 given as bytes, decoded by PyAV."""
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264"
        return np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(stream)])


def test_job_life_cycle(serve):
    server = serve()
    job = server.submit(prompt="a sea turtle swimming over a coral reef", seed=7)
    assert job["status"] in ("queued", "in_progress") and job["seed"] == 7 and job["object"] == "video"
    assert re.fullmatch(r"video_[0-9a-f]{32}", job["id"])

    done = server.wait(job["id"])
    assert done["status"] == "completed" and done["progress"] == 100 and done["error"] is None
    assert done["created_at"] <= done["started_at"] <= done["completed_at"]
    assert [stage["name"] for stage in done["stages"]] == ["encode", "denoise", "decode"]

    status, headers, mp4 = server.request("GET", f"/v1/videos/{job['id']}/content")
    assert status == 200 and headers["content-type"] == "video/mp4"
    assert decode_mp4(mp4).shape == (4, 64, 64, 3)
    assert server.engine.calls == [1]
    assert torch.equal(server.engine.produced(done).frames, server.engine.direct(done).frames)  # batch of one: bitwise

    # A player seeks with Range requests.
    status, headers, part = server.request("GET", f"/v1/videos/{job['id']}/content", headers={"Range": "bytes=100-299"})
    assert status == 206 and part == mp4[100:300]
    assert headers["content-range"] == f"bytes 100-299/{len(mp4)}"
    assert headers["accept-ranges"] == "bytes"

    # Server-made names only, and nothing partial left behind.
    assert sorted(p.name for p in server.service.folder.path.glob("*.mp4")) == [f"{job['id']}.mp4"]

    status, _, listing = server.request("GET", "/v1/videos")
    assert status == 200 and [j["id"] for j in listing["data"]] == [job["id"]] and not listing["has_more"]
    status, _, again = server.request("DELETE", f"/v1/videos/{job['id']}")  # nothing left to cancel
    assert status == 200 and again["status"] == "completed"
    assert server.request("GET", f"/v1/videos/{job['id']}/content")[0] == 200
    status, _, health = server.request("GET", "/healthz")
    assert status == 200 and health == {"status": "ok", "queue_depth": 0}
    status, headers, metrics = server.request("GET", "/metrics")
    text = metrics.decode()
    assert status == 200 and headers["content-type"].startswith("text/plain; version=0.0.4")
    assert 'stdit_jobs{state="completed"} 1' in text and "stdit_queue_depth 0" in text
    assert f"stdit_step_seconds_count {STEPS}" in text and "stdit_request_seconds_count 1" in text

    (server.service.folder.path / f"{job['id']}.mp4").unlink()  # gone from the disk, whatever removed it
    status, _, reply = server.request("GET", f"/v1/videos/{job['id']}/content")
    assert status == 410 and reply["error"]["code"] == "expired"
    with pytest.raises(JobNotReady, match="no longer on the server"):  # the Python API says so too
        server.service.result(job["id"])


def test_a_download_holds_its_file_only_while_it_is_sent(serve):
    """The route holds the file it sends (the service's test shows that retention then waits for
    it), and a finished download, whole or a range, no longer keeps it."""
    server = serve(max_videos=1)
    first = server.wait(server.submit(prompt="first")["id"])
    assert server.request("GET", f"/v1/videos/{first['id']}/content")[0] == 200
    assert server.request("GET", f"/v1/videos/{first['id']}/content", headers={"Range": "bytes=0-9"})[0] == 206
    server.wait(server.submit(prompt="second")["id"])
    assert not (server.service.folder.path / f"{first['id']}.mp4").exists()  # both reads released it
    status, _, reply = server.request("GET", f"/v1/videos/{first['id']}/content")
    assert status == 410 and reply["error"]["code"] == "expired"


def test_a_locked_job_store_gets_503_with_retry_after(serve):
    import sqlite3
    server = serve()
    other = sqlite3.connect(str(server.service.folder.path / "jobs.sqlite3"), isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")
    try:
        status, headers, reply = server.request("POST", "/v1/videos", {"prompt": "a cat", "num_steps": STEPS})
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert status == 503 and reply["error"]["code"] == "store_unavailable" and int(headers["retry-after"]) > 0
    assert server.request("GET", "/v1/videos")[2]["data"] == []  # nothing was queued


def test_a_job_without_a_seed_is_given_one_and_reports_it(serve):
    server = serve()
    job = server.wait(server.submit(prompt="a red car in the snow")["id"])
    assert 0 <= job["seed"] <= MAX_SEED == 2**53 - 1  # what a JSON client's double holds exactly
    assert torch.equal(server.engine.produced(job).frames, server.engine.direct(job).frames)


def test_cancel_queued_and_running_jobs(serve):
    server = serve()
    running = server.submit(prompt="long", num_steps=LONG_STEPS)
    queued = server.submit(prompt="waiting")
    server.wait(running["id"], until=("in_progress",))

    status, _, job = server.request("DELETE", f"/v1/videos/{queued['id']}")
    assert status == 200 and job["status"] == "cancelled"
    status, _, job = server.request("DELETE", f"/v1/videos/{running['id']}")
    assert status == 200 and job["status"] == "cancelled" and job["error"]["code"] == "cancelled"
    status, _, body = server.request("GET", f"/v1/videos/{running['id']}/content")
    assert status == 409 and body["error"]["code"] == "not_ready"

    # The engine call stops (well before its 1000 steps) and the next job runs.
    after = server.wait(server.submit(prompt="next")["id"])
    assert after["status"] == "completed"
    assert server.request("GET", f"/v1/videos/{queued['id']}")[2]["started_at"] is None
    assert not list(server.service.folder.path.glob("*.partial.mp4"))


@pytest.mark.parametrize("api_key", [None, "s3cret-key"])
def test_auth(serve, api_key):
    server = serve(api_key=api_key)
    good = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {api_key}"}):
        status, got, body = server.request("POST", "/v1/videos", {"prompt": "a cat", "num_steps": STEPS},
                                           headers=headers)
        if api_key is None:
            assert status == 202
        else:
            assert status == 401 and got["www-authenticate"] == "Bearer"
            assert body["error"]["type"] == "authentication_error"
            assert server.request("GET", "/v1/videos", headers=headers)[0] == 401
    status, _, job = server.request("POST", "/v1/videos", {"prompt": "a cat", "num_steps": STEPS}, headers=good)
    assert status == 202
    if api_key is not None:  # the scheme's name in any case (RFC 9110)
        assert server.request("GET", "/v1/videos", headers={"Authorization": f"bearer {api_key}"})[0] == 200
    assert server.wait(job["id"], headers=good)["status"] == "completed"
    assert server.request("GET", f"/v1/videos/{job['id']}/content", headers=good)[0] == 200
    assert server.request("GET", "/healthz")[0] == 200  # probes need no key
    assert server.request("GET", "/metrics")[0] == 200
    assert server.request("GET", "/openapi.json")[0] == 200  # the API's description holds no job
    if api_key is not None:  # any other path needs the key, whether a route serves it or not
        assert server.request("GET", "/v2/videos")[0] == 401


def test_an_empty_api_key_is_refused(engine, tmp_path):
    with VideoService(engine, output_dir=tmp_path) as service, pytest.raises(ConfigError, match="api_key is empty"):
        create_app(service, api_key="")


def test_the_key_is_asked_for_where_the_app_is_mounted_under_a_prefix(engine, tmp_path, http):
    service = VideoService(engine, output_dir=tmp_path)
    outer = FastAPI()
    outer.mount("/video", create_app(service, api_key="k", close_service_on_shutdown=False))
    try:
        with BackgroundServer(outer) as server:
            for method, path, body in (("GET", "/video/v1/videos", None),
                                       ("POST", "/video/v1/videos", {"prompt": "free?", "num_steps": 2}),
                                       ("GET", f"/video/v1/videos/video_{'0' * 32}", None)):
                assert http(server.port, method, path, body)[0] == 401, path
            key = {"Authorization": "Bearer k"}
            assert http(server.port, "GET", "/video/v1/videos", headers=key)[0] == 200
            assert http(server.port, "GET", "/video/healthz")[0] == 200
            assert http(server.port, "GET", "/video/")[0] == 200
    finally:
        service.close()
    assert service.store.counts() == {}  # nothing was submitted without the key


@pytest.mark.parametrize("body, field", [
    ({"prompt": ""}, "prompt"),
    ({"prompt": "   "}, "prompt"),
    ({}, "prompt"),
    ({"prompt": 5}, "prompt"),
    ({"prompt": "a cat", "num_steps": 0}, "num_steps"),
    ({"prompt": "a cat", "num_steps": 1}, "num_steps"),  # IDDPM takes 2 or more (the engine's own check)
    ({"prompt": "a cat", "num_steps": 1001}, "num_steps"),
    ({"prompt": "a cat", "num_steps": 2.5}, "num_steps"),
    ({"prompt": "a cat", "seed": -1}, "seed"),
    ({"prompt": "a cat", "seed": MAX_SEED + 1}, "seed"),
    ({"prompt": "a cat", "seed": "7"}, "seed"),
    ({"prompt": "a cat", "cfg_scale": float("nan")}, "cfg_scale"),
    ({"prompt": "a cat", "cfg_scale": float("inf")}, "cfg_scale"),
    ({"prompt": "a cat", "cfg_scale": 1e300}, "cfg_scale"),  # sure to overflow: refused, not run
    ({"prompt": "a cat", "cfg_scale": -1.0}, "cfg_scale"),
    ({"prompt": "<b></b>"}, "prompt"),  # nothing left for T5 once cleaned
    ({"prompt": "@someone http://example.com"}, "prompt"),
    ({"prompt": "a cat", "guidance_channels": 5}, "guidance_channels"),
    ({"prompt": "a cat", "sampler": "euler"}, "sampler"),
    ({"prompt": "a cat", "steps": 10}, "steps"),  # unknown fields are refused, not ignored
])
def test_bad_requests_get_422_naming_the_field(serve, body, field):
    server = serve()
    status, _, reply = server.request("POST", "/v1/videos", body)
    assert status == 422, reply
    assert reply["error"]["param"] == field and field in reply["error"]["message"]
    assert server.service.store.counts() == {}  # nothing was queued


def test_other_refusals(serve):
    server = serve()
    json_header = {"Content-Type": "application/json"}
    for not_json in (b'{"prompt": ', b"", '{"prompt": "caf\u00e9"}'.encode("latin-1")):
        status, _, reply = server.request("POST", "/v1/videos", raw=not_json, headers=json_header)
        assert status == 400 and reply["error"]["code"] == "invalid_json" and reply["error"]["param"] is None
    big = {"prompt": "a" * (MAX_BODY_BYTES + 1)}
    status, _, reply = server.request("POST", "/v1/videos", big)
    assert status == 413 and reply["error"]["code"] == "body_too_large"
    # The same body sent chunked, without a Content-Length.
    chunks = iter([b'{"prompt": "', b"a" * MAX_BODY_BYTES, b'"}'])
    status, _, reply = server.request("POST", "/v1/videos", raw=chunks,
                                      headers={"Content-Type": "application/json", "Transfer-Encoding": "chunked"})
    assert status == 413
    for path in ("/v1/videos/video_" + "0" * 32, "/v1/videos/../../etc/passwd", "/v1/videos/nope/content"):
        assert server.request("GET", path)[0] == 404
    assert server.request("DELETE", "/v1/videos/video_" + "f" * 32)[0] == 404
    assert server.request("GET", "/v1/videos?limit=0")[0] == 422
    assert server.request("GET", f"/v1/videos?after=video_{'0' * 32}")[0] == 404
    status, headers, reply = server.request("PUT", "/v1/videos", {"prompt": "a cat"})
    assert status == 405 and reply["error"]["code"] == "method_not_allowed" and "POST" in headers["allow"]
    status, _, reply = server.request("POST", "/v1/videos", raw=b'{"prompt": "a cat"}')  # no Content-Type
    assert status == 422 and "Content-Type: application/json" in reply["error"]["message"]
    assert server.service.store.counts() == {}


def test_queue_full_gets_429_with_retry_after(serve):
    server = serve(max_queue=1)
    running = server.submit(prompt="long", num_steps=LONG_STEPS)
    server.wait(running["id"], until=("in_progress",))
    waiting = server.submit(prompt="waits")
    status, headers, reply = server.request("POST", "/v1/videos", {"prompt": "one too many"})
    assert status == 429 and reply["error"]["code"] == "queue_full"
    assert int(headers["retry-after"]) >= 1
    for job in (waiting, running):
        server.request("DELETE", f"/v1/videos/{job['id']}")
    assert server.request("POST", "/v1/videos", {"prompt": "room again", "num_steps": STEPS})[0] == 202


class OutOfMemoryOnce:
    """The engine, whose first generate() fails as a CUDA out-of-memory error would."""

    def __init__(self, engine):
        self.engine, self.device, self.failed = engine, engine.device, False

    def generate(self, *args, **kwargs):
        if not self.failed:
            self.failed = True
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB (injected)")
        return self.engine.generate(*args, **kwargs)


def test_failed_job_is_reported_and_the_server_keeps_serving(serve, engine):
    server = serve(engine=OutOfMemoryOnce(engine))
    failed = server.wait(server.submit(prompt="too big")["id"])
    assert failed["status"] == "failed" and failed["error"]["code"] == "out_of_memory"
    assert "Tried to allocate" in failed["error"]["message"]
    assert server.request("GET", f"/v1/videos/{failed['id']}/content")[0] == 409
    assert server.wait(server.submit(prompt="next")["id"])["status"] == "completed"
    assert 'stdit_jobs{state="failed"} 1' in server.request("GET", "/metrics")[2].decode()


def test_concurrent_clients_each_get_the_direct_call_result(serve, wait_until):
    """8 clients x 2 requests at once: all complete, none lost, each equal to its direct call."""
    server = serve(max_queue=16, max_batch=4)
    results, errors = {}, []

    def client(index: int) -> None:
        try:
            for turn in range(2):
                job = server.submit(prompt=f"client {index} request {turn}", seed=100 * index + turn)
                results[job["id"]] = job
        except Exception as err:  # noqa: BLE001 - reported below, with the others
            errors.append(err)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(DEADLINE_S)
    assert not errors and len(results) == 16
    finished = {job_id: server.wait(job_id) for job_id in results}
    assert all(job["status"] == "completed" for job in finished.values())
    assert max(job["batch_size"] for job in finished.values()) >= 2  # batches did form
    assert sum(server.engine.calls) == 16 and len(server.engine.calls) < 16
    for job_id, job in finished.items():
        _, _, mp4 = server.request("GET", f"/v1/videos/{job_id}/content")
        assert decode_mp4(mp4).shape == (4, 64, 64, 3)
        served, direct = server.engine.produced(job).frames, server.engine.direct(job).frames
        if job["batch_size"] == 1:
            assert torch.equal(served, direct)
        else:  # fp32 kernels may round differently at another batch size: a pixel level at most
            assert (served.int() - direct.int()).abs().max() <= 1, job
    status, _, listing = server.request("GET", "/v1/videos?limit=100")
    assert {job["id"] for job in listing["data"]} == set(results)
    wait_until(lambda: server.request("GET", "/healthz")[2]["queue_depth"] == 0, "an empty queue")
