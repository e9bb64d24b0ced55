"""GLM-Image: one model-specific stage (the autoregressive prior and everything else before the loop), then the
standard denoising and decoding: the hybrid style, as the design's example of it."""

from easel.runtime.pipelines_core.composed_pipeline_base import ComposedPipelineBase
from easel.runtime.pipelines_core.stages import DenoisingStage
from easel.runtime.pipelines_core.stages.model_specific_stages.glm_image import GlmImageBeforeDenoisingStage
from easel.runtime.server_args import ServerArgs


class GlmImagePipeline(ComposedPipelineBase):
    """Text (and condition images) to image: GLM-Image's vision-language model writes the prior codes, ByT5 encodes
    the quoted text, the GLM-Image DiT decodes the codes into latents, a 16-channel VAE into pixels."""

    pipeline_name = "GlmImagePipeline"
    _required_config_modules = [
        "tokenizer",
        "processor",
        "text_encoder",
        "vision_language_encoder",
        "vae",
        "transformer",
        "scheduler",
    ]

    def create_pipeline_stages(self, server_args: ServerArgs) -> None:
        self.add_stage(
            GlmImageBeforeDenoisingStage(
                processor=self.get_module("processor"),
                vision_language_encoder=self.get_module("vision_language_encoder"),
                vae=self.get_module("vae"),
                transformer=self.get_module("transformer"),
                scheduler=self.get_module("scheduler"),
                text_encoding=self._text_encoding_stage(),
            )
        )
        self.add_stage(DenoisingStage(self.get_module("transformer"), self.get_module("scheduler")))
        self.add_standard_decoding_stage()


EntryClass = [GlmImagePipeline]
