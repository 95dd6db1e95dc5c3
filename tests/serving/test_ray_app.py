"""The Ray Serve app (ray_app.py) on a local Ray instance: 2 CPU replicas of the tiny preset, jobs
over HTTP. ray_scenario.py drives it in a network namespace that has only loopback, because Ray's
own servers listen on every interface; this test judges what it recorded."""
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest
import torch
import yaml
from ray.serve import Application
from ray.serve.schema import ServeDeploySchema
from ray_scenario import frames_file

from stdit_engine.serving.ray_app import build_app
from stdit_engine.serving.ray_engine import EngineReplica

SCENARIO = Path(__file__).with_name("ray_scenario.py")
EXAMPLE = Path(__file__).parents[2] / "examples" / "ray_serve.yaml"
SCENARIO_TIMEOUT_S = 600
PORT = 8000  # the namespace is new and empty: any port is free there


def run_scenario(out: Path) -> dict:
    # The replicas' engines use as many CPU threads as this process's does: CPU kernels reduce in
    # a thread-count-dependent order, so only then is a replica's video bitwise the direct call's.
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0", OMP_NUM_THREADS=str(torch.get_num_threads()),
               PYTHONPATH=os.pathsep.join([str(SCENARIO.parent), str(SCENARIO.parents[2]),
                                           os.environ.get("PYTHONPATH", "")]))
    env.pop("RAY_ADDRESS", None)  # the scenario starts its own cluster, inside the namespace
    in_namespace = 'ip link set lo up && exec "$@"'
    command = ["unshare", "--net", "--", "sh", "-c", in_namespace, "sh",
               sys.executable, str(SCENARIO), str(out), str(PORT)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=SCENARIO_TIMEOUT_S)
    assert done.returncode == 0, f"the scenario failed:\n{done.stdout[-4000:]}\n{done.stderr[-8000:]}"
    return json.loads((out / "report.json").read_text())


def assert_is_the_direct_call(engine, job: dict, tmp_path: Path) -> None:
    """The frames the replica made are bitwise the direct call's. The served MP4 is judged by how
    far its decoded frames are from those frames, against our own encoding of them: x264 (through
    PyAV) now and then encodes the same frames to slightly different bytes, so two encodings are
    not compared with each other, only each with the frames (its codec loss)."""
    direct = engine.generate([job["prompt"]], seed=job["seed"], num_steps=job["num_steps"],
                             cfg_scale=job["cfg_scale"], guidance_channels=job["guidance_channels"], progress=False)[0]
    made = torch.load(frames_file(tmp_path / "frames", job["prompt"]), weights_only=True)
    assert torch.equal(made, direct.frames), job["id"]
    served = frames_of((tmp_path / f"{job['id']}.mp4").read_bytes())
    encoded = frames_of(direct.save(tmp_path / f"direct-{job['id']}.mp4").read_bytes())
    assert served.shape == encoded.shape == (4, 64, 64, 3)
    exact = made.numpy().astype(np.int16)
    codec_loss = np.abs(encoded.astype(np.int16) - exact).mean()
    assert np.abs(served.astype(np.int16) - exact).mean() <= codec_loss + 1, job["id"]


def frames_of(mp4: bytes) -> np.ndarray:
    with av.open(io.BytesIO(mp4)) as container:
        return np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)])


def replicas(job: dict) -> set[str]:
    return {stage["replica"] for stage in job["stages"]}


@pytest.mark.slow  # about 2 minutes on 2 cores: Ray's start, 2 replicas loading their engines
def test_ray_app_runs_jobs_on_both_replicas_and_reports_faults(engine, tmp_path):
    report = run_scenario(tmp_path)

    # 4 jobs at once: all completed, on both replicas, each what the direct engine call gives.
    batch = report["batch"]
    assert [job["status"] for job in batch] == ["completed"] * 4
    assert all(len(replicas(job)) == 1 for job in batch)
    assert len(set.union(*map(replicas, batch))) == 2
    for job in batch + report["after"]:
        assert_is_the_direct_call(engine, job, tmp_path)

    # The engine raising in a replica fails that job with its message; a replica whose process
    # dies fails its job saying so; neither is lost.
    failing = report["failing"]
    assert failing["status"] == "failed" and failing["error"]["code"] == "internal_error"
    assert "injected fault" in failing["error"]["message"]
    crashed = report["crashed"]
    assert crashed["status"] == "failed" and crashed["error"]["code"] == "engine_error"
    assert "replica running this batch stopped" in crashed["error"]["message"]

    # A running job cancelled: reported cancelled, and its replica stopped the call (1000 steps)
    # and took work again: the next two jobs ran at once, on both replicas.
    assert report["cancel_status"] == 200
    cancelled = report["cancelled"]
    assert cancelled["status"] == "cancelled" and 0 < cancelled["progress"] < 100
    assert [job["status"] for job in report["after"]] == ["completed"] * 2
    assert len(set.union(*map(replicas, report["after"]))) == 2

    # The same HTTP surface as `stdit-engine serve`: the page, the key, Range, the listing.
    status, page = report["page"]
    assert status == 200 and 'id="request-form"' in page
    assert report["no_key_status"] == 401
    assert report["range"][0] == 206 and report["range"][2] == 100
    assert report["range"][1].startswith("bytes 10-109/")
    listed = {job["id"]: job["status"] for job in report["listing"]["data"]}
    every = batch + report["after"] + [failing, cancelled, crashed]
    assert listed == {job["id"]: job["status"] for job in every}


def test_the_autoscaling_example_is_a_serve_config_of_this_app():
    config = yaml.safe_load(EXAMPLE.read_text())
    ServeDeploySchema.model_validate(config)
    (app,) = config["applications"]
    assert app["import_path"] == "stdit_engine.serving.ray_app:build_app"
    assert isinstance(build_app(app["args"]), Application)  # the args are flags `serve` takes
    (engines,) = app["deployments"]
    assert engines["name"] == EngineReplica.name and engines["max_ongoing_requests"] == 1
    assert engines["autoscaling_config"]["max_replicas"] == app["args"]["replicas"]
