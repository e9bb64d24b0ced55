"""`ComposedPipelineBase`: a model's pipeline as a list of stages over modules loaded from a Diffusers folder."""

import dataclasses
import time
from pathlib import Path
from typing import Any

import torch

from easel.errors import ModelLoadError
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
from easel.runtime.pipelines_core.stages.denoising import DenoisingRun
from easel.runtime.pipelines_core.stages.timestep_preparation import TimestepKwargsFn
from easel.runtime.server_args import ServerArgs


class ComposedPipelineBase:
    """Loads the modules a model needs, wires its stages, and runs a request through them."""

    pipeline_name: str = ""  # equals `_class_name` in model_index.json
    _required_config_modules: list[str] = []
    _optional_config_modules: list[str] = []  # loaded when model_index.json names them (Wan2.2's transformer_2)

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

    def start(self, batch: Req, server_args: ServerArgs) -> DenoisingRun:
        """Runs the stages before denoising and returns the request's denoising loop, for a caller that steps it
        (the server's batching scheduler); `finish` then runs the stages after it."""
        before = self.stages[: self._denoising_index()]
        batch = self._run_stages(before, batch, server_args)
        with torch.inference_mode():
            return self.stages[len(before)].begin(batch, server_args)

    def finish(self, run: DenoisingRun, server_args: ServerArgs) -> Req:
        """Runs the stages after the stepped-through loop `run`; its stage's timing is the loop's wall time."""
        batch = run.finish()
        batch.timings[DenoisingStage.__name__] = time.perf_counter() - run.started
        return self._run_stages(self.stages[self._denoising_index() + 1 :], batch, server_args)

    def decode_preview(self, batch: Req, latents: torch.Tensor, server_args: ServerArgs) -> torch.Tensor:
        """Pixels of `latents` (e.g. a step's predicted result) through the stages after denoising, as the request
        would decode them, its own batch untouched."""
        preview = dataclasses.replace(batch, latents=latents, output_type="pil", timings={})
        return self._run_stages(self.stages[self._denoising_index() + 1 :], preview, server_args).output

    def _denoising_index(self) -> int:
        return next(i for i, stage in enumerate(self.stages) if isinstance(stage, DenoisingStage))

    @staticmethod
    def _run_stages(stages: list[PipelineStage], batch: Req, server_args: ServerArgs) -> Req:
        with torch.inference_mode(), exact_layers(batch.exact_path):
            for stage in stages:
                batch = stage(batch, server_args)
        return batch

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

    def _add_standard_stages(self, prepare_extra_timestep_kwargs, encode_images: bool) -> None:
        self.add_stage(InputValidationStage())
        self.add_stage(self._text_encoding_stage())
        if encode_images and "image_encoder" in self.modules:
            self.add_stage(ImageEncodingStage(self.get_module("image_encoder"), self.get_module("image_processor")))
        if encode_images:
            self.add_stage(ImageVAEEncodingStage(self.get_module("vae")))
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
