"""`JobStore`: job records in SQLite, so that a restart loses no finished job.

One row a job: its JSON form (Job.to_json) plus the columns queried on (status, order, file).
Writes happen at state changes only (submitted, started, finished, expired), not per step.
"""
from __future__ import annotations

import json
import sqlite3
import threading
import time
from pathlib import Path

from .jobs import FAILED, IN_PROGRESS, QUEUED, Job

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT UNIQUE NOT NULL,
    status TEXT NOT NULL,
    finished_at REAL,
    file TEXT,
    record TEXT NOT NULL
)
"""


# How long a write waits for another connection's lock on the file before it is refused: long
# while the service opens (nothing waits on it yet), short once it serves, where every write holds
# the service's lock and so delays every API call. Refused then, a record is kept in memory and
# written later, and a new job is refused with a retry delay (service.py).
OPENING_BUSY_TIMEOUT_S, SERVING_BUSY_TIMEOUT_S = 5.0, 0.25


class JobStore:
    def __init__(self, path: str | Path):
        # One connection shared by the service's threads, serialised by a lock (sqlite3 objects are
        # not safe to use from two threads at once).
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None,
                                   timeout=OPENING_BUSY_TIMEOUT_S)
        self._lock = threading.Lock()
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(_SCHEMA)

    def serve_quickly(self) -> None:
        """From now on a write waits SERVING_BUSY_TIMEOUT_S for another connection's lock."""
        with self._lock:
            self._db.execute(f"PRAGMA busy_timeout = {round(SERVING_BUSY_TIMEOUT_S * 1000)}")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def put(self, job: Job) -> None:
        with self._lock:
            self._db.execute(
                "INSERT INTO jobs (id, status, finished_at, file, record) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT(id) DO UPDATE SET status=excluded.status, finished_at=excluded.finished_at, "
                "file=excluded.file, record=excluded.record",
                (job.id, job.status, job.finished_at, job.file, json.dumps(job.to_json())))

    def get(self, job_id: str) -> Job | None:
        with self._lock:
            row = self._db.execute("SELECT record, file FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return None if row is None else Job.from_json(json.loads(row[0]), row[1])

    def newest(self, limit: int, after: str | None = None) -> list[Job]:
        """Up to `limit` jobs, newest first; `after`: only those submitted before that job."""
        query, args = "SELECT record, file FROM jobs", []
        if after is not None:
            query += " WHERE seq < (SELECT seq FROM jobs WHERE id = ?)"
            args.append(after)
        with self._lock:
            rows = self._db.execute(query + " ORDER BY seq DESC LIMIT ?", (*args, limit)).fetchall()
        return [Job.from_json(json.loads(record), file) for record, file in rows]

    def counts(self) -> dict[str, int]:
        with self._lock:
            return dict(self._db.execute("SELECT status, COUNT(*) FROM jobs GROUP BY status").fetchall())

    def file_names(self) -> set[str]:
        """The names of the video files the records say are on disk."""
        with self._lock:
            return {name for (name,) in self._db.execute("SELECT file FROM jobs WHERE file IS NOT NULL")}

    def with_files(self) -> list[Job]:
        """Jobs whose video is on disk, newest first."""
        with self._lock:
            rows = self._db.execute("SELECT record, file FROM jobs WHERE file IS NOT NULL "
                                    "ORDER BY finished_at DESC, seq DESC").fetchall()
        return [Job.from_json(json.loads(record), file) for record, file in rows]

    def fail_unfinished(self) -> int:
        """Marks the jobs a previous process left queued or running as failed, saying why; their
        count. Called when a service opens the store, before it takes jobs."""
        reasons = {QUEUED: "the server restarted before this job ran; submit it again",
                   IN_PROGRESS: "the server stopped while this job was running; submit it again"}
        with self._lock:
            rows = self._db.execute("SELECT record, file FROM jobs WHERE status IN (?, ?)",
                                    (QUEUED, IN_PROGRESS)).fetchall()
        jobs = [Job.from_json(json.loads(record), file) for record, file in rows]
        for job in jobs:
            job.error = {"code": "interrupted", "message": reasons[job.status]}
            job.status, job.finished_at = FAILED, time.time()
            self.put(job)
        return len(jobs)
