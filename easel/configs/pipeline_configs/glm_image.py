"""GLM-Image: an autoregressive prior (a vision-language model writes the image as codes) decoded by a DiT.

What the DiT takes beyond the latents, per step: the prior codes of every patch (`batch.extra["prior_token_ids"]`,
made by `GlmImageBeforeDenoisingStage`), the glyph embeddings of the prompt's quoted text, the timestep minus one,
the target size and crop corner, and, for image-to-image, the per-block caches of the condition images' keys
(`batch.extra["kv_caches"]`), read by the conditional pass only. The unconditional pass drops the prior codes and
takes the empty prompt's glyphs.
"""

import dataclasses
import logging
from typing import Any

import torch

from easel.configs.models.dits.glm_image import GlmImageDitConfig
from easel.configs.models.encoders.base import TextEncoderConfig
from easel.configs.models.encoders.byt5 import GlyphTextConfig
from easel.configs.models.vaes.glm_image import GlmImageVAEConfig
from easel.configs.pipeline_configs.base import ImagePipelineConfig
from easel.runtime.pipelines_core.schedule_batch import Req

logger = logging.getLogger(__name__)

# The AR model's image codes are laid out at 32 pixels a code: the processor floors sizes to that.
PIXEL_MULTIPLE = 32


@dataclasses.dataclass
class GlmImagePipelineConfig(ImagePipelineConfig):
    """GLM-Image: text to image, or up to 4 condition images and text to image (the limit is assumed; Diffusers sets
    none). CFG when guidance_scale > 1."""

    dit_config: GlmImageDitConfig = dataclasses.field(default_factory=GlmImageDitConfig)
    vae_config: GlmImageVAEConfig = dataclasses.field(default_factory=GlmImageVAEConfig)
    text_encoder_configs: tuple[TextEncoderConfig, ...] = (GlyphTextConfig(),)
    max_input_images: int = 4

    def pixel_multiple(self) -> int:
        return PIXEL_MULTIPLE

    def prepare_request(self, batch: Req) -> None:
        multiple = self.pixel_multiple()
        fitted = batch.height // multiple * multiple, batch.width // multiple * multiple
        if fitted != (batch.height, batch.width):
            logger.warning("resolution adjusted to %dx%d (width x height), multiples of %d", *fitted[::-1], multiple)
        batch.height, batch.width = fitted

    def get_freqs_cis(self, batch: Req, device: torch.device, rotary_emb: Any, dtype: torch.dtype) -> Any:
        _, _, height, width = batch.raw_latent_shape
        return tuple(t.to(device) for t in rotary_emb(height, width))

    def prepare_pos_cond_kwargs(self, batch: Req, latent_model_input: torch.Tensor, t: torch.Tensor, **kwargs):
        caches = batch.extra.get("kv_caches")
        return self._cond_kwargs(batch.prompt_embeds[0], False, caches, batch, latent_model_input, t, **kwargs)

    def prepare_neg_cond_kwargs(self, batch: Req, latent_model_input: torch.Tensor, t: torch.Tensor, **kwargs):
        return self._cond_kwargs(batch.negative_prompt_embeds[0], True, None, batch, latent_model_input, t, **kwargs)

    def _cond_kwargs(self, embeds, drop: bool, caches, batch: Req, x, t, freqs_cis=None) -> dict[str, Any]:
        n, device = x.shape[0], x.device
        prior = batch.extra["prior_token_ids"].to(device)
        return {
            "hidden_states": x,
            "encoder_hidden_states": embeds,
            "prior_token_id": prior,
            "prior_token_drop": torch.full_like(prior, drop, dtype=torch.bool),
            "timestep": t.expand(n) - 1,  # as GLM-Image was trained: the scheduler's timestep minus one
            "target_size": torch.tensor([[batch.height, batch.width]], dtype=x.dtype, device=device).repeat(n, 1),
            "crop_coords": torch.zeros(n, 2, dtype=x.dtype, device=device),
            "freqs_cis": freqs_cis,
            "kv_caches": caches,
        }
