"""Qwen-Image-Layered: one model-specific stage, then the standard denoising and decoding (the hybrid style)."""

from easel.runtime.pipelines_core.composed_pipeline_base import ComposedPipelineBase
from easel.runtime.pipelines_core.lora_pipeline import LoRAPipeline
from easel.runtime.pipelines_core.stages import DenoisingStage
from easel.runtime.pipelines_core.stages.model_specific_stages.qwen_image_layered import (
    QwenImageLayeredBeforeDenoisingStage,
)
from easel.runtime.server_args import ServerArgs


class QwenImageLayeredPipeline(LoRAPipeline, ComposedPipelineBase):
    """Decomposes an RGBA image into RGBA layers: Qwen-Image's encoder and MMDiT (with the layer-3D rotary and the
    RGB/RGBA condition), an RGBA VAE. `processor` serves Diffusers' captioning of an image given no prompt, which
    Easel does not do (it asks for a prompt); it is loaded because the checkpoint lists it."""

    pipeline_name = "QwenImageLayeredPipeline"
    _required_config_modules = ["processor", "scheduler", "text_encoder", "tokenizer", "transformer", "vae"]

    def create_pipeline_stages(self, server_args: ServerArgs) -> None:
        self.add_stage(
            QwenImageLayeredBeforeDenoisingStage(
                vae=self.get_module("vae"),
                text_encoder=self.get_module("text_encoder"),
                tokenizer=self.get_module("tokenizer"),
                scheduler=self.get_module("scheduler"),
            )
        )
        self.add_stage(DenoisingStage(self.get_module("transformer"), self.get_module("scheduler")))
        self.add_standard_decoding_stage()


EntryClass = [QwenImageLayeredPipeline]
