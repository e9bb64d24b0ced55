"""Qwen-Image-Layered: an RGBA image decomposed into RGBA layers, generated together as the frames of one latent.

The noise holds `layers + 1` frames, each packed into tokens as Qwen-Image packs an image: frame 0 is the composite
(the input image regenerated), frames 1.. are the layers. The input image's latents follow them in the sequence.
Decoding drops frame 0 and decodes each layer as an RGBA image of its own.
"""

import dataclasses
import math

import torch

from easel.configs.pipeline_configs.base import ModelTaskType, PipelineConfig
from easel.configs.pipeline_configs.flux import PATCH
from easel.configs.pipeline_configs.qwen_image import QwenImagePipelineConfig
from easel.runtime.pipelines_core.schedule_batch import Req

# Output sides are multiples of this (Diffusers' `calculate_dimensions`).
LAYERED_SIZE_MULTIPLE = 32


def layered_output_size(aspect_ratio: float, resolution: int) -> tuple[int, int]:
    """(height, width) of about resolution x resolution pixels at `aspect_ratio` (width / height), each side
    rounded to a multiple of 32, with the very operations of Diffusers' `calculate_dimensions`."""
    width = math.sqrt(resolution * resolution * aspect_ratio)
    height = width / aspect_ratio
    multiple = LAYERED_SIZE_MULTIPLE
    return round(height / multiple) * multiple, round(width / multiple) * multiple


@dataclasses.dataclass
class QwenImageLayeredPipelineConfig(QwenImagePipelineConfig):
    """Qwen/Qwen-Image-Layered. The request's own sampling parameters (`batch.extra`): `layers`, `resolution`,
    `cfg_normalize` (see `QwenImageLayeredSamplingParams`).

    Output: one RGBA image per layer, `layers` per sample, sample after sample (a flat list; Diffusers returns one
    list of layers per prompt).
    """

    task_type: ModelTaskType = ModelTaskType.TI2I
    makes_transparent_images = True
    min_input_images: int = 1
    max_input_images: int = 1

    # --- the request ------------------------------------------------------------------------------------------
    def prepare_request(self, batch: Req) -> None:
        """The output takes the input image's aspect ratio at the `resolution` bucket; height and width as
        requested are ignored, as Diffusers' pipeline takes none."""
        width, height = batch.condition_images[0].size
        batch.height, batch.width = layered_output_size(width / height, batch.extra["resolution"])

    def images_per_sample(self, batch: Req) -> int:
        return batch.extra["layers"]

    # --- latents --------------------------------------------------------------------------------------------
    def prepare_latent_shape(self, batch: Req) -> tuple[int, ...]:
        """(B, layers + 1, C, h, w): the composite, then each layer."""
        b, c, h, w = super().prepare_latent_shape(batch)
        return b, batch.extra["layers"] + 1, c, h, w

    def pack_latents(self, latents: torch.Tensor, batch: Req) -> torch.Tensor:
        """(B, F, C, h, w) -> (B, F * h/2 * w/2, C * 4): frame after frame, each packed as FLUX packs an image."""
        b, f, c, h, w = latents.shape
        packed = super().pack_latents(latents.reshape(b * f, c, h, w), batch)  # (B * F, h/2 * w/2, C * 4)
        return packed.reshape(b, -1, c * PATCH * PATCH)

    def unpack_latents(self, latents: torch.Tensor, batch: Req) -> torch.Tensor:
        """The layers as the VAE decodes them, (B * layers, C, 1, h, w), frame 0 (the composite) dropped."""
        b, frames, c, h, w = batch.raw_latent_shape
        latents = latents.view(b, frames, h // PATCH, w // PATCH, c, PATCH, PATCH)
        latents = latents.permute(0, 1, 4, 2, 5, 3, 6).reshape(b, frames, c, h, w)
        return latents[:, 1:].reshape(b * (frames - 1), c, 1, h, w)

    # --- denoising (the prediction of the input image's tokens is cut off as FLUX Kontext's is) ----------------
    def image_grids(self, batch: Req) -> list[tuple[int, int, int]]:
        """One grid per generated frame (the layer-3D rotary numbers them), then the input image's grid."""
        generated, *inputs = super().image_grids(batch)
        return [generated] * batch.raw_latent_shape[1] + inputs

    def prepare_pos_cond_kwargs(self, batch: Req, latent_model_input: torch.Tensor, t: torch.Tensor, **kwargs):
        kwargs = super().prepare_pos_cond_kwargs(batch, latent_model_input, t, **kwargs)
        return {**kwargs, "additional_t_cond": self._is_rgb(latent_model_input)}

    def prepare_neg_cond_kwargs(self, batch: Req, latent_model_input: torch.Tensor, t: torch.Tensor, **kwargs):
        kwargs = super().prepare_neg_cond_kwargs(batch, latent_model_input, t, **kwargs)
        return {**kwargs, "additional_t_cond": self._is_rgb(latent_model_input)}

    @staticmethod
    def _is_rgb(latent_model_input: torch.Tensor) -> torch.Tensor:
        """The DiT's extra condition: 0 for every sample, as Diffusers' pipeline passes (`is_rgb`)."""
        return torch.zeros(latent_model_input.shape[0], dtype=torch.long, device=latent_model_input.device)

    def combine_cfg(
        self, noise_pred: torch.Tensor, noise_uncond: torch.Tensor, scale: float, batch: Req
    ) -> torch.Tensor:
        """Plain true CFG; rescaled per token to the conditional prediction's norm (Qwen-Image's) with
        `cfg_normalize`."""
        if batch.extra["cfg_normalize"]:
            return super().combine_cfg(noise_pred, noise_uncond, scale, batch)
        return PipelineConfig.combine_cfg(self, noise_pred, noise_uncond, scale, batch)
