"""The messages between the front end and the worker process, over its two pipes: jobs one way, what became of
them the other. Plain dataclasses, so that the front end that imports them stays light (no torch)."""

import dataclasses
from typing import Any, Literal


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
    partial_images: int = 0  # previews to send while it runs (OpenAI's streaming `partial_images`), evenly spaced
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


@dataclasses.dataclass
class Progress:
    job_id: str
    step: int
    total: int


@dataclasses.dataclass
class Preview:
    """A running job's `index`-th partial image: the result its model predicts at that step, encoded as the job
    asked, of its first sample."""

    job_id: str
    index: int
    image: bytes


@dataclasses.dataclass
class FramesReady:
    """A running video job of a block-causal model finished another block: the MP4 at its `video_path` now holds its
    first `frames` frames."""

    job_id: str
    frames: int


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


DEFAULT_MAX_BATCH_SIZE = 16


@dataclasses.dataclass(frozen=True)
class BatchLimits:
    """How many jobs the worker runs together (--max-batch-size; 1: one at a time) and how many image tokens their
    rows may hold in all (--max-batch-tokens; None: the device's default)."""

    max_size: int = DEFAULT_MAX_BATCH_SIZE
    max_tokens: int | None = None
