"""Qwen-Image: Qwen2.5-VL text states, FLUX-style 2x2 latent packing, a Wan-style VAE with per-channel statistics."""

import dataclasses
import logging
from typing import Any

import torch
from diffusers.image_processor import VaeImageProcessor
from PIL import Image

from easel.configs.models.dits.qwen_image import QwenImageDitConfig
from easel.configs.models.encoders.base import TextEncoderConfig
from easel.configs.models.encoders.qwen2_5_vl import (
    QwenVLEditPlusTextConfig,
    QwenVLEditTextConfig,
    QwenVLTextConfig,
    area_dimensions,
)
from easel.configs.models.vaes.qwen_image import QwenImageVAEConfig
from easel.configs.pipeline_configs.base import ModelTaskType
from easel.configs.pipeline_configs.flux import PATCH, FluxPipelineConfig
from easel.runtime.pipelines_core.schedule_batch import Req

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class QwenImagePipelineConfig(FluxPipelineConfig):
    """Qwen-Image text-to-image (Qwen/Qwen-Image, Qwen-Image-2512); packs latents as FLUX does."""

    dit_config: QwenImageDitConfig = dataclasses.field(default_factory=QwenImageDitConfig)
    vae_config: QwenImageVAEConfig = dataclasses.field(default_factory=QwenImageVAEConfig)
    text_encoder_configs: tuple[TextEncoderConfig, ...] = (QwenVLTextConfig(),)

    def unpack_latents(self, latents: torch.Tensor, batch: Req) -> torch.Tensor:
        return super().unpack_latents(latents, batch).unsqueeze(2)  # (B, C, 1, H, W): the VAE takes frames

    def image_grids(self, batch: Req) -> list[tuple[int, int, int]]:
        """The (frames, rows, columns) token grids of one sample: the generated image, then any input images."""
        shapes = [batch.raw_latent_shape, *batch.image_latent_shapes]
        return [(1, shape[-2] // PATCH, shape[-1] // PATCH) for shape in shapes]

    def get_freqs_cis(self, batch: Req, device: torch.device, rotary_emb: Any, dtype: torch.dtype) -> Any:
        """Rotary tables for the positive and (under CFG) the negative prompt, whose lengths may differ."""
        grids = self.image_grids(batch)
        freqs = {"pos": rotary_emb(grids, batch.prompt_embeds[0].shape[1], device=device)}
        if batch.do_classifier_free_guidance:
            freqs["neg"] = rotary_emb(grids, batch.negative_prompt_embeds[0].shape[1], device=device)
        return freqs

    def prepare_pos_cond_kwargs(self, batch: Req, latent_model_input: torch.Tensor, t: torch.Tensor, **kwargs):
        embeds, mask = batch.prompt_embeds[0], batch.prompt_embeds_mask[0]
        return self._qwen_kwargs(embeds, mask, batch, latent_model_input, t, kwargs["freqs_cis"]["pos"])

    def prepare_neg_cond_kwargs(self, batch: Req, latent_model_input: torch.Tensor, t: torch.Tensor, **kwargs):
        embeds, mask = batch.negative_prompt_embeds[0], batch.negative_prompt_embeds_mask[0]
        return self._qwen_kwargs(embeds, mask, batch, latent_model_input, t, kwargs["freqs_cis"]["neg"])

    def _qwen_kwargs(self, embeds, mask, batch: Req, latent_model_input, t, freqs_cis) -> dict[str, Any]:
        return {
            "hidden_states": torch.cat([latent_model_input, *batch.image_latents], dim=1),
            "encoder_hidden_states": embeds,
            "encoder_hidden_states_mask": mask,
            "timestep": t.expand(latent_model_input.shape[0]).to(latent_model_input.dtype) / 1000,
            "freqs_cis": freqs_cis,
            "img_shapes": self.image_grids(batch),
        }

    def combine_cfg(
        self, noise_pred: torch.Tensor, noise_uncond: torch.Tensor, scale: float, batch: Req
    ) -> torch.Tensor:
        """True CFG, rescaled per token to the conditional prediction's norm, as Qwen-Image was tuned."""
        guided = super().combine_cfg(noise_pred, noise_uncond, scale, batch)
        cond_norm = torch.norm(noise_pred, dim=-1, keepdim=True)
        return guided * (cond_norm / torch.norm(guided, dim=-1, keepdim=True))

    def normalize_image_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """(latents - mean) / std, as Diffusers' edit pipelines write it (multiplying by 1 / std rounds otherwise)."""
        mean = torch.tensor(self.vae_config.latents_mean).view(1, -1, 1, 1, 1).to(latents)
        std = torch.tensor(self.vae_config.latents_std).view(1, -1, 1, 1, 1).to(latents)
        return (latents - mean) / std


# The edit models VAE-encode every input image at about this many pixels, whatever the output size.
EDIT_VAE_IMAGE_AREA = 1024 * 1024


@dataclasses.dataclass
class QwenImageEditPipelineConfig(QwenImagePipelineConfig):
    """Qwen-Image-Edit: the input image is seen by the text encoder with the prompt, and its VAE latents follow the
    generated image's in the DiT's sequence. Without a requested size, the output takes the (last) input image's
    aspect ratio at about a megapixel."""

    task_type: ModelTaskType = ModelTaskType.TI2I
    text_encoder_configs: tuple[TextEncoderConfig, ...] = (QwenVLEditTextConfig(),)
    min_input_images: int = 1
    max_input_images: int = 1

    def prepare_request(self, batch: Req) -> None:
        """Diffusers' output size: the requested one, or the last input image's aspect ratio at a megapixel; then
        rounded down to the pixel multiple."""
        width, height = area_dimensions(EDIT_VAE_IMAGE_AREA, batch.condition_images[-1])
        height = height if batch.height is None else batch.height
        width = width if batch.width is None else batch.width
        multiple = self.pixel_multiple()
        fitted = height // multiple * multiple, width // multiple * multiple
        if fitted != (height, width):
            logger.warning("resolution adjusted to %dx%d (width x height), multiples of %d", *fitted[::-1], multiple)
        batch.height, batch.width = fitted

    def preprocess_condition_image(self, image: Image.Image, batch: Req) -> torch.Tensor:
        """(1, 3, 1, H, W) in [-1, 1]: the image at about a megapixel, as one frame for the video-style VAE."""
        width, height = area_dimensions(EDIT_VAE_IMAGE_AREA, image)
        processor = VaeImageProcessor(vae_scale_factor=self.pixel_multiple())
        return processor.preprocess(image, height, width).unsqueeze(2)


@dataclasses.dataclass
class QwenImageEditPlusPipelineConfig(QwenImageEditPipelineConfig):
    """Qwen-Image-Edit-2509 and -2511 (whose DiT has `zero_cond_t`): one to three input images, each seen by the
    text encoder at about 384x384 and VAE-encoded at about a megapixel."""

    text_encoder_configs: tuple[TextEncoderConfig, ...] = (QwenVLEditPlusTextConfig(),)
    max_input_images: int = 3
