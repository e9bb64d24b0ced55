"""Qwen-Image: Qwen2.5-VL text states, FLUX-style 2x2 latent packing, a Wan-style VAE with per-channel statistics."""

import dataclasses
from typing import Any

import torch

from easel.configs.models.dits.qwen_image import QwenImageDitConfig
from easel.configs.models.encoders.base import TextEncoderConfig
from easel.configs.models.encoders.qwen2_5_vl import QwenVLTextConfig
from easel.configs.models.vaes.qwen_image import QwenImageVAEConfig
from easel.configs.pipeline_configs.flux import PATCH, FluxPipelineConfig
from easel.runtime.pipelines_core.schedule_batch import Req


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

    def combine_cfg(self, noise_pred: torch.Tensor, noise_uncond: torch.Tensor, batch: Req) -> torch.Tensor:
        """True CFG, rescaled per token to the conditional prediction's norm, as Qwen-Image was tuned."""
        guided = super().combine_cfg(noise_pred, noise_uncond, batch)
        cond_norm = torch.norm(noise_pred, dim=-1, keepdim=True)
        return guided * (cond_norm / torch.norm(guided, dim=-1, keepdim=True))

    def get_decode_scale_and_shift(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-channel statistics shaped for (B, C, F, H, W) latents: decoding takes `latents * std + mean`."""
        mean = torch.tensor(self.vae_config.latents_mean).view(1, -1, 1, 1, 1)
        std = torch.tensor(self.vae_config.latents_std).view(1, -1, 1, 1, 1)
        return 1.0 / std, mean  # latents / (1 / std) + mean, the very operations Diffusers runs
