"""Few-step distilled Wan (FastWan's DMD, self-forcing's block-causal DMD): Wan's modules, a DMD denoising stage.

The settings each kind assumes of its checkpoints are in easel/configs/pipeline_configs/wan_dmd.py.
"""

from easel.runtime.pipelines_core.composed_pipeline_base import ComposedPipelineBase
from easel.runtime.pipelines_core.lora_pipeline import LoRAPipeline
from easel.runtime.pipelines_core.stages import (
    CausalDMDDenoisingStage,
    DmdDenoisingStage,
    LatentPreparationStage,
)
from easel.runtime.server_args import ServerArgs


class WanDMDPipeline(LoRAPipeline, ComposedPipelineBase):
    """FastWan: text (and, for FastWan2.2-TI2V, an optional first frame) to video in the config's few DMD steps."""

    pipeline_name = "WanDMDPipeline"
    # The folder's scheduler goes unused: the step list and its sigmas come from the pipeline config.
    _required_config_modules = ["text_encoder", "tokenizer", "vae", "transformer"]
    denoising_stage_cls = DmdDenoisingStage

    def create_pipeline_stages(self, server_args: ServerArgs) -> None:
        takes_images = server_args.pipeline_config.input_image_range()[1] > 0
        self.add_standard_conditioning_stages(encode_images=takes_images)
        self.add_stage(LatentPreparationStage())
        self.add_stage(self.denoising_stage_cls(self.get_module("transformer")))
        self.add_standard_decoding_stage()


class WanCausalDMDPipeline(WanDMDPipeline):
    """Self-forcing Wan: text (or an image and text) to video, a block of frames after another, streamable."""

    pipeline_name = "WanCausalDMDPipeline"
    denoising_stage_cls = CausalDMDDenoisingStage


EntryClass = [WanDMDPipeline, WanCausalDMDPipeline]
