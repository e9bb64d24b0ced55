"""`ImageEncodingStage`: input images to image-encoder embeddings (Wan2.1-I2V's CLIP image tokens)."""

import torch

from easel.runtime.pipelines_core.schedule_batch import Req
from easel.runtime.pipelines_core.stages.base import PipelineStage
from easel.runtime.server_args import ServerArgs


class ImageEncodingStage(PipelineStage):
    """Runs the image encoder on the input images; the states the config picks condition the DiT."""

    input_fields = ("condition_images",)
    output_fields = ("image_embeds",)

    def __init__(self, image_encoder: torch.nn.Module, image_processor):
        self.image_encoder = image_encoder
        self.image_processor = image_processor

    def forward(self, batch: Req, server_args: ServerArgs) -> Req:
        pixels = self.image_processor(images=batch.condition_images, return_tensors="pt")
        pixels = pixels.to(self.image_encoder.device)
        outputs = self.image_encoder(**pixels, output_hidden_states=True)
        states = server_args.pipeline_config.image_encoder_states(outputs)  # (N, tokens, D)
        batch.image_embeds = [states.repeat(batch.batch_size, 1, 1)]
        return batch
