"""Z-Image text-to-image (Z-Image and Z-Image-Turbo), composed from the standard stages (modular style)."""

from easel.runtime.pipelines.flux import prepare_mu, prepare_sigmas
from easel.runtime.pipelines_core.composed_pipeline_base import ComposedPipelineBase
from easel.runtime.pipelines_core.lora_pipeline import LoRAPipeline
from easel.runtime.server_args import ServerArgs


class ZImagePipeline(LoRAPipeline, ComposedPipelineBase):
    """Z-Image: a Qwen3 text encoder, the single-stream S3-DiT, FLUX.1's VAE."""

    pipeline_name = "ZImagePipeline"
    _required_config_modules = ["text_encoder", "tokenizer", "vae", "transformer", "scheduler"]

    def create_pipeline_stages(self, server_args: ServerArgs) -> None:
        # The same sigma schedule and resolution shift as FLUX (the shift applies only to dynamic schedulers).
        self.add_standard_t2i_stages(prepare_extra_timestep_kwargs=[prepare_sigmas, prepare_mu])


EntryClass = [ZImagePipeline]
