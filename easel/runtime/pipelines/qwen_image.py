"""Qwen-Image text-to-image and image editing, composed from the standard stages (modular style)."""

from easel.runtime.pipelines.flux import prepare_mu, prepare_sigmas
from easel.runtime.pipelines_core.composed_pipeline_base import ComposedPipelineBase
from easel.runtime.pipelines_core.lora_pipeline import LoRAPipeline
from easel.runtime.server_args import ServerArgs


class QwenImagePipeline(LoRAPipeline, ComposedPipelineBase):
    """Qwen-Image: a Qwen2.5-VL text encoder, the Qwen-Image MMDiT, a 16-channel Wan-style VAE."""

    pipeline_name = "QwenImagePipeline"
    _required_config_modules = ["text_encoder", "tokenizer", "vae", "transformer", "scheduler"]

    def create_pipeline_stages(self, server_args: ServerArgs) -> None:
        # FLUX's sigma schedule and resolution shift, with Qwen-Image's scheduler constants.
        self.add_standard_t2i_stages(prepare_extra_timestep_kwargs=[prepare_sigmas, prepare_mu])


class QwenImageEditPipeline(QwenImagePipeline):
    """Qwen-Image-Edit: the input image goes through the Qwen2.5-VL processor and encoder with the prompt, and
    through the VAE into reference latents that follow the generated image's in the DiT's sequence."""

    pipeline_name = "QwenImageEditPipeline"
    _required_config_modules = ["text_encoder", "tokenizer", "processor", "vae", "transformer", "scheduler"]

    def create_pipeline_stages(self, server_args: ServerArgs) -> None:
        self.add_standard_ti2i_stages(prepare_extra_timestep_kwargs=[prepare_sigmas, prepare_mu])


class QwenImageEditPlusPipeline(QwenImageEditPipeline):
    """Qwen-Image-Edit-2509 / -2511: as Qwen-Image-Edit with several input images (their differences are in
    `QwenImageEditPlusPipelineConfig` and, for 2511, the DiT's `zero_cond_t`)."""

    pipeline_name = "QwenImageEditPlusPipeline"


EntryClass = [QwenImagePipeline, QwenImageEditPipeline, QwenImageEditPlusPipeline]
