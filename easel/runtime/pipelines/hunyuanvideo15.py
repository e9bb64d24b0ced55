"""HunyuanVideo-1.5 text-to-video, composed from the standard stages (the modular style).

The two text encoders are text encoder configs, the zero condition channels and SigLIP tokens of text-to-video are
DiT kwargs of `HunyuanVideo15PipelineConfig`; what is left here is the schedule: sigmas evenly from 1 towards 0,
shifted by the scheduler's own shift.
"""

from typing import Any

import numpy as np

from easel.runtime.pipelines_core.composed_pipeline_base import ComposedPipelineBase
from easel.runtime.pipelines_core.schedule_batch import Req
from easel.runtime.server_args import ServerArgs


def prepare_sigmas(batch: Req, scheduler, server_args: ServerArgs) -> dict[str, Any]:
    steps = batch.num_inference_steps
    return {"sigmas": np.linspace(1.0, 0.0, steps + 1)[:-1]}


class HunyuanVideo15Pipeline(ComposedPipelineBase):
    """HunyuanVideo-1.5 T2V: Qwen2.5-VL and ByT5 text encoders, the HunyuanVideo-1.5 DiT, its 32-channel VAE. The
    folder's `guider` (Diffusers' ClassifierFreeGuidance) is not loaded: CFG follows the request's guidance_scale."""

    pipeline_name = "HunyuanVideo15Pipeline"
    _required_config_modules = [
        "text_encoder",
        "tokenizer",
        "text_encoder_2",
        "tokenizer_2",
        "vae",
        "transformer",
        "scheduler",
    ]

    def create_pipeline_stages(self, server_args: ServerArgs) -> None:
        self.add_standard_t2i_stages(prepare_extra_timestep_kwargs=[prepare_sigmas])


class HunyuanVideo15ImageToVideoPipeline(HunyuanVideo15Pipeline):
    """HunyuanVideo-1.5 I2V: as T2V, with the first frame through SigLIP (`image_encoder`, `feature_extractor`)
    and the VAE."""

    pipeline_name = "HunyuanVideo15ImageToVideoPipeline"
    _required_config_modules = [*HunyuanVideo15Pipeline._required_config_modules, "image_encoder", "feature_extractor"]
    image_processor_module = "feature_extractor"

    def create_pipeline_stages(self, server_args: ServerArgs) -> None:
        self.add_standard_ti2v_stages(prepare_extra_timestep_kwargs=[prepare_sigmas])


EntryClass = [HunyuanVideo15Pipeline, HunyuanVideo15ImageToVideoPipeline]
