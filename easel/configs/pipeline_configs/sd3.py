"""Stable Diffusion 3 / 3.5: CLIP-L + CLIP-G + T5 conditioning, unpacked latents, CFG and skip-layer guidance."""

import dataclasses
from typing import Any

import torch
import torch.nn.functional as F

from easel.configs.models.dits.sd3 import SD3DitConfig
from easel.configs.models.encoders.base import TextEncoderConfig, TextEncoding
from easel.configs.models.encoders.clip import CLIPHiddenAndPooledConfig
from easel.configs.models.encoders.t5 import T5Config
from easel.configs.models.vaes.sd3 import SD3VAEConfig
from easel.configs.pipeline_configs.base import ImagePipelineConfig
from easel.runtime.pipelines_core.schedule_batch import Req


@dataclasses.dataclass
class SD3PipelineConfig(ImagePipelineConfig):
    """SD3-medium, SD3.5-medium and SD3.5-large."""

    dit_config: SD3DitConfig = dataclasses.field(default_factory=SD3DitConfig)
    vae_config: SD3VAEConfig = dataclasses.field(default_factory=SD3VAEConfig)
    text_encoder_configs: tuple[TextEncoderConfig, ...] = (
        CLIPHiddenAndPooledConfig(tokenizer="tokenizer", text_encoder="text_encoder"),
        CLIPHiddenAndPooledConfig(tokenizer="tokenizer_2", text_encoder="text_encoder_2"),
        T5Config(tokenizer="tokenizer_3", text_encoder="text_encoder_3"),
    )

    def pixel_multiple(self) -> int:
        return self.vae_config.spatial_compression * self.dit_config.patch_size

    def postprocess_text_encodings(self, encodings: list[TextEncoding], batch: Req) -> list[TextEncoding]:
        """One sequence: [CLIP-L | CLIP-G] features zero-padded to T5's width, then T5's tokens after them."""
        clip_l, clip_g, t5 = encodings
        clip = torch.cat([clip_l.embeds, clip_g.embeds], dim=-1)  # (B, 77, 768 + 1280)
        clip = F.pad(clip, (0, t5.embeds.shape[-1] - clip.shape[-1]))  # (B, 77, 4096)
        pooled = torch.cat([clip_l.pooled, clip_g.pooled], dim=-1)  # (B, 768 + 1280)
        return [TextEncoding(embeds=torch.cat([clip, t5.embeds], dim=-2), pooled=pooled)]  # (B, 77 + T, 4096)

    def prepare_pos_cond_kwargs(self, batch: Req, latent_model_input: torch.Tensor, t: torch.Tensor, **kwargs):
        return self._cond_kwargs(batch.prompt_embeds[0], batch.pooled_embeds[0], latent_model_input, t)

    def prepare_neg_cond_kwargs(self, batch: Req, latent_model_input: torch.Tensor, t: torch.Tensor, **kwargs):
        return self._cond_kwargs(batch.negative_prompt_embeds[0], batch.neg_pooled_embeds[0], latent_model_input, t)

    def prepare_extra_pass_kwargs(
        self, batch: Req, latent_model_input: torch.Tensor, t: torch.Tensor, step: int, **kwargs
    ) -> dict[str, Any] | None:
        """Skip-layer guidance: a conditional pass without the named layers, on steps strictly inside the range."""
        layers, steps = batch.extra["skip_guidance_layers"], len(batch.timesteps)
        start, stop = batch.extra["skip_layer_guidance_start"], batch.extra["skip_layer_guidance_stop"]
        if not (batch.do_classifier_free_guidance and layers and steps * start < step < steps * stop):
            return None
        return {**self.prepare_pos_cond_kwargs(batch, latent_model_input, t), "skip_layers": list(layers)}

    def combine_extra_pass(
        self, noise_pred: torch.Tensor, noise_cond: torch.Tensor, noise_extra: torch.Tensor, batch: Req
    ) -> torch.Tensor:
        return noise_pred + (noise_cond - noise_extra) * batch.extra["skip_layer_guidance_scale"]

    @staticmethod
    def _cond_kwargs(embeds, pooled, latent_model_input: torch.Tensor, t: torch.Tensor) -> dict[str, Any]:
        return {
            "hidden_states": latent_model_input,
            "encoder_hidden_states": embeds,
            "pooled_projections": pooled,
            "timestep": t.expand(latent_model_input.shape[0]),  # 0..1000, as the scheduler gives it
        }
