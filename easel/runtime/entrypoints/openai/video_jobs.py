"""Video jobs as /v1/videos shows them: queued, in progress with a percentage, then completed or failed."""

import asyncio
import dataclasses
import time
from pathlib import Path
from typing import Literal

from easel.runtime.entrypoints.openai.messages import Done
from easel.runtime.entrypoints.openai.protocol import APIError, EaselReport, VideoError, VideoList, VideoObject


def seconds_of(num_frames: int, fps: int) -> str:
    return f"{num_frames / fps:g}"


@dataclasses.dataclass
class VideoJob:
    """One video job and, once completed, the MP4 at `path`."""

    id: str
    model: str
    prompt: str
    size: str
    num_frames: int
    fps: int
    path: Path
    created_at: int = dataclasses.field(default_factory=lambda: int(time.time()))
    status: Literal["queued", "in_progress", "completed", "failed"] = "queued"
    progress: int = 0
    completed_at: int | None = None
    error: VideoError | None = None
    easel: EaselReport | None = None  # once completed: what the step cache did, the quality check
    frames_ready: int | None = None  # a block-causal model's: the frames its MP4 holds so far
    deleted: bool = False  # deleted while running: an MP4 it still writes goes too

    def on_progress(self, fraction: float) -> None:
        """The engine's report: started (0), or this fraction of the denoising done."""
        self.status = "in_progress"
        self.progress = min(99, int(100 * fraction))  # 100 only once the MP4 is written

    def on_frames(self, frames: int) -> None:
        """The engine's report: the MP4 at `path` now holds this many frames (a block-causal model's job)."""
        self.frames_ready = frames

    @property
    def has_content(self) -> bool:
        """Whether there is an MP4 to serve: the finished video, or the frames made so far."""
        return self.status == "completed" or (self.status == "in_progress" and bool(self.frames_ready))

    def delete(self) -> None:
        """Removes the MP4, now or, for a job still running, once it ends."""
        self.deleted = True
        self.path.unlink(missing_ok=True)

    def finish(self, outcome: asyncio.Future) -> None:
        """The engine's answer: the written video, or the APIError it failed with."""
        if self.deleted:  # a cancel that came too late to stop it: its MP4 was written after the delete
            self.path.unlink(missing_ok=True)
        error = outcome.exception()
        if error is None:
            done: Done = outcome.result()
            self.status, self.progress = "completed", 100
            self.size, self.num_frames = f"{done.width}x{done.height}", done.num_frames
            if self.frames_ready is not None:
                self.frames_ready = done.num_frames
            self.easel = EaselReport(cache=done.cache, quality=done.quality)
        else:
            error = error if isinstance(error, APIError) else APIError(500, str(error), "server_error")
            self.status, self.error = "failed", VideoError(code=error.code or error.type, message=error.message)
            self.path.unlink(missing_ok=True)  # the frames a block-causal model had made so far
        self.completed_at = int(time.time())

    def to_object(self) -> VideoObject:
        return VideoObject(
            id=self.id,
            status=self.status,
            progress=self.progress,
            created_at=self.created_at,
            completed_at=self.completed_at,
            model=self.model,
            prompt=self.prompt,
            seconds=seconds_of(self.num_frames, self.fps),
            size=self.size,
            error=self.error,
            easel=self.easel,
            frames_ready=self.frames_ready,
        )


class VideoJobs:
    """Every video job not deleted, by id, in the order they were created."""

    def __init__(self):
        self._jobs: dict[str, VideoJob] = {}

    def add(self, job: VideoJob) -> None:
        self._jobs[job.id] = job

    def get(self, video_id: str) -> VideoJob:
        if video_id not in self._jobs:
            raise APIError(404, f"no video {video_id!r}", param="video_id", code="not_found")
        return self._jobs[video_id]

    def remove(self, video_id: str) -> None:
        del self._jobs[video_id]

    def page(self, after: str | None, limit: int, order: Literal["asc", "desc"]) -> VideoList:
        """Up to `limit` jobs following the job `after`, oldest (asc) or newest (desc) first."""
        jobs = list(self._jobs.values())
        if order == "desc":
            jobs.reverse()
        if after is not None:
            ids = [job.id for job in jobs]
            if after not in ids:
                raise APIError(400, f"no video {after!r} to list after", param="after")
            jobs = jobs[ids.index(after) + 1 :]
        data = [job.to_object() for job in jobs[:limit]]
        return VideoList(
            data=data,
            first_id=data[0].id if data else None,
            last_id=data[-1].id if data else None,
            has_more=len(jobs) > limit,
        )
