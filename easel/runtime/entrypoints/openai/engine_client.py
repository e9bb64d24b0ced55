"""The front end's side of the worker process: a bounded queue of admitted requests, up to --max-batch-size jobs
at a time in the worker (which batches them a step at a time), a future per request, and a restart when the worker
dies (failing the requests it held, so none hangs, and loading the LoRA adapters it had into the new one).

Every method runs on the event loop's thread, except `_read_results`, which runs in one thread per worker and
hands what it reads to the loop.
"""

import asyncio
import collections
import dataclasses
import enum
import logging
import multiprocessing
import threading
import time
from collections.abc import Callable
from typing import Any

from easel.runtime.entrypoints.openai.messages import (
    CANCELLED_STATUS,
    BatchLimits,
    Cancel,
    Done,
    Failed,
    FramesReady,
    LoadFailed,
    LoRAJob,
    LoRAsDone,
    ModelInfo,
    Preview,
    Progress,
    Ready,
    WorkerJob,
)
from easel.runtime.entrypoints.openai.metrics import ServerMetrics
from easel.runtime.entrypoints.openai.protocol import APIError
from easel.runtime.entrypoints.openai.worker import run_worker

logger = logging.getLogger(__name__)
STOP_TIMEOUT_S = 10  # how long an idle worker gets to exit before it is killed


class WorkerState(enum.Enum):
    """Where the worker is; /health reports the value."""

    STARTING = "starting"
    READY = "ok"
    RESTARTING = "restarting"
    FAILED = "failed"  # the model could not be loaded: the server stops
    STOPPED = "stopped"


@dataclasses.dataclass
class Job:
    """An admitted request: what the worker runs, the future its handler awaits, and who hears of its progress."""

    spec: WorkerJob | LoRAJob
    future: asyncio.Future
    on_progress: Callable[[float], None] | None
    on_preview: Callable[[int, bytes], None] | None = None
    on_frames: Callable[[int], None] | None = None
    admitted_at: float = dataclasses.field(default_factory=time.perf_counter)
    started_at: float | None = None


class _Worker:
    """One worker process and the two pipes to it."""

    def __init__(
        self,
        context,
        model_path: str,
        engine_options: dict[str, Any],
        loras: list[dict[str, Any]],
        limits: BatchLimits,
    ):
        jobs_reader, self.jobs = context.Pipe(duplex=False)
        self.results, results_writer = context.Pipe(duplex=False)
        self.process = context.Process(
            target=run_worker,
            args=(model_path, engine_options, loras, limits, jobs_reader, results_writer),
            name="easel-worker",
            daemon=True,
        )
        self.process.start()
        # Only the worker holds these ends now, so that its death reads as the end of `results`.
        jobs_reader.close()
        results_writer.close()

    def describe_exit(self) -> str:
        code = self.process.exitcode
        return f"was killed by signal {-code}" if code is not None and code < 0 else f"exited with code {code}"


class EngineClient:
    """Admits requests up to a bound, runs up to `limits.max_size` at a time in the worker, and restarts the worker
    if it dies."""

    def __init__(
        self,
        model_path: str,
        engine_options: dict[str, Any],
        max_queued: int,
        metrics: ServerMetrics,
        loras: list[dict[str, Any]] | None = None,
        limits: BatchLimits | None = None,
    ):
        self.model_path, self.engine_options, self.max_queued = model_path, engine_options, max_queued
        self.limits = limits or BatchLimits()
        self.metrics = metrics
        # The LoRA adapters as the worker last reported them (`list_loras()`): what a restarted worker loads again.
        self.loras: list[dict[str, Any]] = loras or []
        self.state = WorkerState.STARTING
        self.info: ModelInfo | None = None
        self.restarts = 0
        self.failure: str | None = None  # why the model could not be loaded
        self.failed = asyncio.Event()  # set when the model cannot be loaded
        self._worker: _Worker | None = None
        self._waiting: collections.deque[Job] = collections.deque()
        self._running: dict[str, Job] = {}  # by job id, in the worker
        self._context = multiprocessing.get_context("spawn")  # a fresh interpreter: no forked torch or threads
        metrics.add_reading("easel_queue_depth", "Requests waiting for the worker.", lambda: len(self._waiting))
        metrics.add_reading("easel_running_requests", "Requests the worker runs.", lambda: len(self._running))
        metrics.add_reading("easel_worker_up", "1 while the worker can take requests.", lambda: int(self.ready))
        metrics.add_reading(
            "easel_worker_restarts_total", "Times the worker died and was restarted.", lambda: self.restarts, "counter"
        )

    @property
    def ready(self) -> bool:
        return self.state is WorkerState.READY

    def start(self) -> None:
        """Starts the worker; it loads the model while the front end already answers /health."""
        self._loop = asyncio.get_running_loop()
        self._spawn()

    def health(self) -> dict[str, Any]:
        return {
            "status": self.state.value,
            "worker_pid": self._worker.process.pid if self._worker else None,
            "restarts": self.restarts,
            "running": len(self._running),
            "max_batch_size": self.limits.max_size,
            "queued": len(self._waiting),
            "max_queued": self.max_queued,
            **({"error": self.failure} if self.failure else {}),
        }

    def submit(
        self,
        spec: WorkerJob | LoRAJob,
        on_progress: Callable[[float], None] | None = None,
        on_preview: Callable[[int, bytes], None] | None = None,
        on_frames: Callable[[int], None] | None = None,
    ) -> asyncio.Future:
        """Admits a job (or raises 503 while the worker is not ready, 429 when the queue is full); the future gives
        its `Done` (`LoRAsDone` for a LoRA job), or raises the APIError it failed with. `on_progress` hears 0 when
        it starts, then each step's fraction of the denoising; `on_preview(index, image)` each partial image;
        `on_frames(n)` each time a block-causal video job's MP4 holds more frames (n so far)."""
        if not self.ready:
            raise APIError(503, f"the worker is {self.state.value}: retry shortly", "server_error", code="unavailable")
        if len(self._running) >= self.limits.max_size and len(self._waiting) >= self.max_queued:
            raise APIError(
                429,
                f"the queue is full: {len(self._waiting)} requests are waiting (--max-queued-requests "
                f"{self.max_queued}); retry later",
                "rate_limit_error",
                code="queue_full",
            )
        job = Job(spec, self._loop.create_future(), on_progress, on_preview, on_frames)
        self._waiting.append(job)
        self._dispatch()
        return job.future

    def cancel(self, job_id: str) -> bool:
        """Stops job `job_id`: a waiting one leaves the queue now, a running one at its next denoising step (under
        --num-gpus, once the ranks finish it). False when no such job is held."""
        waiting = next((job for job in self._waiting if job.spec.id == job_id), None)
        if waiting is not None:
            self._waiting.remove(waiting)
            self._reject(waiting, APIError(CANCELLED_STATUS, "cancelled while queued", code="cancelled"))
            return True
        if job_id not in self._running:
            return False
        try:
            self._worker.jobs.send(Cancel(job_id))
        except OSError:
            pass  # the worker is dying: `_on_exit` fails the job
        return True

    async def stop(self) -> None:
        """Fails whatever is held, stops the worker (killing it if it does not exit), and waits for it."""
        if self.state is WorkerState.STOPPED:
            return
        self.state = WorkerState.STOPPED
        busy = bool(self._running)
        self._fail_held(APIError(503, "the server is shutting down", "server_error", code="shutting_down"))
        worker = self._worker
        if worker is None:
            return
        try:
            worker.jobs.send(None)  # an idle worker exits at once; a busy one is killed below
        except OSError:
            pass
        await asyncio.to_thread(worker.process.join, 0 if busy else STOP_TIMEOUT_S)
        if worker.process.is_alive():
            worker.process.kill()
            await asyncio.to_thread(worker.process.join)
        await asyncio.to_thread(self._reader.join)

    # --- the worker's life ----------------------------------------------------------------------------------
    def _spawn(self) -> None:
        self._worker = worker = _Worker(self._context, self.model_path, self.engine_options, self.loras, self.limits)
        self._reader = threading.Thread(target=self._read_results, args=(worker,), name="easel-results", daemon=True)
        self._reader.start()

    def _read_results(self, worker: _Worker) -> None:
        """In a thread: hands every message of `worker` to the loop, then its exit."""
        while True:
            try:
                message = worker.results.recv()
            except (EOFError, OSError):
                break
            self._loop.call_soon_threadsafe(self._on_message, worker, message)
        worker.process.join()
        self._loop.call_soon_threadsafe(self._on_exit, worker)

    def _on_message(self, worker: _Worker, message: Any) -> None:
        if worker is not self._worker or self.state is WorkerState.STOPPED:
            return
        match message:
            case Ready(info, loras):
                self.info, self.loras, self.state = info, loras, WorkerState.READY
                self._dispatch()
            case LoadFailed(error):
                self._fail_loading(f"the model could not be loaded: {error}")
            case Progress(job_id, step, total):
                job = self._running.get(job_id)
                if job is not None and job.on_progress is not None:
                    job.on_progress(step / total)
            case Preview(job_id, index, image):
                job = self._running.get(job_id)
                if job is not None and job.on_preview is not None:
                    job.on_preview(index, image)
            case FramesReady(job_id, frames):
                job = self._running.get(job_id)
                if job is not None and job.on_frames is not None:
                    job.on_frames(frames)
            case Done() | LoRAsDone() | Failed():
                self._finish(message)

    def _on_exit(self, worker: _Worker) -> None:
        if worker is not self._worker or self.state in (WorkerState.STOPPED, WorkerState.FAILED):
            return
        if self.state is not WorkerState.READY:
            self._fail_loading(f"the worker process {worker.describe_exit()} while loading the model")
            return
        logger.error("the worker process %s; restarting it", worker.describe_exit())
        running, self._running = list(self._running.values()), {}
        message = f"the worker process {worker.describe_exit()} while running this request; it is being restarted"
        for job in running:
            self._reject(job, APIError(500, message, "server_error", code="worker_died"))
        self._fail_held(APIError(503, "the worker process died and is restarting: retry shortly", "server_error"))
        self.state = WorkerState.RESTARTING
        self.restarts += 1
        self._spawn()

    def _fail_loading(self, message: str) -> None:
        self.state, self.failure = WorkerState.FAILED, message
        self._fail_held(APIError(503, message, "server_error", code="model_not_loaded"))
        self.failed.set()

    # --- jobs -----------------------------------------------------------------------------------------------
    def _dispatch(self) -> None:
        """Sends waiting jobs to the worker while it has room; a LoRA job goes alone, once the worker is idle,
        since it changes the adapters every request after it runs with."""
        while self.ready and self._waiting and len(self._running) < self.limits.max_size:
            alone = isinstance(self._waiting[0].spec, LoRAJob)
            if self._running and (alone or any(isinstance(job.spec, LoRAJob) for job in self._running.values())):
                return
            job = self._waiting.popleft()
            self._running[job.spec.id] = job
            job.started_at = time.perf_counter()
            if job.on_progress is not None:
                job.on_progress(0.0)
            try:
                self._worker.jobs.send(job.spec)
            except OSError:
                return  # the worker is dying: `_on_exit` fails the jobs

    def _finish(self, message: Done | LoRAsDone | Failed) -> None:
        job = self._running.pop(message.job_id, None)
        if job is None:
            return
        if isinstance(message, Failed):
            error_type = "invalid_request_error" if message.status < 500 else "server_error"
            code = "cancelled" if message.status == CANCELLED_STATUS else None
            self._reject(job, APIError(message.status, message.message, error_type, code=code))
        else:
            if isinstance(message, LoRAsDone):
                self.loras = message.loras
            else:
                self.metrics.observe_generation(job.started_at - job.admitted_at, message.timings)
            if not job.future.done():
                job.future.set_result(message)
        self._dispatch()

    def _fail_held(self, error: APIError) -> None:
        """Fails every job held: the one running and those waiting."""
        held = list(self._running.values()) + list(self._waiting)
        self._running = {}
        self._waiting.clear()
        for job in held:
            self._reject(job, error)

    @staticmethod
    def _reject(job: Job, error: APIError) -> None:
        if not job.future.done():
            job.future.set_exception(error)
