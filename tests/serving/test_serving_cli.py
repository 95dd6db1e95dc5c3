"""`stdit-engine serve` as a process: the API key from its environment variable, and SIGTERM while
a job runs (the job is cancelled and recorded so, the process ends, no partial file is left)."""
import os
import signal
import socket
import subprocess
import sys

import pytest

from stdit_engine import cli
from stdit_engine.serving.command import API_KEY_VARIABLE
from stdit_engine.serving.store import JobStore


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


DEADLINE_S = 120


def test_serve_process_with_api_key_and_sigterm(tmp_path, http, wait_until):
    def answers() -> bool:
        try:
            return http(port, "GET", "/healthz")[0] == 200
        except OSError:
            return False

    port, videos, log = free_port(), tmp_path / "videos", tmp_path / "serve.log"
    env = {**os.environ, API_KEY_VARIABLE: "key-from-env"}  # PYTHONPATH included: this checkout is imported
    with log.open("w") as log_file:  # a file, not a pipe: the access log never blocks the server
        process = subprocess.Popen(
            [sys.executable, "-m", "stdit_engine", "serve", "--preset", "tiny", "--random-weights", "--device", "cpu",
             "--port", str(port), "--output-dir", str(videos)],
            env=env, stdout=log_file, stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: answers() or process.poll() is not None, "the server to answer")
        assert process.poll() is None, log.read_text()
        body = {"prompt": "a long one", "num_steps": 1000}
        assert http(port, "POST", "/v1/videos", body)[0] == 401
        auth = {"Authorization": "Bearer key-from-env"}
        status, _, job = http(port, "POST", "/v1/videos", body, headers=auth)
        assert status == 202
        wait_until(lambda: http(port, "GET", f"/v1/videos/{job['id']}", headers=auth)[2]["status"]
                   == "in_progress", "the job to start")

        process.send_signal(signal.SIGTERM)
        process.wait(timeout=DEADLINE_S)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    output = log.read_text()
    # uvicorn re-raises the signal once shut down, so the exit says "terminated by SIGTERM".
    assert process.returncode in (0, -signal.SIGTERM), output
    assert "Traceback" not in output, output
    record = JobStore(videos / "jobs.sqlite3").get(job["id"])
    assert record.status == "cancelled" and record.error["code"] == "shutdown"
    assert sorted(p.name for p in videos.iterdir() if not p.name.startswith("jobs.sqlite3")) == []


@pytest.mark.parametrize("flags, message", [
    (["--max-batch", "0"], "max_batch"),
    (["--max-age-hours", "-1"], "max_age_s"),
    (["--replicas", "2"], "needs --ray"),
    (["--port", "70000"], "--port must be from 1 to 65535, got 70000"),
    (["--output-dir", "{tmp}/a-file"], "--output-dir {tmp}/a-file is a file"),
    (["--output-dir", "{tmp}/a-file/videos"], "--output-dir {tmp}/a-file/videos cannot be created"),
    (["--output-dir", "{tmp}/videos", "--db", "{tmp}"], "the --db {tmp} is an existing folder"),
    (["--output-dir", "{tmp}/videos", "--db", "{tmp}/no/jobs.db"], "the --db folder {tmp}/no does not exist"),
    (["--output-dir", "{tmp}/with-folder"], "{tmp}/with-folder/jobs.sqlite3 is a folder where the job store"),
    (["--api-key", ""], "--api-key is empty"),
])
def test_bad_serve_flags_are_refused_before_the_model_loads(no_model_loads, capsys, tmp_path, flags, message):
    (tmp_path / "a-file").write_text("")
    (tmp_path / "with-folder" / "jobs.sqlite3").mkdir(parents=True)
    flags = [flag.format(tmp=tmp_path) for flag in flags]
    assert cli.main(["serve", "--preset", "tiny", "--random-weights", "--device", "cpu", *flags]) == 2
    err = capsys.readouterr().err
    assert message.format(tmp=tmp_path) in err and "Traceback" not in err
