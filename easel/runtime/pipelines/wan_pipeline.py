"""Wan text-to-video (Wan2.1 T2V, Wan2.2-A14B with two experts), composed from the standard stages."""

from easel.runtime.pipelines_core.composed_pipeline_base import ComposedPipelineBase
from easel.runtime.pipelines_core.lora_pipeline import LoRAPipeline
from easel.runtime.server_args import ServerArgs


class WanPipeline(LoRAPipeline, ComposedPipelineBase):
    """Wan: a UMT5 text encoder, the Wan DiT (and Wan2.2-A14B's low-noise expert), the causal 3D Wan VAE."""

    pipeline_name = "WanPipeline"
    _required_config_modules = ["text_encoder", "tokenizer", "vae", "transformer", "scheduler"]
    _optional_config_modules = ["transformer_2"]

    def create_pipeline_stages(self, server_args: ServerArgs) -> None:
        # UniPC derives its flow sigmas from its own config: no timestep hooks.
        self.add_standard_t2i_stages()


EntryClass = [WanPipeline]
