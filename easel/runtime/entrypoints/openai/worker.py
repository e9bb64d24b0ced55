"""The worker process: loads the model once, then runs one job at a time, reporting progress and results.

It talks to the front end over two pipes, with the messages defined here; it imports torch and Easel's pipelines
only once started, so that the front end that imports this module stays light.
"""

import dataclasses
import io
import logging
import os
import signal
from multiprocessing.connection import Connection
from typing import Any

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
    params: dict[str, Any]  # `DiffGenerator.generate` keyword arguments
    images: list[bytes]  # input images, as uploaded
    image_format: str = "png"  # how generated images are encoded
    video_path: str | None = None  # where a video model writes its MP4


# Messages from the worker to the front end.
@dataclasses.dataclass
class Ready:
    info: ModelInfo


@dataclasses.dataclass
class LoadFailed:
    message: str


@dataclasses.dataclass
class Progress:
    job_id: str
    step: int
    total: int


@dataclasses.dataclass
class Done:
    """A finished job: its encoded images (or the MP4 written at `video_path`), their size, seconds per stage."""

    job_id: str
    images: list[bytes]
    width: int
    height: int
    num_frames: int
    timings: dict[str, float]


@dataclasses.dataclass
class Failed:
    job_id: str
    status: int  # 400 for a request Easel rejected, 500 for anything else
    message: str


def run_worker(model_path: str, engine_options: dict[str, Any], jobs: Connection, results: Connection) -> None:
    """The worker process's main: load, say Ready (or LoadFailed), then serve jobs until told to stop (None)."""
    # Ctrl-C (or a kill of the process group) reaches the worker too; the front end decides when it stops.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    logging.basicConfig(level=engine_options["log_level"].upper(), format="%(levelname)s %(name)s: %(message)s")
    from easel import DiffGenerator

    try:
        generator = DiffGenerator.from_pretrained(model_path, progress_bar=False, **engine_options)
    except Exception as error:
        results.send(LoadFailed(str(error) if isinstance(error, EaselError) else f"{type(error).__name__}: {error}"))
        return
    results.send(Ready(_model_info(generator)))
    while True:
        try:
            job = jobs.recv()
        except EOFError:  # the front end is gone
            return
        if job is None:
            return
        results.send(_run(generator, job, results))


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
    )


def _run(generator, job: WorkerJob, results: Connection) -> Done | Failed:
    from PIL import Image

    fault_prompt = os.environ.get(FAULT_PROMPT_VARIABLE)

    def on_step(step: int, total: int) -> None:
        if fault_prompt and job.params["prompt"] == fault_prompt:
            raise RuntimeError(f"injected fault at step {step} ({FAULT_PROMPT_VARIABLE})")
        results.send(Progress(job.id, step, total))

    try:
        images = [Image.open(io.BytesIO(data)) for data in job.images]
        result = generator.generate(
            step_callback=on_step, image=images or None, output_path=job.video_path, **job.params
        )
        if result.frames:
            frames = result.frames[0]
            return Done(job.id, [], *frames[0].size, len(frames), result.timings)
        encoded = [_encode(image, job.image_format) for image in result.images]
        return Done(job.id, encoded, *result.images[0].size, 1, result.timings)
    except Exception as error:
        if isinstance(error, EaselError):
            return Failed(job.id, 400, str(error))
        logger.exception("job %s failed", job.id)
        return Failed(job.id, 500, f"{type(error).__name__}: {error}")


def _encode(image, image_format: str) -> bytes:
    if image.mode == "RGBA" and image_format == "jpeg":
        raise InvalidInputError("this model makes transparent images, which JPEG cannot hold: ask for png or webp")
    buffer = io.BytesIO()
    image.save(buffer, format=image_format.upper())
    return buffer.getvalue()
