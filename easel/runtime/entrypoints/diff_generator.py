"""`DiffGenerator`: the Python API. Load a model once, then generate as often as you like."""

import contextlib
import dataclasses
import functools
import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from tqdm.auto import tqdm

from easel.configs.sample.base import SamplingParams
from easel.demo import DEMO_MODEL_PATH
from easel.errors import InvalidInputError, attempt
from easel.quality import QualityReport, compare
from easel.registry import ModelFamily
from easel.runtime.cache.spec import parse_cache_spec
from easel.runtime.distributed.cfg_parallel import run_passes
from easel.runtime.distributed.parallel_state import get_layout, is_output_rank
from easel.runtime.loader.pipeline_loader import load_pipeline
from easel.runtime.outputs import (
    VIDEO_FORMATS,
    Mp4Writer,
    check_writable,
    plan_output_paths,
    save_outputs,
    to_numpy,
    to_pil,
)
from easel.runtime.pipelines_core.composed_pipeline_base import ComposedPipelineBase
from easel.runtime.pipelines_core.schedule_batch import Req
from easel.runtime.pipelines_core.stages.denoising import DenoisingRun
from easel.runtime.server_args import ServerArgs

# The sampling parameters that turn every per-request lossy option off: with `Req.exact_path` (the engine-wide ones:
# a lossy attention backend, quantized weights), the exact path a quality check compares with.
EXACT_PATH = {"cache": "none"}

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class GenerationResult:
    """What `generate` returns: the images in the asked-for type, seconds per stage, and any files written."""

    # A list of PIL images ("pil"), a (N, H, W, C) float array ("np"), or packed latents ("latent"). Images are RGB,
    # or RGBA where the model makes transparent ones (Qwen-Image-Layered: one per layer, sample after sample).
    images: Any
    timings: dict[str, float]
    paths: list[Path] = dataclasses.field(default_factory=list)
    # Video models: one list of PIL frames per video ("pil"), or a (N, F, H, W, 3) float array ("np").
    frames: Any = None
    # What the step cache did, when one ran: {"spec": ..., "branches": {name: {"computed": n, "skipped": m}}}.
    cache: dict[str, Any] | None = None
    # With quality_check=True: this output against the exact path's with the same seed.
    quality: QualityReport | None = None


@dataclasses.dataclass
class _Request:
    """A generation as `generate` runs it: its parameters, its batch, where its files go, and when it began."""

    params: SamplingParams
    batch: Req
    paths: list[Path]
    quality_check: bool
    started: float = dataclasses.field(default_factory=time.perf_counter)


@dataclasses.dataclass
class FrameBlock:
    """A block of a video's frames, decoded as soon as a block-causal model finished it (`generate_stream`)."""

    pixels: torch.Tensor  # (N, 3, f, H, W) in 0..1, N the videos of the request
    first_frame: int  # the index of the block's first frame in the video
    output_type: str = "pil"
    paths: list[Path] = dataclasses.field(default_factory=list)  # the files written, each complete at the end

    @functools.cached_property
    def frames(self) -> Any:
        """One list of PIL frames per video ("pil"), or an (N, f, H, W, 3) float array ("np"); converted once."""
        return to_pil(self.pixels) if self.output_type == "pil" else to_numpy(self.pixels)


@dataclasses.dataclass
class StartedGeneration:
    """A generation `DiffGenerator.start` began: its denoising loop `run`, stepped by the caller."""

    request: _Request
    run: DenoisingRun


class DiffGenerator:
    """A loaded pipeline plus the sampling defaults of its requests."""

    def __init__(
        self,
        pipeline: ComposedPipelineBase,
        family: ModelFamily,
        server_args: ServerArgs,
        sampling_defaults: SamplingParams,
    ):
        self.pipeline = pipeline
        self.family = family
        self.server_args = server_args
        self.sampling_defaults = sampling_defaults

    @classmethod
    def from_pretrained(cls, model_path: str | Path = DEMO_MODEL_PATH, **server_args: Any) -> "DiffGenerator":
        """Loads a Diffusers-format folder (or a Hugging Face id); keyword arguments are `ServerArgs` fields.

        Without a path, loads the built-in demo model: a tiny FLUX.1 trained on scenes of simple shapes. With
        num_gpus > 1 (outside a parallel run's rank), starts that many ranks and returns their client, which sends them
        every call (easel/runtime/distributed/rank_group.py); `close()` or a `with` block stops them.
        """
        known = {field.name for field in dataclasses.fields(ServerArgs)} - {"model_path", "pipeline_config"}
        if unknown := sorted(set(server_args) - known):
            raise InvalidInputError(f"unknown engine option(s) {unknown}; known: {sorted(known)}")
        args = ServerArgs(model_path=str(model_path), **server_args)
        logging.getLogger("easel").setLevel(args.log_level.upper())
        if args.num_gpus > 1 and get_layout().world_size == 1:
            from easel.runtime.distributed.rank_group import start_parallel_generator

            return start_parallel_generator(args, server_args)
        start = time.perf_counter()
        pipeline, family, sampling_defaults = load_pipeline(args)
        logger.info("loaded %s (%s) in %.1f s", model_path, family.name, time.perf_counter() - start)
        return cls(pipeline, family, args, sampling_defaults)

    def generate(
        self,
        prompt: str | list[str] | None = None,
        *,
        step_callback: Callable[[int, int], None] | None = None,
        quality_check: bool = False,
        preview_every: int = 0,
        preview_callback: Callable[[int, list[Image.Image]], None] | None = None,
        block_callback: Callable[[FrameBlock], None] | None = None,
        **sampling_params: Any,
    ) -> GenerationResult:
        """Generates images (or videos) for `prompt`; other keyword arguments are `SamplingParams` fields.
        `step_callback(steps done, steps in all)` is called after every denoising step; with `preview_every` k > 0,
        `preview_callback(steps done, images)` every k steps (not after the last) with the result the model
        predicts at that step, decoded. `quality_check=True` also runs the exact path (no lossy option) with the
        same seed and sets `quality` to the comparison. Block-causal video models (`makes_frame_blocks`) also
        take `block_callback(FrameBlock)`, called with each block of frames, decoded, as soon as it is made."""
        request = self._request(
            prompt,
            step_callback=step_callback,
            quality_check=quality_check,
            preview_every=preview_every,
            preview_callback=preview_callback,
            block_callback=block_callback,
            **sampling_params,
        )
        request.batch = self.pipeline.forward(request.batch, self.server_args)
        return self._result(request)

    @property
    def makes_frame_blocks(self) -> bool:
        """Whether the model makes its videos a block of frames at a time, which `generate_stream` yields."""
        return self.pipeline.makes_frame_blocks

    def generate_stream(
        self,
        prompt: str | list[str] | None = None,
        *,
        step_callback: Callable[[int, int], None] | None = None,
        **sampling_params: Any,
    ) -> Iterator["FrameBlock"]:
        """Generates a video as `generate` does, yielding each block of frames, decoded, as soon as the model has
        finished it (block-causal models: `makes_frame_blocks`). The blocks' frames, joined, are `generate`'s video
        for the same arguments. With output_path, the videos are written as the blocks come (MP4) or at the end
        (image frames), each file complete once the stream ends and none left half-written if it stops early."""
        blocks: list[FrameBlock] = []
        request = self._request(prompt, step_callback=step_callback, block_callback=blocks.append, **sampling_params)
        (run,) = self.pipeline.start_many([request.batch], self.server_args)
        if isinstance(run, Exception):
            raise run
        # The paths are all MP4s, written as the blocks come, or all image frames, written at the end.
        to_mp4 = [path for path in request.paths if path.suffix.lower() in VIDEO_FORMATS]
        held: list[list[Image.Image]] = [[] for _ in request.paths] if not to_mp4 else []
        with contextlib.ExitStack() as files:
            writers = [files.enter_context(Mp4Writer(path, request.params.fps)) for path in to_mp4]
            for _ in tqdm(range(run.total), desc="denoising", disable=not self.server_args.progress_bar):
                with torch.inference_mode():
                    run.advance(run_passes(run.predict, run.passes()))
                for block in blocks:
                    block.paths = request.paths
                    if request.paths:  # the files take PIL frames: the block's own when it holds those
                        videos = block.frames if block.output_type == "pil" else to_pil(block.pixels)
                        for i, video in enumerate(videos):
                            if writers:
                                writers[i].append(video)
                            else:
                                held[i].extend(video)
                    yield block
                blocks.clear()
        if held:
            save_outputs(held, request.paths, request.params.fps)

    def start_many(self, requests: list[dict[str, Any]]) -> list["StartedGeneration | Exception"]:
        """`generate` up to the denoising loop for several requests (each a dict of `generate`'s keyword arguments),
        sharing text encoding where that changes nothing. Each loop is the caller's to step (`run.passes()`,
        `run.advance(...)`, as the server's batching scheduler does) until `run.done`; `finish_many` then decodes.
        A request that fails gets its exception in its place."""
        outcomes: list[Any] = [attempt(functools.partial(self._request, **r)) for r in requests]
        prepared = [outcome for outcome in outcomes if isinstance(outcome, _Request)]
        runs = iter(self.pipeline.start_many([request.batch for request in prepared], self.server_args))
        for i, outcome in enumerate(outcomes):
            if isinstance(outcome, _Request):
                run = next(runs)
                outcomes[i] = run if isinstance(run, Exception) else StartedGeneration(outcome, run)
        return outcomes

    def finish_many(self, started: list["StartedGeneration"]) -> list[GenerationResult | Exception]:
        """The results of generations `start_many` began, once their loops are done, decoded together where their
        sizes match; a request that fails gets its exception in its place."""
        batches = self.pipeline.finish_many([s.run for s in started], self.server_args)
        results = []
        for generation, batch in zip(started, batches, strict=True):
            if isinstance(batch, Exception):
                results.append(batch)
                continue
            generation.request.batch = batch
            results.append(attempt(functools.partial(self._result, generation.request)))
        return results

    def _request(
        self,
        prompt: str | list[str] | None = None,
        *,
        step_callback: Callable[[int, int], None] | None = None,
        quality_check: bool = False,
        preview_every: int = 0,
        preview_callback: Callable[[int, list[Image.Image]], None] | None = None,
        block_callback: Callable[["FrameBlock"], None] | None = None,
        **sampling_params: Any,
    ) -> "_Request":
        params = self.sampling_defaults.updated(prompt=prompt, **sampling_params)
        parse_cache_spec(params.cache)  # a bad spec fails before any work
        if quality_check and params.output_type == "latent":
            raise InvalidInputError("the quality check compares pixels: drop quality_check or output_type='latent'")
        batch = Req.from_sampling_params(params)
        batch.step_callback = step_callback
        self._add_previews(batch, preview_every, preview_callback)
        if block_callback is not None:
            self._add_block_decoding(batch, params.output_type, block_callback)
        paths: list[Path] = []
        if params.output_path is not None:  # checked before any work, so a bad path costs nothing
            if params.output_type == "latent":
                raise InvalidInputError("latents cannot be saved as images: drop output_path or output_type")
            count = batch.batch_size * self.server_args.pipeline_config.images_per_sample(batch)
            paths = plan_output_paths(params.output_path, count, batch.prompt[0], params.seed, params.output_format)
            check_writable(paths)
        return _Request(params, batch, paths, quality_check)

    def _add_previews(self, batch: Req, every: int, callback: Callable[[int, list[Image.Image]], None] | None) -> None:
        if every < 0:
            raise InvalidInputError(f"preview_every must be 0 (no previews) or a number of steps, got {every}")
        if callback is None or every == 0:
            return

        def on_preview(step: int, latents: torch.Tensor) -> None:
            callback(step, to_pil(self.pipeline.decode_preview(batch, latents, self.server_args)))

        batch.preview_every, batch.preview_callback = every, on_preview

    def _add_block_decoding(self, batch: Req, output_type: str, callback: Callable[["FrameBlock"], None]) -> None:
        if not self.makes_frame_blocks:
            raise InvalidInputError(
                "this model does not make its videos in blocks (block-causal video models do, in one process): "
                "drop block_callback, or use generate"
            )
        if output_type == "latent":
            raise InvalidInputError("frame blocks are decoded frames: drop output_type='latent'")
        decoders: list = []  # made at the first block, once the latents' shape is known

        def on_block(latents: torch.Tensor) -> None:
            if not decoders:
                decoders.append(self.pipeline.block_decoder(batch, self.server_args))
            pixels = decoders[0].decode(latents)
            first_frame = decoders[0].frames_done - pixels.shape[2]
            callback(FrameBlock(pixels, first_frame, output_type))

        batch.block_callback = on_block

    def _result(self, request: "_Request") -> GenerationResult:
        params, batch, paths = request.params, request.batch, request.paths
        timings = {**batch.timings, "total": time.perf_counter() - request.started}
        if params.output_type == "latent":
            return GenerationResult(batch.output, timings, cache=batch.cache_summary)
        quality = self._quality_check(params, batch.output, timings["total"]) if request.quality_check else None
        pil_outputs = to_pil(batch.output)
        if paths:  # every rank of a parallel run checked the paths above; one writes the files
            paths = save_outputs(pil_outputs, paths, params.fps) if is_output_rank() else []
        outputs = pil_outputs if params.output_type == "pil" else to_numpy(batch.output)
        result = GenerationResult(outputs, timings, paths, cache=batch.cache_summary, quality=quality)
        if batch.output.dim() == 5:
            result.images, result.frames = [], outputs
        return result

    def _quality_check(self, params: SamplingParams, output: torch.Tensor, seconds: float) -> QualityReport:
        """Runs the exact path with the same seed and compares `output` (decoded pixels) with its output."""
        exact = Req.from_sampling_params(params.updated(**EXACT_PATH))
        exact.exact_path = True
        start = time.perf_counter()
        exact = self.pipeline.forward(exact, self.server_args)
        exact_seconds = time.perf_counter() - start
        is_demo = Path(self.server_args.model_path).resolve() == Path(DEMO_MODEL_PATH).resolve()
        prompts = [prompt for prompt in exact.prompt for _ in range(exact.num_outputs_per_prompt)]
        return compare(to_numpy(output), to_numpy(exact.output), seconds, exact_seconds, prompts, demo=is_demo)

    def close(self) -> None:
        """Releases the model's processes: nothing in one process; a parallel run's client stops its ranks."""

    def __enter__(self) -> "DiffGenerator":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # --- LoRA adapters (easel/runtime/pipelines_core/lora_pipeline.py) -----------------------------------------
    def load_lora(
        self, path: str | Path, name: str | None = None, strength: float = 1.0, target: str | list[str] = "transformer"
    ) -> dict[str, Any]:
        """Loads a LoRA file (Diffusers/PEFT or kohya/ComfyUI) and activates it; returns its `list_loras` entry.

        `target`: "transformer", "transformer_2" (Wan2.2's low-noise expert) or "both".
        """
        loaded = self.pipeline.load_lora(path, name=name, strength=strength, target=target)
        return next(entry for entry in self.list_loras() if entry["name"] == loaded.name)

    def set_lora(self, adapters: str | list[str] | dict[str, float] | None, strengths: Any = None) -> None:
        """Chooses the active adapters: a name, names, or {name: strength}; None turns them all off."""
        self.pipeline.set_lora(adapters, strengths)

    def merge_lora(self) -> None:
        """Writes the active adapters into the weights (no per-step cost); `set_lora` then re-merges."""
        self.pipeline.merge_lora()

    def unmerge_lora(self) -> None:
        """Restores the original weights bit for bit; adapters apply at run time again."""
        self.pipeline.unmerge_lora()

    def unload_lora(self, name: str | None = None) -> None:
        """Removes adapter `name`, or all of them."""
        self.pipeline.unload_lora(name)

    def list_loras(self) -> list[dict[str, Any]]:
        """The loaded adapters, with their strengths, targets and any keys of their files that matched nothing."""
        return self.pipeline.list_loras()
