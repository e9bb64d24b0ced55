"""Z-Image: Qwen3 caption features of each prompt's own length, a single-stream DiT over [image | caption]."""

import dataclasses
from typing import Any

import torch

from easel.configs.models.dits.z_image import ZImageDitConfig
from easel.configs.models.encoders.base import TextEncoderConfig
from easel.configs.models.encoders.qwen3 import Qwen3TextConfig
from easel.configs.models.vaes.flux import FluxVAEConfig
from easel.configs.pipeline_configs.base import ImagePipelineConfig
from easel.runtime.pipelines_core.schedule_batch import Req

PATCH = 2  # the DiT's spatial patch; latents stay unpacked between steps


@dataclasses.dataclass
class ZImagePipelineConfig(ImagePipelineConfig):
    """Z-Image and Z-Image-Turbo (FLUX.1's VAE)."""

    dit_config: ZImageDitConfig = dataclasses.field(default_factory=ZImageDitConfig)
    vae_config: FluxVAEConfig = dataclasses.field(default_factory=FluxVAEConfig)
    text_encoder_configs: tuple[TextEncoderConfig, ...] = (Qwen3TextConfig(),)
    # The DiT takes each caption's own tokens (`cap_feats`) and a layout built for those lengths, so passes of
    # different requests do not share a forward.
    dit_row_kwargs = ()

    def pixel_multiple(self) -> int:
        return self.vae_config.spatial_compression * PATCH

    def cfg_scale(self, batch: Req) -> float | None:
        # Z-Image guides with pos + g (pos - neg), so any g > 0 is guidance.
        return batch.guidance_scale if batch.guidance_scale > 0 else None

    def get_freqs_cis(self, batch: Req, device: torch.device, rotary_emb: Any, dtype: torch.dtype) -> Any:
        """The DiT's token layouts (rotary tables, masks) for the positive and the negative captions."""
        _, _, h, w = batch.raw_latent_shape
        layouts = {"pos": rotary_emb(_lengths(batch.prompt_embeds_mask[0]), (1, h, w), device=device)}
        if batch.do_classifier_free_guidance:
            layouts["neg"] = rotary_emb(_lengths(batch.negative_prompt_embeds_mask[0]), (1, h, w), device=device)
        return layouts

    def prepare_pos_cond_kwargs(self, batch: Req, latent_model_input: torch.Tensor, t: torch.Tensor, **kwargs):
        embeds, mask = batch.prompt_embeds[0], batch.prompt_embeds_mask[0]
        return _cond_kwargs(embeds, mask, latent_model_input, t, kwargs["freqs_cis"]["pos"])

    def prepare_neg_cond_kwargs(self, batch: Req, latent_model_input: torch.Tensor, t: torch.Tensor, **kwargs):
        embeds, mask = batch.negative_prompt_embeds[0], batch.negative_prompt_embeds_mask[0]
        return _cond_kwargs(embeds, mask, latent_model_input, t, kwargs["freqs_cis"]["neg"])

    def postprocess_noise_pred(self, noise_pred: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        return -noise_pred.squeeze(2).float()  # (B, C, 1, h, w) -> (B, C, h, w); the DiT predicts minus the velocity

    def combine_cfg(
        self, noise_pred: torch.Tensor, noise_uncond: torch.Tensor, scale: float, batch: Req
    ) -> torch.Tensor:
        guided = noise_pred + scale * (noise_pred - noise_uncond)
        cap = batch.extra["cfg_normalization"]
        if cap > 0:  # per sample: never let guidance grow the prediction past `cap` times its conditional norm
            dims = tuple(range(1, guided.dim()))
            max_norm = torch.linalg.vector_norm(noise_pred, dim=dims, keepdim=True) * cap
            norm = torch.linalg.vector_norm(guided, dim=dims, keepdim=True)
            guided = torch.where(norm > max_norm, guided * (max_norm / norm), guided)
        return guided


def _lengths(mask: torch.Tensor) -> list[int]:
    return mask.sum(dim=1).tolist()


def _cond_kwargs(embeds, mask, latent_model_input: torch.Tensor, t: torch.Tensor, layout) -> dict[str, Any]:
    n = latent_model_input.shape[0]
    return {
        "x": latent_model_input.unsqueeze(2),  # (B, C, 1, h, w): one frame
        "t": (1000 - t.expand(n)) / 1000,  # flow time 1 - sigma
        "cap_feats": [tokens[keep.bool()] for tokens, keep in zip(embeds, mask, strict=True)],  # each prompt's own
        "layout": layout,
    }
