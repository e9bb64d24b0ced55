"""The worker process: loads the model once, then runs one job at a time, reporting progress and results.

It talks to the front end over two pipes, with the messages defined here; it imports torch and Easel's pipelines
only once started, so that the front end that imports this module stays light.
"""

import contextlib
import dataclasses
import io
import logging
import os
import signal
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any, Literal, NoReturn

from easel.errors import EaselError, InvalidInputError

logger = logging.getLogger(__name__)

# Tests make a generation fail on purpose: a job whose prompt equals this variable's value raises in the
# denoising loop, as a bug in a model would.
FAULT_PROMPT_VARIABLE = "EASEL_SERVE_FAULT_PROMPT"


@dataclasses.dataclass
class ModelInfo:
    """What the front end knows of the loaded model: which routes it answers, and its defaults."""

    family: str
    task: str  # e.g. "text-to-image", "text+image-to-image", "text-to-video"
    makes_video: bool
    min_images: int
    max_images: int
    width: int | None
    height: int | None
    num_frames: int
    fps: int
    transparent: bool  # whether its images carry an alpha channel

    def routes(self) -> list[str]:
        """The generation routes this model answers."""
        if self.makes_video:
            return ["/v1/videos"]
        routes = ["/v1/images/generations"] if self.min_images == 0 else []
        return routes + (["/v1/images/edits"] if self.max_images > 0 else [])


@dataclasses.dataclass
class WorkerJob:
    """One request as the worker runs it."""

    id: str
    params: dict[str, Any]  # `DiffGenerator.generate` keyword arguments (`cache`, `quality_check` among them)
    images: list[bytes]  # input images, as uploaded
    image_format: str = "png"  # how generated images are encoded
    image_compression: int | None = None  # jpeg/webp quality 0..100 (OpenAI's output_compression); None: PIL's
    video_path: str | None = None  # where a video model writes its MP4
    lora: str | list[str] | dict[str, float] | None = None  # adapters for this job only (`set_lora`'s argument)


@dataclasses.dataclass
class LoRASpec:
    """One adapter of a "set" LoRA job: loaded from `path` (inside the job's `lora_dir`) unless loaded already."""

    name: str
    path: str | None
    strength: float
    target: str


@dataclasses.dataclass
class LoRAJob:
    """A change of the server-wide LoRA adapters, run between generations like any job: "set" loads what is missing
    and activates `adapters` (only those), "merge" and "unmerge" write the active ones into the weights or back."""

    id: str
    op: Literal["set", "merge", "unmerge"]
    adapters: list[LoRASpec] = dataclasses.field(default_factory=list)
    lora_dir: str | None = None


# Messages from the worker to the front end.
@dataclasses.dataclass
class Ready:
    info: ModelInfo
    loras: list[dict[str, Any]]  # `list_loras()` once the adapters it was given are loaded


@dataclasses.dataclass
class LoRAsDone:
    """A LoRA job done: the adapters as they are now (`list_loras()`)."""

    job_id: str
    loras: list[dict[str, Any]]


@dataclasses.dataclass
class LoadFailed:
    message: str


@dataclasses.dataclass
class Cancel:
    """Stop job `job_id` at its next step. Sent while it runs; one that arrives after the job ended is ignored."""

    job_id: str


# The status of a job stopped by Cancel: nginx's "client closed request", as no HTTP status says "cancelled".
CANCELLED_STATUS = 499


class JobCancelled(Exception):
    """Raised at a step of a job its client cancelled."""


@dataclasses.dataclass
class Progress:
    job_id: str
    step: int
    total: int


@dataclasses.dataclass
class Done:
    """A finished job: its encoded images (or the MP4 written at `video_path`), their size, seconds per stage, what
    the step cache did (`GenerationResult.cache`), and the quality check's `QualityReport.to_dict()` if one ran."""

    job_id: str
    images: list[bytes]
    width: int
    height: int
    num_frames: int
    timings: dict[str, float]
    cache: dict[str, Any] | None = None
    quality: dict[str, Any] | None = None


@dataclasses.dataclass
class Failed:
    job_id: str
    status: int  # 400 for a request Easel rejected, 500 for anything else
    message: str


def run_worker(
    model_path: str,
    engine_options: dict[str, Any],
    loras: list[dict[str, Any]],
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
            results.send(_run_lora(generator, job))
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


def _run_lora(generator, job: LoRAJob) -> LoRAsDone | Failed:
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
        return _failed(job.id, error)


def _set_loras(generator, adapters: list[LoRASpec], lora_dir: str | None) -> None:
    """Loads the adapters not loaded yet, then makes `adapters` the active set; on an error the active set stays."""
    from easel.runtime.loader.lora_loader import resolve_lora_path

    loaded = {lora["name"]: lora for lora in generator.list_loras()}
    previous = _active(generator)
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
    from PIL import Image

    fault_prompt = os.environ.get(FAULT_PROMPT_VARIABLE)

    def on_step(step: int, total: int) -> None:
        if fault_prompt and job.params["prompt"] == fault_prompt:
            raise RuntimeError(f"injected fault at step {step} ({FAULT_PROMPT_VARIABLE})")
        # While a job runs the front end sends nothing but a Cancel (or the None of a stop, which kills a busy
        # worker anyway), so whatever waits here is read now.
        while jobs.poll():
            message = jobs.recv()
            if isinstance(message, Cancel) and message.job_id == job.id:
                raise JobCancelled(f"cancelled at step {step} of {total}")
        results.send(Progress(job.id, step, total))

    try:
        images = [Image.open(io.BytesIO(data)) for data in job.images]
        with _lora_choice(generator, job.lora):
            result = generator.generate(
                step_callback=on_step, image=images or None, output_path=job.video_path, **job.params
            )
        report = {"cache": result.cache, "quality": result.quality.to_dict() if result.quality is not None else None}
        if result.frames:
            frames = result.frames[0]
            return Done(job.id, [], *frames[0].size, len(frames), result.timings, **report)
        encoded = [_encode(image, job.image_format, job.image_compression) for image in result.images]
        return Done(job.id, encoded, *result.images[0].size, 1, result.timings, **report)
    except Exception as error:
        return _failed(job.id, error)


@contextlib.contextmanager
def _lora_choice(generator, lora: str | list[str] | dict[str, float] | None):
    """Applies a job's `lora` choice while it runs, then the server-wide one again: no request leaks adapters into
    the next. Unmerged, switching costs nothing; merged, it re-merges twice."""
    if lora is None:
        yield
        return
    server_wide = _active(generator)
    generator.set_lora(lora)
    try:
        yield
    finally:
        generator.set_lora(server_wide)


def _active(generator) -> dict[str, float]:
    """The active adapters and their strengths, as `set_lora` takes them back."""
    return {lora["name"]: lora["strength"] for lora in generator.list_loras() if lora["active"]}


def _failed(job_id: str, error: Exception) -> Failed:
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
