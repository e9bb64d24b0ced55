"""FLUX.1 Kontext image editing: FLUX's stages plus the VAE-encoded input image (modular style)."""

from easel.runtime.pipelines.flux import prepare_mu, prepare_sigmas
from easel.runtime.pipelines_core.composed_pipeline_base import ComposedPipelineBase
from easel.runtime.pipelines_core.lora_pipeline import LoRAPipeline
from easel.runtime.server_args import ServerArgs


class FluxKontextPipeline(LoRAPipeline, ComposedPipelineBase):
    """FLUX.1-Kontext-dev: the FLUX DiT attends to the prompt and to the tokens of the input image."""

    pipeline_name = "FluxKontextPipeline"
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
        self.add_standard_ti2i_stages(prepare_extra_timestep_kwargs=[prepare_sigmas, prepare_mu])


EntryClass = [FluxKontextPipeline]
