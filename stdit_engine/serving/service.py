"""`VideoService`: a job queue in front of one `Engine`, for servers and other Python stacks.

    service = VideoService(engine, max_queue=16, max_batch=4, output_dir="videos")
    job = service.submit({"prompt": "a sea turtle swimming over a coral reef", "num_steps": 50})
    path = service.result(job.id, timeout=None)      # waits; the MP4's path
    service.close()

Scheduling. One worker thread runs the engine (one device does one batch at a time; `workers=N`
runs N batches at once, for an engine that spreads calls over N devices, as the Ray Serve app's
does). Jobs start in submission order: a worker takes the oldest queued job and, with it, up to `max_batch - 1`
later queued jobs that are compatible with it (same `VideoRequest.batch_key()`: steps, cfg scale,
sampler, guidance channels), which then share one guidance batch. A job skipped for being incompatible is
the oldest at the next pick, so none waits longer than one batch for its turn.

What a job's video depends on. Each job has its own seed (the request's, or one drawn for it and
reported in the job), and the batch is run with one generator per job (`seed=[...]`), so a job's
noise never depends on its batch-mates: `engine.generate([prompt], seed=job.seed, num_steps=...,
cfg_scale=..., sampler=..., guidance_channels=...)` with the request's values reproduces it, bitwise for a batch of one
and within the fast path's batch-size tolerance (fp32 1e-5, fp16 1e-3, bf16 1e-2 relative) when
batched.

Records. Every job is written to a SQLite file (`db_path`, default `<output_dir>/jobs.sqlite3`)
when it is submitted, starts and finishes. A new job the file refuses (disk full, database locked
by another connection) is not taken: submit raises StoreUnavailable. A record the file refuses
once a job is taken is kept in memory, served from there and written again with the next record.
Opening a service on a file that a previous process left with queued or running jobs marks those
failed (code "interrupted", saying why), and removes the videos whose job's record says it has none
(one saved just before the process died, one kept for a reader past its retention), so a restart
loses no finished job and leaves neither a job hanging nor a file its job disowns.

Videos go to `output_dir` under server-made names, written atomically (files.py); beyond
`max_videos` (newest kept) or older than `max_age_s`, a video is deleted and its job reports
`expired`: checked when the service opens, when a job completes, every tenth of `max_age_s` (60 s
at most) while idle, and when a video is asked for. A file being read (`hold_result`) is deleted
only once its reader releases it.

Faults. An exception from the engine (CUDA out of memory, NaN latent, a decode or encode error)
fails the jobs of that batch with its message; the worker frees the allocator's cache and runs
the next batch. Any other exception while running a batch fails its unfinished jobs
("internal_error", logged) and the worker goes on: a worker never dies with jobs waiting.
`submit` refuses with `QueueFull` (carrying a retry delay) when `max_queue` jobs already wait,
and with `ServiceStopped` after `close()`.

Cancellation. `cancel(id)` cancels a queued job at once; a running job is reported cancelled at
once and its batch's engine call is stopped through its CancelToken when every job of the batch
is cancelled (within the engine's cancellation bound), otherwise its video is discarded.
`close()` stops taking jobs, cancels the queued and running ones (status "cancelled", saying so)
and waits for the workers: no partial file is left, finished videos and records stay.
"""
from __future__ import annotations

import logging
import math
import os
import sqlite3
import threading
import time
from collections import Counter, deque
from dataclasses import asdict, replace
from pathlib import Path

import torch

from ..engine.cancel import CancelToken
from ..engine.seeds import new_seed
from ..errors import (Cancelled, ConfigError, EngineError, JobNotReady, QueueFull, SamplingError, ServiceStopped,
                      StoreUnavailable, UnknownJob)
from .defaults import DEFAULT_MAX_BATCH, DEFAULT_MAX_QUEUE, DEFAULT_MAX_VIDEOS
from .files import VideoFolder
from .jobs import CANCELLED, COMPLETED, FAILED, IN_PROGRESS, QUEUED, Job, new_job_id
from .metrics import ServiceMetrics
from .schema import VideoRequest, parse_request
from .store import JobStore

log = logging.getLogger(__name__)

# Until a batch has been timed, the delay a refused client is told to wait.
_FIRST_RETRY_AFTER_S = 10
# An idle worker looks for videos past `max_age_s` this often, as a fraction of it, within these
# bounds in seconds (the lower one keeps a tiny max_age_s from spinning the worker).
_RETENTION_SWEEP_FRACTION, _RETENTION_SWEEP_BOUNDS_S = 0.1, (0.05, 60.0)


class VideoService:
    def __init__(self, engine, max_queue: int = DEFAULT_MAX_QUEUE, max_batch: int = DEFAULT_MAX_BATCH, *,
                 output_dir: str | os.PathLike = "videos", db_path: str | os.PathLike | None = None,
                 max_videos: int = DEFAULT_MAX_VIDEOS, max_age_s: float | None = None, workers: int = 1):
        check_service_limits(max_queue, max_batch, max_videos, max_age_s, workers)
        self.engine = engine
        self.max_queue, self.max_batch = max_queue, max_batch
        self.max_videos, self.max_age_s = max_videos, max_age_s
        self.folder = VideoFolder(output_dir)
        db_path = Path(db_path) if db_path is not None else self.folder.path / "jobs.sqlite3"
        try:
            self.store = JobStore(db_path)
            self.interrupted_on_open = self.store.fail_unfinished()
        except sqlite3.Error as err:
            raise StoreUnavailable(f"the job store {db_path} cannot be written ({err}): is another process "
                                   "using it?") from err
        self.store.serve_quickly()
        self._remove_stray_videos()
        self.metrics = ServiceMetrics()
        self._changed = threading.Condition()  # guards everything below; notified on every job change
        self._queue: deque[Job] = deque()
        self._live: dict[str, Job] = {}  # queued and running jobs, by id
        self._unrecorded: dict[str, Job] = {}  # jobs whose latest state the store refused, by id
        self._running: list[tuple[list[Job], CancelToken]] = []  # the batches being generated
        # Video files being read (hold_result), by name, and those of them whose job retention has
        # expired. Under their own lock, taken after `_changed` where both are: a release (an HTTP
        # response ending, on the event loop) never waits for a store write.
        self._holds_lock = threading.Lock()
        self._held: Counter[str] = Counter()
        self._removal_deferred: set[str] = set()
        self._accepting = True
        self._batch_seconds: float | None = None  # a moving average, for Retry-After
        with self._changed:
            self._apply_retention()  # a smaller max_videos or max_age_s than the last process had
        self._workers = [threading.Thread(target=self._work, name=f"stdit-video-worker-{i}", daemon=True)
                         for i in range(workers)]
        for worker in self._workers:
            worker.start()

    # ------------------------------------------------------------------ the API

    def submit(self, request: VideoRequest | dict) -> Job:
        """Queues one video; raises InvalidRequest (naming the field) for a bad request,
        QueueFull when `max_queue` jobs wait, StoreUnavailable when the job store refuses to record
        it, ServiceStopped after close()."""
        request = parse_request(request)
        seed = request.seed if request.seed is not None else new_seed()
        job = Job(id=new_job_id(), request=request, seed=seed, created_at=time.time())
        with self._changed:
            if not self._accepting:
                raise ServiceStopped("the service is shutting down and takes no new jobs")
            if len(self._queue) >= self.max_queue:
                raise QueueFull(f"{len(self._queue)} jobs are already waiting (the limit); retry later",
                                retry_after=self._retry_after())
            try:
                self.store.put(job)
            except (sqlite3.Error, OSError) as err:  # locked, disk full: not a fault of the request
                raise StoreUnavailable(f"the job store refused the new job ({err}); nothing was queued: "
                                       "retry later") from err
            self._queue.append(job)
            self._live[job.id] = job
            self._changed.notify_all()
            return replace(job)

    def get(self, job_id: str) -> Job:
        with self._changed:
            held = self._live.get(job_id) or self._unrecorded.get(job_id)
            if held is not None:
                return replace(held)
        job = self.store.get(job_id)
        if job is None:
            raise UnknownJob(f"no job {job_id!r}")
        return job

    def list(self, limit: int = 20, after: str | None = None) -> list[Job]:
        """Up to `limit` jobs, newest first; `after`: a job id, to page on to older ones (UnknownJob
        if there is no such job: an empty page would read as the end of the list)."""
        if after is not None and self.store.get(after) is None:
            raise UnknownJob(f"no job {after!r} to list the jobs after")
        jobs = self.store.newest(limit, after)
        with self._changed:
            return [replace(self._live.get(job.id) or self._unrecorded.get(job.id) or job) for job in jobs]

    def cancel(self, job_id: str) -> Job:
        """Cancels a queued or running job; a finished job is returned as it is."""
        with self._changed:
            job = self._live.get(job_id)
            if job is None:
                return self.get(job_id)
            if job.status == QUEUED:
                self._queue.remove(job)
            self._finish(job, CANCELLED, error=("cancelled", "cancelled by the client"))
            for batch, token in self._running:
                if job in batch and all(other.status == CANCELLED for other in batch):
                    token.cancel()
            return replace(job)

    def result(self, job_id: str, timeout: float | None = 0) -> Path:
        """The path of the job's MP4. Waits up to `timeout` seconds (None: as long as it takes)
        for the job to finish; raises JobNotReady when it has no video (then), UnknownJob for an
        unknown id."""
        job = self.wait(job_id, timeout)
        if job.file is not None and self._past_max_age(job):  # not left to the next sweep
            with self._changed:
                self._apply_retention()
            job = self.get(job_id)
        if job.status != COMPLETED:
            why = f": {job.error['message']}" if job.error else ""
            raise JobNotReady(f"job {job_id} has no video: it is {job.status}{why}")
        if job.file is None:
            raise JobNotReady(f"job {job_id}'s video was removed under the retention limit; submit it again")
        path = self.folder.file(job.file)
        if not path.is_file():  # removed from the folder by something else than the service
            raise JobNotReady(f"job {job_id}'s video is no longer on the server; submit it again")
        return path

    def hold_result(self, job_id: str) -> Path:
        """result(job_id) of a finished job, its file kept on disk (retention may still expire the
        job) until release_result(path): for a reader that opens the file later, as an HTTP
        response does once its route has returned."""
        with self._changed:  # no retention pass between the check and the hold
            path = self.result(job_id)
            with self._holds_lock:
                self._held[path.name] += 1
            return path

    def release_result(self, path: Path) -> None:
        """Ends one hold_result; the file goes if retention removed its job meanwhile. A file still
        held when the process ends is removed when a service next opens the folder."""
        with self._holds_lock:
            if not self._held[path.name]:
                raise ValueError(f"{path.name} is not held: release_result follows hold_result, once")
            self._held[path.name] -= 1
            if not self._held[path.name]:
                del self._held[path.name]
                if path.name in self._removal_deferred:
                    self._removal_deferred.discard(path.name)
                    self.folder.remove(path.name)

    def wait(self, job_id: str, timeout: float | None = None) -> Job:
        """The job once finished, or as it is after `timeout` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._changed:
            while job_id in self._live:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    break
                self._changed.wait(remaining)
        return self.get(job_id)

    def queue_depth(self) -> int:
        with self._changed:
            return len(self._queue)

    def render_metrics(self) -> str:
        gpu = {}
        if self.engine.device.type == "cuda":
            gpu = {"allocated": torch.cuda.memory_allocated(self.engine.device),
                   "reserved": torch.cuda.memory_reserved(self.engine.device),
                   "peak_allocated": torch.cuda.max_memory_allocated(self.engine.device)}
        counts = self.store.counts()
        return self.metrics.render(self.queue_depth(), {s: counts.get(s, 0) for s in
                                                        (QUEUED, IN_PROGRESS, COMPLETED, FAILED, CANCELLED)}, gpu)

    def close(self, timeout: float | None = None) -> None:
        """Stops taking jobs, cancels the queued and running ones, waits for the workers to end."""
        with self._changed:
            self._accepting = False
            for job in list(self._live.values()):
                self._finish(job, CANCELLED, error=("shutdown", "the server shut down before the job finished; "
                                                    "submit it again"))
            self._queue.clear()
            for _batch, token in self._running:
                token.cancel()
            self._changed.notify_all()
        deadline = None if timeout is None else time.monotonic() + timeout
        for worker in self._workers:  # the job records stay readable (get, list, result)
            worker.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        with self._changed:
            self._record()  # what the store refused before, a last time

    def __enter__(self) -> "VideoService":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ the worker

    def _work(self) -> None:
        while True:
            with self._changed:
                while self._accepting and not self._queue:
                    if not self._changed.wait(self._sweep_interval()):
                        self._record()
                        self._apply_retention()
                if not self._accepting:
                    return
                batch = self._take_batch()
                running = (batch, CancelToken())
                self._running.append(running)
                now = time.time()
                for job in batch:
                    job.status, job.started_at, job.batch_size = IN_PROGRESS, now, len(batch)
                    self._record(job)
                self._changed.notify_all()
            started = time.monotonic()
            try:
                self._run(*running)
            except BaseException as err:  # outside the engine call (the disk, the store; a replica's
                self._fail(batch, err, code="internal_error")  # asyncio.CancelledError): fail, go on
                if isinstance(err, (SystemExit, KeyboardInterrupt)):
                    raise
            finally:
                with self._changed:
                    self._running.remove(running)
                    self._changed.notify_all()
            self._time_batch(time.monotonic() - started)

    def _take_batch(self) -> list[Job]:
        head = self._queue.popleft()
        batch, key = [head], head.request.batch_key()
        for job in list(self._queue):
            if len(batch) == self.max_batch:
                break
            if job.request.batch_key() == key:
                self._queue.remove(job)
                batch.append(job)
        return batch

    def _run(self, batch: list[Job], token: CancelToken) -> None:
        request, stats = batch[0].request, []
        last_step = [time.monotonic()]

        def on_progress(step: int, total: int) -> None:
            now = time.monotonic()
            self.metrics.observe_step(now - last_step[0])
            last_step[0] = now
            with self._changed:
                for job in batch:
                    if job.status == IN_PROGRESS:
                        job.progress = min(99, 100 * step // total)  # 100 once the video is saved

        try:
            videos = self.engine.generate([job.request.prompt for job in batch], seed=[job.seed for job in batch],
                                          num_steps=request.num_steps, cfg_scale=request.cfg_scale,
                                          sampler=request.sampler, guidance_channels=request.guidance_channels,
                                          batch_size=len(batch),
                                          progress=on_progress, cancel=token, stats=stats)
        except Cancelled as err:
            # The service cancels a call once every job of its batch is cancelled; a call stopped by
            # anything else (a replica's own cancellation) fails the jobs still running.
            self._fail(batch, err, code="interrupted")
            return
        except Exception as err:  # noqa: BLE001 - any engine failure fails its jobs, never the server
            self._fail(batch, err)
            return
        stages = [asdict(stage) for stage in stats]
        for job, video in zip(batch, videos):
            try:
                name = self.folder.write(job.id, video) if job.status == IN_PROGRESS else None
            except Exception as err:  # noqa: BLE001 - an encode failure fails this job only
                self._fail([job], err, code="encode_error")
                continue
            with self._changed:
                if job.status != IN_PROGRESS:  # cancelled while its video was being written
                    if name is not None:
                        self.folder.remove(name)
                    continue
                job.file, job.stages, job.progress = name, stages, 100
                self._finish(job, COMPLETED)
                self._apply_retention()  # before the lock lets waiters see the job completed
            self.metrics.observe_request(job.finished_at - job.created_at)

    def _fail(self, jobs: list[Job], err: Exception, code: str | None = None) -> None:
        if isinstance(err, torch.OutOfMemoryError):
            code = "out_of_memory"
            torch.cuda.empty_cache()  # the failed call's blocks go back before the next batch
        elif code is None:
            code = ("sampling_error" if isinstance(err, SamplingError)
                    else "engine_error" if isinstance(err, EngineError) else "internal_error")
        if code == "internal_error":
            log.error("a batch of %d job(s) failed", len(jobs), exc_info=err)
        with self._changed:
            for job in jobs:
                if job.status == IN_PROGRESS:
                    self._finish(job, FAILED, error=(code, f"{type(err).__name__}: {err}"))

    def _finish(self, job: Job, status: str, error: tuple[str, str] | None = None) -> None:
        """Called holding the lock."""
        job.status, job.finished_at = status, time.time()
        if error is not None:
            job.error = {"code": error[0], "message": error[1]}
        self._live.pop(job.id, None)
        self._record(job)
        self._changed.notify_all()

    def _record(self, job: Job | None = None) -> None:
        """Writes the job's record, and those the store refused before (job None: only those).
        Called holding the lock. A refused record stays in `_unrecorded`, which readers see first,
        so no one reads a state the job has left, and no worker stops for the store; it is written
        again with the next record, on the idle worker's sweep and at close()."""
        if job is not None:
            self._unrecorded[job.id] = job
        for pending in list(self._unrecorded.values()):
            try:
                self.store.put(pending)
            except Exception:  # noqa: BLE001 - sqlite3.OperationalError and the like
                # The rest would most likely wait and fail as this one did, each holding the lock.
                log.exception("could not write job %s's record; kept in memory and written again", pending.id)
                return
            del self._unrecorded[pending.id]

    def _time_batch(self, seconds: float) -> None:
        with self._changed:
            previous = self._batch_seconds
            self._batch_seconds = seconds if previous is None else 0.8 * previous + 0.2 * seconds

    def _retry_after(self) -> int:
        """Seconds until a queue slot is likely free: about one batch. Called holding the lock."""
        if self._batch_seconds is None:
            return _FIRST_RETRY_AFTER_S
        return max(1, math.ceil(self._batch_seconds))

    def _sweep_interval(self) -> float | None:
        """How long an idle worker waits before it writes refused records again and looks for
        videos past `max_age_s`; None: until woken (completions run retention themselves)."""
        low, high = _RETENTION_SWEEP_BOUNDS_S
        if self.max_age_s is None:
            return high if self._unrecorded else None
        return min(max(self.max_age_s * _RETENTION_SWEEP_FRACTION, low), high)

    def _past_max_age(self, job: Job) -> bool:
        return self.max_age_s is not None and time.time() - job.finished_at > self.max_age_s

    def _remove_stray_videos(self) -> None:
        """Removes the videos whose job's record says it has none: saved by a process that died
        before recording the job completed (the job is failed "interrupted"), or kept for a reader
        past the job's retention when the process ended. Files of jobs this store does not know
        (another store's, with --db changed) are left alone."""
        on_record = self.store.file_names()
        for job_id, name in self.folder.job_videos():
            if name not in on_record and self.store.get(job_id) is not None:
                self.folder.remove(name)

    def _jobs_with_files(self) -> list[Job]:
        """The jobs whose video is on disk, newest first: as recorded, and as the states the store
        refused to record say (a video counts against the limits whether or not its record is written)."""
        jobs = {job.id: job for job in self.store.with_files()}
        for job in self._unrecorded.values():
            if job.file is not None:
                jobs[job.id] = job
            else:
                jobs.pop(job.id, None)
        return sorted(jobs.values(), key=lambda job: job.finished_at, reverse=True)

    def _apply_retention(self) -> None:
        """Deletes the videos beyond `max_videos` (newest kept) and those older than `max_age_s`.
        Called holding the lock. A failure is logged and left to the next time it runs."""
        try:
            for rank, job in enumerate(self._jobs_with_files()):
                if rank >= self.max_videos or self._past_max_age(job):
                    with self._holds_lock:
                        if job.file in self._held:
                            self._removal_deferred.add(job.file)  # removed by the last release_result
                        else:
                            self.folder.remove(job.file)
                    job.file, job.expired = None, True
                    self._record(job)
        except Exception:  # noqa: BLE001 - the disk or the store: the videos stay until the next pass
            log.exception("could not apply the retention limits; they are applied again later")


def check_service_limits(max_queue: int, max_batch: int, max_videos: int, max_age_s: float | None,
                         workers: int) -> None:
    """ConfigError unless every limit is usable: the server command checks them before it loads."""
    if min(max_queue, max_batch, max_videos, workers) < 1:
        raise ConfigError(f"max_queue, max_batch, max_videos and workers must be >= 1, got {max_queue}, "
                          f"{max_batch}, {max_videos}, {workers}")
    if max_age_s is not None and not (math.isfinite(max_age_s) and max_age_s > 0):
        raise ConfigError(f"max_age_s must be a positive number of seconds (or None: no age limit), got {max_age_s!r}")
