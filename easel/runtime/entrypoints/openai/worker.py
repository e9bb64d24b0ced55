"""The worker process: loads the model once, then runs jobs, reporting progress and results.

One at a time with --max-batch-size 1 (and under --num-gpus, whose ranks run whole jobs); otherwise a step at a
time, many together (step_scheduler.py). It talks to the front end over two pipes, with the messages of
messages.py; it imports torch and Easel's pipelines only once started, so that the front end stays light.
"""

import contextlib
import io
import logging
import os
import signal
from collections.abc import Callable
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any, NoReturn

from easel.errors import EaselError, InvalidInputError
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
    LoRASpec,
    ModelInfo,
    Preview,
    Progress,
    Ready,
    WorkerJob,
)

logger = logging.getLogger(__name__)

# Tests make a generation fail on purpose: a job whose prompt equals this variable's value raises in the
# denoising loop, as a bug in a model would.
FAULT_PROMPT_VARIABLE = "EASEL_SERVE_FAULT_PROMPT"


class JobCancelled(Exception):
    """Raised at a step of a job its client cancelled."""


def run_worker(
    model_path: str,
    engine_options: dict[str, Any],
    loras: list[dict[str, Any]],
    limits: BatchLimits,
    jobs: Connection,
    results: Connection,
) -> None:
    """The worker process's main: load the model and the adapters `loras` (a `list_loras()` answer) describes, say
    Ready (or LoadFailed), then serve jobs until told to stop (None).

    With --num-gpus N the generator is a parallel run's client (easel/runtime/distributed/rank_group.py): the worker
    sends each job to rank 0, which broadcasts it to every rank. A rank that dies stops the run; the worker then
    exits, and the front end restarts it as it restarts a worker that died."""
    # Ctrl-C (or a kill of the process group) reaches the worker too; the front end decides when it stops.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    logging.basicConfig(level=engine_options["log_level"].upper(), format="%(levelname)s %(name)s: %(message)s")
    from easel import DiffGenerator

    try:
        generator = DiffGenerator.from_pretrained(model_path, progress_bar=False, **engine_options)
        _restore_loras(generator, loras)
    except Exception as error:
        results.send(LoadFailed(str(error) if isinstance(error, EaselError) else f"{type(error).__name__}: {error}"))
        return
    results.send(Ready(_model_info(generator), generator.list_loras()))
    if limits.max_size > 1:
        from easel.runtime.entrypoints.openai.step_scheduler import serve_batched

        serve_batched(generator, limits, jobs, results)
    else:
        _serve_one_at_a_time(generator, jobs, results)


def _serve_one_at_a_time(generator, jobs: Connection, results: Connection) -> None:
    ranks = getattr(generator, "sentinels", [])  # a parallel run's ranks, watched while idle too
    while True:
        if ranks and jobs not in wait([jobs, *ranks]):
            logger.error("a rank of the parallel run died while it was idle; restarting the run")
            _exit_now(generator)
        try:
            job = jobs.recv()
        except EOFError:  # the front end is gone
            return
        if job is None:
            generator.close()
            return
        if isinstance(job, Cancel):  # its job ended before the cancel arrived
            continue
        if isinstance(job, WorkerJob):
            results.send(_run(generator, job, jobs, results))
        else:
            results.send(run_lora_job(generator, job))
        if getattr(generator, "stopped", None):  # a rank died during the job, which failed saying so
            _exit_now(generator)


def _exit_now(generator) -> NoReturn:
    """Exits at once, so that the front end sees the worker gone (and restarts it) before it sends another job."""
    generator.close()
    os._exit(1)


def _restore_loras(generator, loras: list[dict[str, Any]]) -> None:
    """Loads the adapters of a `list_loras()` answer as they were: those of --lora-path, or after a restart those
    the dead worker had."""
    for lora in loras:
        generator.load_lora(lora["path"], name=lora["name"], target=lora["targets"])
    generator.set_lora({lora["name"]: lora["strength"] for lora in loras if lora["active"]})
    if any(lora["merged"] for lora in loras):
        generator.merge_lora()


def _model_info(generator) -> ModelInfo:
    from easel.configs.pipeline_configs.base import IMAGE_TASKS

    config, defaults = generator.server_args.pipeline_config, generator.sampling_defaults
    low, high = config.input_image_range()
    return ModelInfo(
        family=generator.family.name,
        task=config.task_type.value,
        makes_video=config.task_type not in IMAGE_TASKS,
        min_images=low,
        max_images=high,
        width=defaults.width,
        height=defaults.height,
        num_frames=defaults.num_frames,
        fps=defaults.fps,
        transparent=config.makes_transparent_images,
    )


def run_lora_job(generator, job: LoRAJob) -> LoRAsDone | Failed:
    """Runs a change of the server-wide adapters; its answer."""
    try:
        if job.op == "set":
            _set_loras(generator, job.adapters, job.lora_dir)
        elif not generator.list_loras():
            raise InvalidInputError("no LoRA is loaded: load one with /v1/set_lora first")
        elif job.op == "merge":
            generator.merge_lora()
        else:
            generator.unmerge_lora()
        return LoRAsDone(job.id, generator.list_loras())
    except Exception as error:
        return failed(job.id, error)


def _set_loras(generator, adapters: list[LoRASpec], lora_dir: str | None) -> None:
    """Loads the adapters not loaded yet, then makes `adapters` the active set; on an error the active set stays."""
    from easel.runtime.loader.lora_loader import resolve_lora_path

    loaded = {lora["name"]: lora for lora in generator.list_loras()}
    previous = active_loras(generator)
    try:
        for adapter in adapters:
            if adapter.path is None:
                continue  # set_lora below names it if it is not loaded
            path = resolve_lora_path(lora_dir, adapter.path)
            if adapter.name in loaded:
                if Path(loaded[adapter.name]["path"]) != path:
                    raise InvalidInputError(
                        f"a LoRA named {adapter.name!r} is already loaded from another file: choose another name"
                    )
                continue
            if not path.is_file():
                raise InvalidInputError(f"no LoRA file {adapter.path!r} in the LoRA directory")
            generator.load_lora(path, name=adapter.name, target=adapter.target)
        generator.set_lora({adapter.name: adapter.strength for adapter in adapters})
    except Exception:
        generator.set_lora(previous)  # a load activates its adapter: undo that
        raise


def _run(generator, job: WorkerJob, jobs: Connection, results: Connection) -> Done | Failed:
    def on_step(step: int, total: int) -> None:
        check_fault(job, step)
        # While a job runs the front end sends nothing but a Cancel (or the None of a stop, which kills a busy
        # worker anyway), so whatever waits here is read now.
        while jobs.poll():
            message = jobs.recv()
            if isinstance(message, Cancel) and message.job_id == job.id:
                raise JobCancelled(f"cancelled at step {step} of {total}")
        results.send(Progress(job.id, step, total))

    try:
        with _lora_choice(generator, job.lora):
            result = generator.generate(step_callback=on_step, **generate_kwargs(generator, job, results.send))
        return done(job, result)
    except Exception as error:
        return failed(job.id, error)


def generate_kwargs(generator, job: WorkerJob, send: Callable[[Any], None]) -> dict[str, Any]:
    """`DiffGenerator.generate` keyword arguments of a job, its uploads opened as images; with `partial_images` n,
    a preview every steps/(n + 1) steps, n in all, each sent as a Preview."""
    from PIL import Image

    images = [Image.open(io.BytesIO(data)) for data in job.images]
    kwargs = {"image": images or None, "output_path": job.video_path, **job.params}
    if job.video_path is not None and generator.makes_frame_blocks:
        kwargs["block_callback"] = _frames_so_far(job, send)
    if job.partial_images:
        steps = job.params.get("num_inference_steps") or generator.sampling_defaults.num_inference_steps
        sent = []

        def on_preview(step: int, previews: list) -> None:
            if len(sent) < job.partial_images:
                send(Preview(job.id, len(sent), _encode(previews[0], job.image_format, job.image_compression)))
                sent.append(step)

        kwargs.update(preview_every=max(1, steps // (job.partial_images + 1)), preview_callback=on_preview)
    return kwargs


def _frames_so_far(job: WorkerJob, send: Callable[[Any], None]) -> Callable[[Any], None]:
    """A block-causal model's video as far as it is made: after each block the MP4 at the job's path holds every
    frame so far, rewritten whole and replaced at once, so that whatever the content route serves plays; the front
    end hears how many frames it holds. The finished video then replaces it as any video model's does."""
    from easel.runtime.outputs import Mp4Writer, to_pil

    frames: list = []

    def on_block(block) -> None:
        frames.extend(to_pil(block.pixels)[0])  # a job makes one video
        with Mp4Writer(Path(job.video_path), job.params["fps"]) as writer:
            writer.append(frames)
        send(FramesReady(job.id, len(frames)))

    return on_block


def check_fault(job: WorkerJob, step: int) -> None:
    """Raises at a step of a job whose prompt is the fault-injection one (see FAULT_PROMPT_VARIABLE)."""
    fault_prompt = os.environ.get(FAULT_PROMPT_VARIABLE)
    if fault_prompt and job.params["prompt"] == fault_prompt:
        raise RuntimeError(f"injected fault at step {step} ({FAULT_PROMPT_VARIABLE})")


def done(job: WorkerJob, result) -> Done:
    """The answer of a finished job: its images encoded as it asked (a video model's MP4 is on disk already)."""
    report = {"cache": result.cache, "quality": result.quality.to_dict() if result.quality is not None else None}
    if result.frames:
        frames = result.frames[0]
        return Done(job.id, [], *frames[0].size, len(frames), result.timings, **report)
    encoded = [_encode(image, job.image_format, job.image_compression) for image in result.images]
    return Done(job.id, encoded, *result.images[0].size, 1, result.timings, **report)


@contextlib.contextmanager
def _lora_choice(generator, lora: str | list[str] | dict[str, float] | None):
    """Applies a job's `lora` choice while it runs, then the server-wide one again: no request leaks adapters into
    the next. Unmerged, switching costs nothing; merged, it re-merges twice."""
    if lora is None:
        yield
        return
    server_wide = active_loras(generator)
    generator.set_lora(lora)
    try:
        yield
    finally:
        generator.set_lora(server_wide)


def active_loras(generator) -> dict[str, float]:
    """The active adapters and their strengths, as `set_lora` takes them back."""
    return {lora["name"]: lora["strength"] for lora in generator.list_loras() if lora["active"]}


def failed(job_id: str, error: Exception) -> Failed:
    """What a job that raised `error` answers: 400 for bad input, 499 when cancelled, else 500."""
    from easel.runtime.distributed.rank_group import RankGroupError

    if isinstance(error, RankGroupError):  # a rank died: the server's fault, not the request's
        return Failed(job_id, 500, str(error))
    if isinstance(error, JobCancelled):
        return Failed(job_id, CANCELLED_STATUS, str(error))
    if isinstance(error, EaselError):
        return Failed(job_id, 400, str(error))
    logger.exception("job %s failed", job_id)
    return Failed(job_id, 500, f"{type(error).__name__}: {error}")


def _encode(image, image_format: str, compression: int | None = None) -> bytes:
    if image.mode == "RGBA" and image_format == "jpeg":
        raise InvalidInputError("this model makes transparent images, which JPEG cannot hold: ask for png or webp")
    buffer = io.BytesIO()
    # PNG is lossless whatever is asked; OpenAI's compression percentage is jpeg's and webp's quality setting.
    options = {"quality": compression} if compression is not None and image_format != "png" else {}
    image.save(buffer, format=image_format.upper(), **options)
    return buffer.getvalue()
