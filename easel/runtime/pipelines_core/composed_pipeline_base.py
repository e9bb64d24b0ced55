"""`ComposedPipelineBase`: a model's pipeline as a list of stages over modules loaded from a Diffusers folder."""

import dataclasses
import functools
import time
from pathlib import Path
from typing import Any

import torch

from easel.errors import ModelLoadError, attempt
from easel.runtime.layers.exact_path import exact_layers
from easel.runtime.loader.component_loader import load_pipeline_modules, read_model_index
from easel.runtime.pipelines_core.schedule_batch import Req
from easel.runtime.pipelines_core.stages import (
    DecodingStage,
    DenoisingStage,
    ImageEncodingStage,
    ImageVAEEncodingStage,
    InputValidationStage,
    LatentPreparationStage,
    PipelineStage,
    TextEncodingStage,
    TimestepPreparationStage,
)
from easel.runtime.pipelines_core.stages.decoding import BlockDecoder
from easel.runtime.pipelines_core.stages.denoising import DenoisingRun
from easel.runtime.pipelines_core.stages.timestep_preparation import TimestepKwargsFn
from easel.runtime.server_args import ServerArgs


class ComposedPipelineBase:
    """Loads the modules a model needs, wires its stages, and runs a request through them."""

    pipeline_name: str = ""  # equals `_class_name` in model_index.json
    _required_config_modules: list[str] = []
    _optional_config_modules: list[str] = []  # loaded when model_index.json names them (Wan2.2's transformer_2)
    image_processor_module = "image_processor"  # the image encoder's processor, as model_index.json names it

    def __init__(self, model_path: str | Path, server_args: ServerArgs, modules: dict[str, Any] | None = None):
        self.model_path = Path(model_path)
        self.server_args = server_args
        self.modules = self.load_modules(server_args) if modules is None else modules
        self.stages: list[PipelineStage] = []
        self.create_pipeline_stages(server_args)

    def load_modules(self, server_args: ServerArgs) -> dict[str, Any]:
        index = read_model_index(self.model_path)
        optional = [name for name in self._optional_config_modules if (index.get(name) or [None])[0] is not None]
        return load_pipeline_modules(self.model_path, index, self._required_config_modules + optional, server_args)

    def get_module(self, name: str) -> Any:
        if name not in self.modules:
            raise ModelLoadError(f"{self.pipeline_name} has no module {name!r}; it has {sorted(self.modules)}")
        return self.modules[name]

    def create_pipeline_stages(self, server_args: ServerArgs) -> None:
        raise NotImplementedError(f"{type(self).__name__} must add its stages")

    def add_stage(self, stage: PipelineStage) -> None:
        self.stages.append(stage)

    def forward(self, batch: Req, server_args: ServerArgs) -> Req:
        """Runs the request through every stage, without autograd (and a quality check's reference run exactly)."""
        return self._run_stages(self.stages, batch, server_args)

    def start_many(self, batches: list[Req], server_args: ServerArgs) -> list[DenoisingRun | Exception]:
        """Runs the stages before denoising for several requests (sharing work where a stage can) and returns each
        request's denoising loop, for a caller that steps it (the server's batching scheduler), or what it failed
        with; `finish_many` then runs the stages after it."""
        before = self.stages[: self._denoising_index()]
        outcomes = self._run_stages_many(before, batches, server_args)
        with torch.inference_mode():
            for i, outcome in enumerate(outcomes):
                if isinstance(outcome, Req):
                    outcomes[i] = attempt(functools.partial(self.stages[len(before)].begin, outcome, server_args))
        return outcomes

    def finish_many(self, runs: list[DenoisingRun], server_args: ServerArgs) -> list[Req | Exception]:
        """Runs the stages after the stepped-through loops `runs`; their stage's timing is each loop's wall time."""
        batches = []
        for run in runs:
            batch = run.finish()
            batch.timings[DenoisingStage.__name__] = time.perf_counter() - run.started
            batches.append(batch)
        return self._run_stages_many(self.stages[self._denoising_index() + 1 :], batches, server_args)

    def decode_preview(self, batch: Req, latents: torch.Tensor, server_args: ServerArgs) -> torch.Tensor:
        """Pixels of `latents` (e.g. a step's predicted result) through the stages after denoising, as the request
        would decode them, its own batch untouched."""
        preview = dataclasses.replace(batch, latents=latents, output_type="pil", timings={})
        return self._run_stages(self.stages[self._denoising_index() + 1 :], preview, server_args).output

    @property
    def makes_frame_blocks(self) -> bool:
        """Whether the denoising stage finishes the video a block of frames at a time (`Req.block_callback`)."""
        return self.stages[self._denoising_index()].makes_frame_blocks

    def block_decoder(self, batch: Req, server_args: ServerArgs) -> BlockDecoder:
        """The request's decoder of finished frame blocks, one after another (see `makes_frame_blocks`)."""
        decoding = next(stage for stage in self.stages if isinstance(stage, DecodingStage))
        return decoding.block_decoder(batch, server_args)

    def _denoising_index(self) -> int:
        return next(i for i, stage in enumerate(self.stages) if isinstance(stage, DenoisingStage))

    def _run_stages(self, stages: list[PipelineStage], batch: Req, server_args: ServerArgs) -> Req:
        (outcome,) = self._run_stages_many(stages, [batch], server_args)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    @staticmethod
    def _run_stages_many(
        stages: list[PipelineStage], batches: list[Req], server_args: ServerArgs
    ) -> list[Req | Exception]:
        """Each batch through the stages, or the exception it failed with; a stage that shares work across
        requests runs them together (a failure there fails them all), any other one request at a time."""
        outcomes: list[Req | Exception] = list(batches)
        with torch.inference_mode(), exact_layers(any(batch.exact_path for batch in batches)):
            for stage in stages:
                alive = [i for i, outcome in enumerate(outcomes) if isinstance(outcome, Req)]
                if stage.shares_work_across_requests and len(alive) > 1:
                    done = attempt(functools.partial(stage.run_many, [outcomes[i] for i in alive], server_args))
                    for n, i in enumerate(alive):
                        outcomes[i] = done if isinstance(done, Exception) else done[n]
                    continue
                for i in alive:
                    outcomes[i] = attempt(functools.partial(stage, outcomes[i], server_args))
        return outcomes

    # --- standard compositions (the modular style) ------------------------------------------------------------
    def add_standard_t2i_stages(self, prepare_extra_timestep_kwargs: list[TimestepKwargsFn] | tuple = ()) -> None:
        """Text-to-image: validate, encode the prompt, schedule, draw noise, denoise, decode."""
        self._add_standard_stages(prepare_extra_timestep_kwargs, encode_images=False)

    def add_standard_ti2i_stages(self, prepare_extra_timestep_kwargs: list[TimestepKwargsFn] | tuple = ()) -> None:
        """Text+image-to-image: as text-to-image, with the input images VAE-encoded before the noise is drawn."""
        self._add_standard_stages(prepare_extra_timestep_kwargs, encode_images=True)

    def add_standard_ti2v_stages(self, prepare_extra_timestep_kwargs: list[TimestepKwargsFn] | tuple = ()) -> None:
        """Text+image-to-video: as text+image-to-image, with the input image also through the image encoder where
        the model has one (Wan2.1-I2V's CLIP)."""
        self._add_standard_stages(prepare_extra_timestep_kwargs, encode_images=True)

    def add_standard_decoding_stage(self) -> None:
        self.add_stage(DecodingStage(self.get_module("vae")))

    def add_standard_conditioning_stages(self, encode_images: bool) -> None:
        """Validate the request, encode its prompt and, with `encode_images`, its input images (through the image
        encoder where the model has one, and the VAE): the stages before any noise or schedule."""
        self.add_stage(InputValidationStage())
        self.add_stage(self._text_encoding_stage())
        if encode_images and "image_encoder" in self.modules:
            processor = self.get_module(self.image_processor_module)
            self.add_stage(ImageEncodingStage(self.get_module("image_encoder"), processor))
        if encode_images:
            self.add_stage(ImageVAEEncodingStage(self.get_module("vae")))

    def _add_standard_stages(self, prepare_extra_timestep_kwargs, encode_images: bool) -> None:
        self.add_standard_conditioning_stages(encode_images)
        self.add_stage(TimestepPreparationStage(self.get_module("scheduler"), prepare_extra_timestep_kwargs))
        self.add_stage(LatentPreparationStage())
        transformer_2 = self.modules.get("transformer_2")  # a second, low-noise expert where the model has one
        self.add_stage(DenoisingStage(self.get_module("transformer"), self.get_module("scheduler"), transformer_2))
        self.add_standard_decoding_stage()

    def _text_encoding_stage(self) -> TextEncodingStage:
        configs = self.server_args.pipeline_config.text_encoder_configs
        return TextEncodingStage(
            text_encoders=[self.get_module(cfg.text_encoder) for cfg in configs],
            tokenizers=[self.get_module(cfg.tokenizer) for cfg in configs],
            encoder_configs=configs,
        )
