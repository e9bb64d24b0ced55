"""`ImageVAEEncodingStage`: input images to normalized VAE latents in the DiT's layout."""

import torch

from easel.configs.pipeline_configs.base import IMAGE_TASKS
from easel.runtime.pipelines_core.schedule_batch import Req
from easel.runtime.pipelines_core.stages.base import PipelineStage
from easel.runtime.server_args import ServerArgs


class ImageVAEEncodingStage(PipelineStage):
    """Encodes each input image (its latent distribution's mode, as Diffusers' editing pipelines take it).

    The latents are normalized by the config (by default the inverse of decoding's denormalization), and a video
    VAE's single frame is dropped, so that they have the (B, C, h, w) layout of the noise before `pack_latents`.
    """

    def verify_output(self, batch: Req, server_args: ServerArgs) -> list[str]:
        # Some models take an image optionally (Wan2.2-TI2V); latents are owed only for images given.
        return ["image_latents"] if batch.condition_images and not batch.image_latents else []

    def __init__(self, vae: torch.nn.Module):
        self.vae = vae

    def forward(self, batch: Req, server_args: ServerArgs) -> Req:
        config = server_args.pipeline_config
        param = next(self.vae.parameters())
        for image in batch.condition_images:
            pixels = config.preprocess_condition_image(image, batch).to(param.device, param.dtype)
            latents = self.vae.encode(pixels).latent_dist.mode()  # (1, C, h, w), or (1, C, 1, h, w): a video VAE
            latents = config.normalize_image_latents(latents)
            if config.task_type in IMAGE_TASKS and latents.dim() == 5:  # a video VAE encoding a still image
                latents = latents[:, :, 0]
            latents = latents.float().repeat(batch.batch_size, *[1] * (latents.dim() - 1))
            batch.image_latent_shapes.append(tuple(latents.shape))
            batch.image_latents.append(config.pack_image_latents(latents, batch))
        return batch
