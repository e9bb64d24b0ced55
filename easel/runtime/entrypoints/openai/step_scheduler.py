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
import functools
from multiprocessing.connection import Connection
from typing import Any

import torch

from easel.errors import attempt
from easel.runtime.entrypoints.diff_generator import DiffGenerator, StartedGeneration
from easel.runtime.entrypoints.openai.messages import (
    CANCELLED_STATUS,
    BatchLimits,
    Cancel,
    Done,
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

# Image tokens the rows of one iteration may hold in all, by default. On a CPU a bigger forward stops paying early:
# the 71 M FLUX DiT's cost per 256x256 row falls from 0.39 s alone to 0.36 s at 2 rows and 0.34 s at 4, no further.
# Past that, more rows only stretch every request's steps: at 16 clients (benchmarks/bench_serve.py, flux70) a
# 4096-token budget gave p95 48 s against 37 s one at a time, 1024 gave 44 s against 46 s. A tiny model's rows
# (the demo's 16 tokens) still batch sixteen requests under it. An accelerator keeps gaining far beyond.
CPU_MAX_BATCH_TOKENS, ACCELERATOR_MAX_BATCH_TOKENS = 1024, 65536


@dataclasses.dataclass
class _Entry:
    """A started job: its prompt encoded, waiting for room in the batch or running."""

    job: WorkerJob
    started: StartedGeneration
    tokens: int  # image tokens its rows add to each forward


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
        on_cpu = generator.server_args.torch_device.type == "cpu"
        self.max_tokens = limits.max_tokens or (CPU_MAX_BATCH_TOKENS if on_cpu else ACCELERATOR_MAX_BATCH_TOKENS)
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
        finished = [entry for entry in self.running if entry.started.run.done]
        if not finished:
            return
        self.running = [entry for entry in self.running if not entry.started.run.done]
        results = self.generator.finish_many([entry.started for entry in finished])  # decoded together
        for entry, result in zip(finished, results, strict=True):
            self._send(failed(entry.job.id, result) if isinstance(result, Exception) else self._done(entry, result))

    def _done(self, entry: _Entry, result) -> Done | Failed:
        try:
            return done(entry.job, result)
        except Exception as error:  # e.g. an RGBA image asked for as JPEG
            return failed(entry.job.id, error)

    def _admit(self) -> None:
        """Moves jobs from the queue's head into the batch while there is room, first come first served."""
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
            if not isinstance(head, _Entry):
                if not self._start_arrivals():
                    return
                continue
            if self.running and head.job.lora != self.applied:
                return  # another adapter choice: it waits for this batch to finish
            if self.running and sum(e.tokens for e in self.running) + head.tokens > self.max_tokens:
                return
            self.running.append(self.waiting.popleft())

    def _start_arrivals(self) -> bool:
        """Encodes the prompts of the jobs at the queue's head that may join now, together: those of one adapter
        choice, as many as the batch has room for. A job that fails to start is answered and dropped. False when
        none may start now."""
        arrivals: list[WorkerJob] = []
        for held in self.waiting:
            if not isinstance(held, WorkerJob) or len(arrivals) == self.max_size - len(self.running):
                break
            if arrivals and held.lora != arrivals[0].lora:
                break
            arrivals.append(held)
        if not arrivals or (self.running and arrivals[0].lora != self.applied):
            return False
        self._apply_lora(arrivals[0].lora)
        requests = [attempt(functools.partial(self._generate_kwargs, job)) for job in arrivals]
        outcomes = iter(self.generator.start_many([r for r in requests if not isinstance(r, Exception)]))
        entries = []
        for job, request in zip(arrivals, requests, strict=True):
            started = request if isinstance(request, Exception) else next(outcomes)
            if isinstance(started, Exception):
                self._send(failed(job.id, started))
            else:
                entries.append(_Entry(job, started, row_tokens(started.run)))
        for _ in arrivals:
            self.waiting.popleft()
        self.waiting.extendleft(reversed(entries))
        return True

    def _generate_kwargs(self, job: WorkerJob) -> dict[str, Any]:
        def on_step(step: int, total: int) -> None:
            check_fault(job, step)
            self._send(Progress(job.id, step, total))

        return {"step_callback": on_step, **generate_kwargs(self.generator, job, self._send)}

    def _apply_lora(self, choice: Any) -> None:
        """Makes a job's adapter choice (None: the server-wide adapters) the applied one."""
        if choice != self.applied:
            self.generator.set_lora(self.server_wide if choice is None else choice)
            self.applied = choice

    def _send(self, message: Any) -> None:
        self.results.send(message)
