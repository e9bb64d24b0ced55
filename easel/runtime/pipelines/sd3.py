"""Stable Diffusion 3 / 3.5 text-to-image, composed from the standard stages (modular style)."""

from easel.runtime.pipelines.flux import prepare_mu
from easel.runtime.pipelines_core.composed_pipeline_base import ComposedPipelineBase
from easel.runtime.pipelines_core.lora_pipeline import LoRAPipeline
from easel.runtime.server_args import ServerArgs


class StableDiffusion3Pipeline(LoRAPipeline, ComposedPipelineBase):
    """SD3 / SD3.5: three text encoders (CLIP-L, CLIP-G, T5), the MMDiT, a 16-channel VAE."""

    pipeline_name = "StableDiffusion3Pipeline"
    _required_config_modules = [
        "text_encoder",
        "text_encoder_2",
        "text_encoder_3",
        "tokenizer",
        "tokenizer_2",
        "tokenizer_3",
        "vae",
        "transformer",
        "scheduler",
    ]

    def create_pipeline_stages(self, server_args: ServerArgs) -> None:
        # SD3's schedulers shift by a fixed factor; mu only matters to one configured for dynamic shifting.
        self.add_standard_t2i_stages(prepare_extra_timestep_kwargs=[prepare_mu])


EntryClass = [StableDiffusion3Pipeline]
