"""`VideoFolder`: where the service keeps its MP4s, under server-made names, written atomically.

A video is saved as `<job id>.mp4` by `Video.save`, which writes it under a temporary name and
renames it only when whole (files.atomic_path), so a reader (or a crash, or SIGTERM) never sees half
a file; partial files a killed process left are removed when the folder is opened. Job ids are made
by the server (jobs.new_job_id): no client text ever reaches a path.
"""
from __future__ import annotations

import os
from pathlib import Path

from ..engine.video import Video
from ..files import remove_partials
from .jobs import is_job_id


class VideoFolder:
    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        remove_partials(self.path, ".mp4")

    def write(self, job_id: str, video: Video) -> str:
        """Saves `video` as the job's file; returns the file's name in this folder."""
        if not is_job_id(job_id):  # a guard on the invariant, not a client check
            raise ValueError(f"not a server-made job id: {job_id!r}")
        name = f"{job_id}.mp4"
        video.save(self.path / name)
        return name

    def file(self, name: str) -> Path:
        return self.path / name

    def remove(self, name: str) -> None:
        (self.path / name).unlink(missing_ok=True)

    def job_videos(self) -> list[tuple[str, str]]:
        """(job id, file name) of each video in the folder under a server-made name."""
        return [(path.stem, path.name) for path in self.path.glob("*.mp4") if is_job_id(path.stem)]
