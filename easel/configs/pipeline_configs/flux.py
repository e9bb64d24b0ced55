"""FLUX.1: 2x2 latent patches packed into tokens, T5 sequence + CLIP pooled conditioning, guidance embedding."""

import dataclasses
import logging
from typing import Any

import torch
from diffusers.image_processor import VaeImageProcessor
from PIL import Image

from easel.configs.models.dits.flux import FluxDitConfig
from easel.configs.models.encoders.base import TextEncoderConfig
from easel.configs.models.encoders.clip import CLIPTextConfig
from easel.configs.models.encoders.t5 import T5Config
from easel.configs.models.vaes.flux import FluxVAEConfig
from easel.configs.pipeline_configs.base import ImagePipelineConfig, ModelTaskType
from easel.runtime.pipelines_core.schedule_batch import Req

logger = logging.getLogger(__name__)

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
        """Positions (index, row, col): all zeros for text tokens, index 0 for the image being generated and
        index 1 for the tokens of input images (FLUX.1 Kontext), as FLUX was trained."""
        text_ids = torch.zeros(batch.prompt_embeds[0].shape[1], 3)
        image_shapes = [batch.raw_latent_shape, *batch.image_latent_shapes]
        image_ids = [_grid_ids(shape, index=int(i > 0)) for i, shape in enumerate(image_shapes)]
        return rotary_emb(torch.cat([text_ids, *image_ids]).to(device))  # (T + L, 3) -> (cos, sin)

    def postprocess_noise_pred(self, noise_pred: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        return noise_pred[:, : latents.shape[1]]  # input-image tokens follow the generated ones

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
            "hidden_states": torch.cat([latent_model_input, *batch.image_latents], dim=1),
            "encoder_hidden_states": embeds,
            "pooled_projections": pooled,
            # The DiT takes sigma in [0, 1] and scales it back by 1000, as Diffusers' FLUX transformer does.
            "timestep": t.expand(n).to(latent_model_input.dtype) / 1000,
            "guidance": guidance,
            "freqs_cis": freqs_cis,
        }


def _grid_ids(latent_shape: tuple[int, ...], index: int) -> torch.Tensor:
    """(index, row, col) of each token of a packed (B, C, h, w) latent, row-major: (h/2 * w/2, 3)."""
    _, _, h, w = latent_shape
    ids = torch.zeros(h // PATCH, w // PATCH, 3)
    ids[..., 0] = index
    ids[..., 1] = torch.arange(h // PATCH)[:, None]
    ids[..., 2] = torch.arange(w // PATCH)[None, :]
    return ids.reshape(-1, 3)


# Resolutions FLUX.1 Kontext was trained at; an input image is resized to the one nearest its aspect ratio.
KONTEXT_RESOLUTIONS = [
    (672, 1568), (688, 1504), (720, 1456), (752, 1392), (800, 1328), (832, 1248), (880, 1184), (944, 1104),
    (1024, 1024), (1104, 944), (1184, 880), (1248, 832), (1328, 800), (1392, 752), (1456, 720), (1504, 688),
    (1568, 672),
]  # fmt: skip


@dataclasses.dataclass
class FluxKontextPipelineConfig(FluxPipelineConfig):
    """FLUX.1 Kontext: FLUX.1-dev that also attends to the tokens of one input image."""

    task_type: ModelTaskType = ModelTaskType.TI2I
    min_input_images: int = 1
    max_input_images: int = 1

    def prepare_request(self, batch: Req) -> None:
        """Keeps the requested aspect ratio at `max_area` pixels, as Diffusers' FluxKontextPipeline does."""
        max_area, multiple = batch.extra["max_area"], self.pixel_multiple()
        aspect_ratio = batch.width / batch.height
        width = round((max_area * aspect_ratio) ** 0.5) // multiple * multiple
        height = round((max_area / aspect_ratio) ** 0.5) // multiple * multiple
        if (height, width) != (batch.height, batch.width):
            logger.warning("resolution adjusted to %dx%d (width x height) to fit max_area", width, height)
        batch.height, batch.width = height, width

    def preprocess_condition_image(self, image: Image.Image, batch: Req) -> torch.Tensor:
        processor = VaeImageProcessor(vae_scale_factor=self.pixel_multiple())
        height, width = processor.get_default_height_width(image)
        if batch.extra["auto_resize"]:
            _, width, height = min((abs(width / height - w / h), w, h) for w, h in KONTEXT_RESOLUTIONS)
        multiple = self.pixel_multiple()
        height, width = height // multiple * multiple, width // multiple * multiple
        return processor.preprocess(processor.resize(image, height, width), height, width)
