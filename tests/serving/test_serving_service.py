"""VideoService without HTTP: batching of compatible jobs only, the SQLite job store across a
restart, retention, and the Python API's refusals."""
import threading
import time
from types import SimpleNamespace

import pytest
import torch

from stdit_engine.errors import (Cancelled, ConfigError, InvalidRequest, JobNotReady, QueueFull, ServiceStopped,
                                 StoreUnavailable, UnknownJob)
from stdit_engine.serving import VideoService
from stdit_engine.serving.jobs import Job, new_job_id
from stdit_engine.serving.schema import VideoRequest
from stdit_engine.serving.store import JobStore


STEPS = 2
DEADLINE_S = 120


class Paused:
    """The engine, holding its calls until `release()` (so that jobs submitted meanwhile queue up),
    keeping the prompts of each call and the frames it returned per (prompt, seed)."""

    def __init__(self, engine):
        self.engine, self.device, self.gate = engine, engine.device, threading.Event()
        self.calls, self.frames = [], {}

    def release(self):
        self.gate.set()

    def generate(self, prompts, **kwargs):
        assert self.gate.wait(DEADLINE_S)
        self.calls.append(len(prompts))
        videos = self.engine.generate(prompts, **kwargs)
        self.frames.update({key: video.frames for key, video in zip(zip(prompts, kwargs["seed"]), videos)})
        return videos


def test_compatible_jobs_share_a_batch_and_match_their_direct_calls(engine, tmp_path):
    paused = Paused(engine)
    with VideoService(paused, max_queue=8, max_batch=2, output_dir=tmp_path) as service:
        first = service.submit({"prompt": "first", "seed": 1, "num_steps": STEPS})
        wait_for(lambda: service.get(first.id).status == "in_progress")
        requests = [{"prompt": "a", "seed": 2, "num_steps": STEPS},
                    {"prompt": "other steps", "seed": 3, "num_steps": STEPS + 1},  # not compatible
                    {"prompt": "b", "seed": 4, "num_steps": STEPS},
                    {"prompt": "c", "seed": 5, "num_steps": STEPS}]
        jobs = [service.submit(request) for request in requests]
        paused.release()
        done = [service.wait(job.id, DEADLINE_S) for job in [first, *jobs]]
    assert [job.status for job in done] == ["completed"] * 5
    # FIFO heads, each taking the next compatible jobs up to max_batch: [first] [a, b] [other] [c].
    assert paused.calls == [1, 2, 1, 1]
    assert [job.batch_size for job in done] == [1, 2, 1, 2, 1]
    for job in done:
        served = paused.frames[job.request.prompt, job.seed]
        direct = engine.generate([job.request.prompt], seed=job.seed, num_steps=job.request.num_steps,
                                 progress=False)[0].frames
        if job.batch_size == 1:
            assert torch.equal(served, direct)
        else:  # fp32 kernels may round differently at another batch size: a pixel level at most
            assert (served.int() - direct.int()).abs().max() <= 1


def test_a_restart_keeps_finished_jobs_and_fails_unfinished_ones_with_the_reason(engine, tmp_path):
    db = tmp_path / "jobs.sqlite3"
    with VideoService(engine, output_dir=tmp_path / "videos", db_path=db) as service:
        finished = service.wait(service.submit({"prompt": "kept", "num_steps": STEPS}).id, DEADLINE_S)
        path = service.result(finished.id)
    # A process killed mid-job leaves its records queued and in progress.
    store = JobStore(db)
    stranded = {status: Job(id=new_job_id(), request=VideoRequest(prompt=status), seed=1, created_at=time.time(),
                            status=status) for status in ("queued", "in_progress")}
    for job in stranded.values():
        store.put(job)
    store.close()
    # ... and perhaps the video of the running one, saved just before the process died.
    orphan = tmp_path / "videos" / f"{stranded['in_progress'].id}.mp4"
    orphan.write_bytes(path.read_bytes())

    with VideoService(engine, output_dir=tmp_path / "videos", db_path=db) as service:
        assert service.interrupted_on_open == 2
        again = service.get(finished.id)
        assert again.status == "completed" and again.seed == finished.seed and service.result(again.id) == path
        assert path.is_file()
        for status, job in stranded.items():
            failed = service.get(job.id)
            assert failed.status == "failed" and failed.error["code"] == "interrupted"
            assert "submit it again" in failed.error["message"]
        assert {job.id for job in service.list(10)} == {finished.id, *(j.id for j in stranded.values())}
        assert not orphan.exists()


def test_retention_keeps_the_newest_videos(engine, tmp_path):
    with VideoService(engine, output_dir=tmp_path, max_videos=2) as service:
        jobs = [service.wait(service.submit({"prompt": f"p{i}", "num_steps": STEPS}).id, DEADLINE_S)
                for i in range(3)]
        oldest = service.get(jobs[0].id)
        assert oldest.status == "completed" and oldest.expired and oldest.file is None
        with pytest.raises(JobNotReady, match="retention"):
            service.result(oldest.id)
        kept = sorted(p.name for p in tmp_path.glob("*.mp4"))
        assert kept == sorted(f"{job.id}.mp4" for job in jobs[1:])


def test_retention_by_age_and_listing_pages(engine, tmp_path):
    # Ages wide enough that a stalled test thread still finds the new video kept.
    with VideoService(engine, output_dir=tmp_path, max_age_s=2.0) as service:
        old = service.wait(service.submit({"prompt": "old", "num_steps": STEPS}).id, DEADLINE_S)
        time.sleep(2.1)
        new = service.wait(service.submit({"prompt": "new", "num_steps": STEPS}).id, DEADLINE_S)
        assert service.get(old.id).expired and not (tmp_path / f"{old.id}.mp4").exists()
        assert service.result(new.id).is_file()
        assert [job.id for job in service.list(1)] == [new.id]
        assert [job.id for job in service.list(1, after=new.id)] == [old.id]
        assert service.list(1, after=old.id) == []
        with pytest.raises(UnknownJob):  # not an empty page, which would read as the end of the list
            service.list(1, after=new_job_id())


def test_an_idle_service_expires_old_videos_and_a_reopened_one_applies_its_new_limit(engine, tmp_path):
    with VideoService(engine, output_dir=tmp_path, max_age_s=1.5) as service:
        job = service.wait(service.submit({"prompt": "ages", "num_steps": STEPS}).id, DEADLINE_S)
        assert job.file is not None
        wait_for(lambda: service.get(job.id).expired)  # no later job completes to trigger it
        assert not (tmp_path / f"{job.id}.mp4").exists()
        with pytest.raises(JobNotReady, match="retention"):
            service.result(job.id)
    with VideoService(engine, output_dir=tmp_path, db_path=tmp_path / "kept.sqlite3") as service:
        jobs = [service.wait(service.submit({"prompt": f"p{i}", "num_steps": STEPS}).id, DEADLINE_S)
                for i in range(2)]
    with VideoService(engine, output_dir=tmp_path, db_path=tmp_path / "kept.sqlite3", max_videos=1) as service:
        assert service.get(jobs[0].id).expired and not service.get(jobs[1].id).expired
        assert sorted(p.name for p in tmp_path.glob("*.mp4")) == [f"{jobs[1].id}.mp4"]


class FailingOnce:
    """Wraps `method` of an object: its first call whose arguments `when` accepts raises `error`."""

    def __init__(self, target, method: str, error: Exception, when=lambda *args: True):
        self.real, self.error, self.when, self.failed = getattr(target, method), error, when, False
        setattr(target, method, self)

    def __call__(self, *args, **kwargs):
        if not self.failed and self.when(*args):
            self.failed = True
            raise self.error
        return self.real(*args, **kwargs)


def test_a_store_that_refuses_a_record_loses_no_job_and_stops_no_worker(engine, tmp_path):
    import sqlite3
    refused = sqlite3.OperationalError("disk I/O error (injected)")
    with VideoService(engine, output_dir=tmp_path, max_batch=1) as service:
        refusal = FailingOnce(service.store, "put", refused, when=lambda job: job.status == "completed")
        first = service.submit({"prompt": "its record is refused", "num_steps": STEPS})
        assert service.wait(first.id, DEADLINE_S).status == "completed"  # nothing has written it since
        assert refusal.failed and service.store.get(first.id).status == "in_progress"  # the stale record
        assert [job.status for job in service.list(1)] == ["completed"] and service.result(first.id).is_file()
        second = service.submit({"prompt": "next", "num_steps": STEPS})
        assert service.wait(second.id, DEADLINE_S).status == "completed"
        assert all(worker.is_alive() for worker in service._workers)
        assert service.store.get(first.id).status == "completed" and not service._unrecorded  # written with the next
    # A refused record is written at close() too: a restart finds the job completed, not interrupted.
    service = VideoService(engine, output_dir=tmp_path, db_path=tmp_path / "closing.sqlite3")
    FailingOnce(service.store, "put", refused, when=lambda job: job.status == "completed")
    last = service.submit({"prompt": "refused, then closed", "num_steps": STEPS})
    assert service.wait(last.id, DEADLINE_S).status == "completed"
    service.close(DEADLINE_S)
    with VideoService(engine, output_dir=tmp_path, db_path=tmp_path / "closing.sqlite3") as reopened:
        assert reopened.interrupted_on_open == 0 and reopened.result(last.id).is_file()


def test_retention_counts_the_videos_whose_records_the_store_refused(engine, tmp_path):
    import sqlite3
    with VideoService(engine, output_dir=tmp_path, max_videos=1) as service:
        real_put = service.store.put

        def refuse_completions(job):
            if job.status == "completed":
                raise sqlite3.OperationalError("disk full (injected)")
            real_put(job)

        service.store.put = refuse_completions
        first, second = (service.wait(service.submit({"prompt": p, "num_steps": STEPS}).id, DEADLINE_S)
                         for p in ("first", "second"))
        assert service.get(first.id).expired and not service.get(second.id).expired
        assert sorted(p.name for p in tmp_path.glob("*.mp4")) == [f"{second.id}.mp4"]
        service.store.put = real_put  # close() writes what was refused


def test_a_store_locked_by_another_process_refuses_new_jobs_and_keeps_the_taken_ones(engine, tmp_path):
    import sqlite3
    with VideoService(engine, output_dir=tmp_path, max_batch=1) as service:
        taken = service.submit({"prompt": "taken before the lock", "num_steps": STEPS})
        with service._changed:  # held, so the job is still queued when the lock is taken
            other = sqlite3.connect(str(tmp_path / "jobs.sqlite3"), isolation_level=None)
            other.execute("BEGIN EXCLUSIVE")  # as a backup or an admin's open transaction would
        try:
            with pytest.raises(StoreUnavailable, match="nothing was queued"):
                service.submit({"prompt": "refused", "num_steps": STEPS})
            assert service.wait(taken.id, DEADLINE_S).status == "completed"  # its records are kept in memory
            assert service.result(taken.id).is_file() and service.queue_depth() == 0
        finally:
            other.execute("ROLLBACK")
            other.close()
    store = JobStore(tmp_path / "jobs.sqlite3")
    assert store.get(taken.id).status == "completed"  # written at close()
    store.close()


def test_a_video_being_read_stays_until_its_reader_is_done(engine, tmp_path):
    with VideoService(engine, output_dir=tmp_path, max_videos=1) as service:
        first = service.wait(service.submit({"prompt": "being read", "num_steps": STEPS}).id, DEADLINE_S)
        path = service.hold_result(first.id)  # as a download that has not opened the file yet
        second = service.wait(service.submit({"prompt": "newer", "num_steps": STEPS}).id, DEADLINE_S)
        assert service.get(first.id).expired and service.result(second.id).is_file()
        with pytest.raises(JobNotReady, match="retention"):
            service.result(first.id)
        assert path.is_file()  # the reader still gets the whole file
        service.release_result(path)
        assert not path.exists()
        kept = service.hold_result(second.id)
        service.release_result(kept)  # released before any retention pass: the file stays
        assert kept.is_file()
        with pytest.raises(ValueError, match="not held"):  # a second release would unbalance the count
            service.release_result(kept)
        # A reader still holding its file when the process ends (killed mid-download)...
        still_read = service.hold_result(second.id)
        service.wait(service.submit({"prompt": "newest", "num_steps": STEPS}).id, DEADLINE_S)
    assert service.get(second.id).expired and still_read.is_file()
    stranger = tmp_path / f"{new_job_id()}.mp4"  # a job of another store (--db changed): not this one's
    stranger.write_bytes(b"")
    with VideoService(engine, output_dir=tmp_path, max_videos=1):
        assert not still_read.exists() and stranger.exists()  # ...leaves it to the next open


def test_a_store_refusing_writes_is_tried_once_per_record_not_once_per_pending_record(engine, tmp_path):
    """Every write holds the service's lock for up to the store's busy timeout: a backlog of refused
    records must not multiply that wait."""
    import sqlite3
    with VideoService(engine, output_dir=tmp_path) as service:
        jobs = [service.wait(service.submit({"prompt": p, "num_steps": STEPS}).id, DEADLINE_S) for p in "abc"]
        tries = []

        def refuse(job):
            tries.append(job.id)
            raise sqlite3.OperationalError("database is locked (injected)")

        with service._changed:
            real_put, service.store.put = service.store.put, refuse
            service._unrecorded.update({job.id: job for job in jobs})
            service._record()
            assert len(tries) == 1 and len(service._unrecorded) == 3
            service.store.put = real_put
            service._record()
            assert not service._unrecorded


def test_a_store_locked_while_the_service_opens_is_named(engine, tmp_path, monkeypatch):
    import sqlite3

    from stdit_engine.serving import store as store_module
    monkeypatch.setattr(store_module, "OPENING_BUSY_TIMEOUT_S", 0.1)
    stranded = JobStore(tmp_path / "jobs.sqlite3")
    stranded.put(Job(id=new_job_id(), request=VideoRequest(prompt="queued"), seed=1, created_at=time.time()))
    stranded.close()
    other = sqlite3.connect(str(tmp_path / "jobs.sqlite3"), isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(StoreUnavailable, match="is another process using it"):
            VideoService(engine, output_dir=tmp_path)
    finally:
        other.execute("ROLLBACK")
        other.close()


def test_records_of_earlier_limits_still_load(engine, tmp_path):
    store = JobStore(tmp_path / "jobs.sqlite3")
    old = VideoRequest.model_construct(prompt="<b></b>", seed=2**60, num_steps=STEPS, cfg_scale=-3.0)
    store.put(Job(id=new_job_id(), request=old, seed=2**60, created_at=time.time()))  # queued when it stopped
    with VideoService(engine, output_dir=tmp_path) as service:
        [job] = service.list(10)
        assert service.interrupted_on_open == 1 and job.status == "failed" and job.seed == 2**60


def test_an_engine_call_stopped_by_something_else_than_the_service_fails_its_jobs(engine, tmp_path):
    engine = SimpleNamespace(generate=engine.generate, device=engine.device)  # the shared engine stays as it is
    FailingOnce(engine, "generate", Cancelled("the replica was cancelled (injected)"))
    with VideoService(engine, output_dir=tmp_path) as service:
        stopped = service.wait(service.submit({"prompt": "stopped", "num_steps": STEPS}).id, DEADLINE_S)
        assert stopped.status == "failed" and stopped.error["code"] == "interrupted"
        assert service.wait(service.submit({"prompt": "next", "num_steps": STEPS}).id, DEADLINE_S).status == "completed"


def test_a_fault_outside_the_engine_call_fails_only_unfinished_jobs_and_the_worker_goes_on(engine, tmp_path):
    with VideoService(engine, output_dir=tmp_path, max_batch=2) as service:
        FailingOnce(service.metrics, "observe_request", RuntimeError("metrics broke (injected)"))
        with service._changed:  # both queued before the worker looks: one batch
            first, second = (service.submit({"prompt": p, "num_steps": STEPS}) for p in ("first", "second"))
        first, second = (service.wait(job.id, DEADLINE_S) for job in (first, second))
        assert first.status == "completed" and first.batch_size == 2  # finished before the fault: it stays so
        assert second.status == "failed" and second.error["code"] == "internal_error"
        assert "metrics broke" in second.error["message"]
        third = service.wait(service.submit({"prompt": "third", "num_steps": STEPS}).id, DEADLINE_S)
        assert third.status == "completed" and all(worker.is_alive() for worker in service._workers)


def test_python_api_refusals(engine, tmp_path):
    paused = Paused(engine)
    service = VideoService(paused, max_queue=1, output_dir=tmp_path)
    with pytest.raises(ConfigError, match="max_batch"):
        VideoService(engine, max_batch=0, output_dir=tmp_path)
    for age in (0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ConfigError, match="max_age_s"):
            VideoService(engine, max_age_s=age, output_dir=tmp_path)
    with pytest.raises(InvalidRequest, match="num_steps") as refused:
        service.submit({"prompt": "a cat", "num_steps": 0})
    assert refused.value.param == "num_steps" and isinstance(refused.value, ConfigError)
    running = service.submit({"prompt": "held", "num_steps": STEPS})
    wait_for(lambda: service.get(running.id).status == "in_progress")
    queued = service.submit({"prompt": "waits", "num_steps": STEPS})
    with pytest.raises(QueueFull) as refused:
        service.submit({"prompt": "one too many", "num_steps": STEPS})
    assert refused.value.retry_after >= 1
    with pytest.raises(JobNotReady, match="queued"):
        service.result(queued.id)
    with pytest.raises(UnknownJob):
        service.get(new_job_id())
    paused.release()
    service.close(DEADLINE_S)
    # close() cancelled what had not finished, saying why, and left no partial file.
    for job in (running, queued):
        closed = service.get(job.id)
        assert closed.status in ("cancelled", "completed")
    assert service.get(queued.id).error["code"] == "shutdown"
    assert not list(tmp_path.glob("*.partial.mp4"))
    with pytest.raises(ServiceStopped):
        service.submit({"prompt": "late", "num_steps": STEPS})


def wait_for(condition, timeout=DEADLINE_S):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)
