"""Wan text-to-video and image-to-video (Wan2.1, Wan2.2-A14B with two experts), from the standard stages."""

from easel.runtime.pipelines_core.composed_pipeline_base import ComposedPipelineBase
from easel.runtime.pipelines_core.lora_pipeline import LoRAPipeline
from easel.runtime.server_args import ServerArgs


class WanPipeline(LoRAPipeline, ComposedPipelineBase):
    """Wan: a UMT5 text encoder, the Wan DiT (and Wan2.2-A14B's low-noise expert), the causal 3D Wan VAE."""

    pipeline_name = "WanPipeline"
    _required_config_modules = ["text_encoder", "tokenizer", "vae", "transformer", "scheduler"]
    _optional_config_modules = ["transformer_2"]

    def create_pipeline_stages(self, server_args: ServerArgs) -> None:
        # UniPC derives its flow sigmas from its own config: no timestep hooks. Wan2.2-TI2V-5B (expand_timesteps)
        # also takes an optional first frame, so it gets the image stages.
        if server_args.pipeline_config.expand_timesteps:
            self.add_standard_ti2v_stages()
        else:
            self.add_standard_t2i_stages()


class WanImageToVideoPipeline(WanPipeline):
    """Wan image-to-video: WanPipeline's modules plus, for Wan2.1, a CLIP image encoder."""

    pipeline_name = "WanImageToVideoPipeline"
    _optional_config_modules = ["transformer_2", "image_encoder", "image_processor"]

    def create_pipeline_stages(self, server_args: ServerArgs) -> None:
        self.add_standard_ti2v_stages()


EntryClass = [WanPipeline, WanImageToVideoPipeline]
