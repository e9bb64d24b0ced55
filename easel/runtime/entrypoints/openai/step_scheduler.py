"""The worker's scheduler under --max-batch-size > 1: step-level continuous batching.

Every iteration reads what the front end sent (jobs, cancels), admits waiting jobs while the batch has room, runs one
denoising step of every running job, passes of several jobs sharing DiT forwards (shared_forward.py), and answers
the jobs that finished. A job joins after its text encoding and leaves as soon as it is done, so jobs of different
step counts, sizes, seeds and guidance run side by side and no job waits for another to end.

LoRA: a job's own adapter choice applies to its text encoding and to every forward of its rows, so jobs batch only
with jobs of the same choice: one with another choice waits (and the jobs behind it, first come first served) until
the running ones finish, and the adapters switch between batches. A change of the server-wide adapters (a LoRA job)
waits likewise for the batch to empty.
"""

import collections
import dataclasses
import logging
from multiprocessing.connection import Connection
from typing import Any

import torch

from easel.runtime.entrypoints.diff_generator import DiffGenerator, StartedGeneration
from easel.runtime.entrypoints.openai.messages import (
    CANCELLED_STATUS,
    BatchLimits,
    Cancel,
    Failed,
    LoRAJob,
    Progress,
    WorkerJob,
)
from easel.runtime.entrypoints.openai.worker import (
    active_loras,
    check_fault,
    done,
    failed,
    generate_kwargs,
    run_lora_job,
)
from easel.runtime.pipelines_core.shared_forward import predict_together, row_tokens

logger = logging.getLogger(__name__)

# Image tokens the rows of one iteration may hold in all, by default: on a CPU the matmuls run at full speed from
# about a thousand rows of tokens on, so more only lengthens every step; a GPU keeps gaining far beyond.
DEFAULT_MAX_BATCH_TOKENS = {"cpu": 4096, "cuda": 65536}


@dataclasses.dataclass
class _Entry:
    """A job the scheduler holds: waiting (started once its text is encoded) or running."""

    job: WorkerJob
    started: StartedGeneration | None = None
    tokens: int = 0


def serve_batched(generator: DiffGenerator, limits: BatchLimits, jobs: Connection, results: Connection) -> None:
    """The worker's loop: blocks for messages while idle, reads them between steps while busy."""
    scheduler = StepScheduler(generator, limits, results)
    while True:
        try:
            messages = [jobs.recv()] if scheduler.idle else []
            while jobs.poll():
                messages.append(jobs.recv())
        except EOFError:  # the front end is gone
            return
        for message in messages:
            if message is None:
                return
            if isinstance(message, Cancel):
                scheduler.cancel(message.job_id)
            else:
                scheduler.waiting.append(message)
        scheduler.iterate()


class StepScheduler:
    """Holds the waiting and running jobs of one worker and advances them a step at a time."""

    def __init__(self, generator: DiffGenerator, limits: BatchLimits, results: Connection):
        self.generator, self.results = generator, results
        self.max_size = limits.max_size
        self.max_tokens = limits.max_tokens or DEFAULT_MAX_BATCH_TOKENS.get(generator.server_args.torch_device.type)
        self.waiting: collections.deque[WorkerJob | LoRAJob | _Entry] = collections.deque()
        self.running: list[_Entry] = []
        self.server_wide = active_loras(generator)  # the adapters of requests that choose none
        self.applied: Any = None  # the adapter choice now applied (None: the server-wide one)

    @property
    def idle(self) -> bool:
        return not self.waiting and not self.running

    def cancel(self, job_id: str) -> None:
        """Drops a waiting job, or a running one (its rows leave the batch before the next step)."""
        for held in list(self.waiting):
            if (held.job if isinstance(held, _Entry) else held).id == job_id:
                self.waiting.remove(held)
                self._send(Failed(job_id, CANCELLED_STATUS, "cancelled while queued"))
        for entry in list(self.running):
            if entry.job.id == job_id:
                run = entry.started.run
                self.running.remove(entry)
                self._send(Failed(job_id, CANCELLED_STATUS, f"cancelled at step {run.step} of {run.total}"))

    def iterate(self) -> None:
        """Admits what fits, steps every running job once, and answers those that finished."""
        self._admit()
        if not self.running:
            return
        with torch.inference_mode():
            try:
                predictions = predict_together([entry.started.run for entry in self.running])
            except Exception as error:  # a bug in a shared forward: every job in it fails
                for entry in self.running:
                    self._send(failed(entry.job.id, error))
                self.running.clear()
                return
            for entry, prediction in zip(list(self.running), predictions, strict=True):
                try:
                    entry.started.run.advance(prediction)
                except Exception as error:
                    self.running.remove(entry)
                    self._send(failed(entry.job.id, error))
        for entry in [entry for entry in self.running if entry.started.run.done]:
            self.running.remove(entry)
            try:
                self._send(done(entry.job, self.generator.finish(entry.started)))
            except Exception as error:
                self._send(failed(entry.job.id, error))

    def _admit(self) -> None:
        while self.waiting and len(self.running) < self.max_size:
            head = self.waiting[0]
            if isinstance(head, LoRAJob):
                if self.running:
                    return
                self.waiting.popleft()
                self._apply_lora(None)
                self._send(run_lora_job(self.generator, head))
                self.server_wide = active_loras(self.generator)
                continue
            entry = head if isinstance(head, _Entry) else _Entry(head)
            if entry.job.lora != self.applied and self.running:
                return  # another adapter choice: it waits for this batch to finish
            if entry.started is None:
                self.waiting[0] = entry
                if not self._start(entry):
                    self.waiting.popleft()
                    continue
            if self.running and sum(e.tokens for e in self.running) + entry.tokens > self.max_tokens:
                return
            self.waiting.popleft()
            self.running.append(entry)

    def _start(self, entry: _Entry) -> bool:
        """Encodes a job's prompt and prepares its loop; False (and its answer sent) if that fails."""
        job = entry.job

        def on_step(step: int, total: int) -> None:
            check_fault(job, step)
            self._send(Progress(job.id, step, total))

        try:
            self._apply_lora(job.lora)
            entry.started = self.generator.start(
                step_callback=on_step, **generate_kwargs(self.generator, job, self._send)
            )
            entry.tokens = row_tokens(entry.started.run)
            return True
        except Exception as error:
            self._send(failed(job.id, error))
            return False

    def _apply_lora(self, choice: Any) -> None:
        """Makes a job's adapter choice (None: the server-wide adapters) the applied one."""
        if choice != self.applied:
            self.generator.set_lora(self.server_wide if choice is None else choice)
            self.applied = choice

    def _send(self, message: Any) -> None:
        self.results.send(message)
