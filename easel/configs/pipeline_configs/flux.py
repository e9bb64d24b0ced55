"""FLUX.1: 2x2 latent patches packed into tokens, T5 sequence + CLIP pooled conditioning, guidance embedding."""

import dataclasses
from typing import Any

import torch

from easel.configs.models.dits.flux import FluxDitConfig
from easel.configs.models.encoders.base import TextEncoderConfig
from easel.configs.models.encoders.clip import CLIPTextConfig
from easel.configs.models.encoders.t5 import T5Config
from easel.configs.models.vaes.flux import FluxVAEConfig
from easel.configs.pipeline_configs.base import ImagePipelineConfig
from easel.runtime.pipelines_core.schedule_batch import Req

PATCH = 2  # latents are cut into 2x2 patches, each packed into one token


@dataclasses.dataclass
class FluxPipelineConfig(ImagePipelineConfig):
    """FLUX.1-dev and -schnell; whether guidance is embedded follows the checkpoint's `guidance_embeds`."""

    dit_config: FluxDitConfig = dataclasses.field(default_factory=FluxDitConfig)
    vae_config: FluxVAEConfig = dataclasses.field(default_factory=FluxVAEConfig)
    text_encoder_configs: tuple[TextEncoderConfig, ...] = (CLIPTextConfig(), T5Config())
    # Even schnell, which has no guidance embedding, runs real CFG only through `true_cfg_scale`.
    should_use_guidance: bool = True

    def pixel_multiple(self) -> int:
        return self.vae_config.spatial_compression * PATCH

    def pack_latents(self, latents: torch.Tensor, batch: Req) -> torch.Tensor:
        b, c, h, w = latents.shape
        latents = latents.view(b, c, h // PATCH, PATCH, w // PATCH, PATCH)
        latents = latents.permute(0, 2, 4, 1, 3, 5)  # (B, h/2, w/2, C, 2, 2)
        return latents.reshape(b, (h // PATCH) * (w // PATCH), c * PATCH * PATCH)  # (B, L, C*4)

    def unpack_latents(self, latents: torch.Tensor, batch: Req) -> torch.Tensor:
        b, c, h, w = batch.raw_latent_shape
        latents = latents.view(b, h // PATCH, w // PATCH, c, PATCH, PATCH)
        latents = latents.permute(0, 3, 1, 4, 2, 5)  # (B, C, h/2, 2, w/2, 2)
        return latents.reshape(b, c, h, w)

    def get_freqs_cis(self, batch: Req, device: torch.device, rotary_emb: Any, dtype: torch.dtype) -> Any:
        """Positions (0, row, col) for image tokens and all-zero positions for text tokens, as FLUX was trained."""
        _, _, h, w = batch.raw_latent_shape
        text_ids = torch.zeros(batch.prompt_embeds[0].shape[1], 3)
        image_ids = torch.zeros(h // PATCH, w // PATCH, 3)
        image_ids[..., 1] = torch.arange(h // PATCH)[:, None]
        image_ids[..., 2] = torch.arange(w // PATCH)[None, :]
        ids = torch.cat([text_ids, image_ids.reshape(-1, 3)]).to(device)  # (T + L, 3)
        return rotary_emb(ids)

    def prepare_pos_cond_kwargs(self, batch: Req, latent_model_input: torch.Tensor, t: torch.Tensor, **kwargs):
        return self._cond_kwargs(batch.prompt_embeds[0], batch.pooled_embeds[0], batch, latent_model_input, t, **kwargs)

    def prepare_neg_cond_kwargs(self, batch: Req, latent_model_input: torch.Tensor, t: torch.Tensor, **kwargs):
        return self._cond_kwargs(
            batch.negative_prompt_embeds[0],
            batch.neg_pooled_embeds[0],
            batch,
            latent_model_input,
            t,
            **kwargs,
        )

    def _cond_kwargs(self, embeds, pooled, batch, latent_model_input, t, freqs_cis=None) -> dict[str, Any]:
        n = latent_model_input.shape[0]
        guidance = None
        if self.dit_config.guidance_embeds:
            guidance = torch.full((n,), batch.guidance_scale, device=latent_model_input.device)
        return {
            "hidden_states": latent_model_input,
            "encoder_hidden_states": embeds,
            "pooled_projections": pooled,
            # The DiT takes sigma in [0, 1] and scales it back by 1000, as Diffusers' FLUX transformer does.
            "timestep": t.expand(n).to(latent_model_input.dtype) / 1000,
            "guidance": guidance,
            "freqs_cis": freqs_cis,
        }
