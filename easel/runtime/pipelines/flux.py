"""FLUX.1 text-to-image (dev and schnell), composed from the standard stages: the worked example of style B."""

from collections.abc import Mapping
from typing import Any

import numpy as np

from easel.runtime.pipelines_core.composed_pipeline_base import ComposedPipelineBase
from easel.runtime.pipelines_core.lora_pipeline import LoRAPipeline
from easel.runtime.pipelines_core.schedule_batch import Req
from easel.runtime.server_args import ServerArgs


def prepare_sigmas(batch: Req, scheduler, server_args: ServerArgs) -> dict[str, Any]:
    """FLUX samples sigmas evenly from 1 to 1/steps (before the shift), unless the scheduler brings its own."""
    if scheduler.config.get("use_flow_sigmas", False):
        return {}
    steps = batch.num_inference_steps
    return {"sigmas": np.linspace(1.0, 1 / steps, steps)}


def flux_mu(image_seq_len: int, config: Mapping[str, Any]) -> float:
    """FLUX's resolution-dependent shift for a scheduler's `config`: mu grows linearly with the number of image
    tokens (the sigmas shift by e^mu)."""
    base_len, max_len = config.get("base_image_seq_len", 256), config.get("max_image_seq_len", 4096)
    base_shift, max_shift = config.get("base_shift", 0.5), config.get("max_shift", 1.15)
    slope = (max_shift - base_shift) / (max_len - base_len)
    return image_seq_len * slope + (base_shift - slope * base_len)


def prepare_mu(batch: Req, scheduler, server_args: ServerArgs) -> dict[str, Any]:
    """`flux_mu` for the requested size."""
    pixels_per_token = server_args.pipeline_config.pixel_multiple()  # the VAE's compression times the patch side
    image_seq_len = (batch.height // pixels_per_token) * (batch.width // pixels_per_token)
    return {"mu": flux_mu(image_seq_len, scheduler.config)}


class FluxPipeline(LoRAPipeline, ComposedPipelineBase):
    """FLUX.1-dev / -schnell: CLIP + T5 text encoders, the FLUX DiT, a 16-channel VAE."""

    pipeline_name = "FluxPipeline"
    _required_config_modules = [
        "text_encoder",
        "text_encoder_2",
        "tokenizer",
        "tokenizer_2",
        "vae",
        "transformer",
        "scheduler",
    ]

    def create_pipeline_stages(self, server_args: ServerArgs) -> None:
        self.add_standard_t2i_stages(prepare_extra_timestep_kwargs=[prepare_sigmas, prepare_mu])


EntryClass = [FluxPipeline]
