"""FLUX.2: 32-channel latents patchified 2x2 into 128-channel tokens, stacked text-encoder layers, and any number of
reference images whose tokens follow the image's (multi-reference editing).

Differences from FLUX.1 (`flux.py`) that the callbacks carry: the noise is drawn already patchified, (B, 128,
H/16, W/16), so packing only flattens it; the latent statistics are per patchified channel (`Flux2VAEConfig`), so
unpacking denormalizes before it unpatchifies; positions have four axes, (time, row, column, index): text tokens
(0, 0, 0, i), the image (0, r, c, 0), the k-th reference image (10 + 10 k, r, c, 0).
"""

import dataclasses
import logging
import math
from typing import Any

import torch
from diffusers.pipelines.flux2.image_processor import Flux2ImageProcessor
from PIL import Image

from easel.configs.models.dits.flux2 import Flux2DitConfig
from easel.configs.models.encoders.base import TextEncoderConfig
from easel.configs.models.encoders.mistral3 import Mistral3TextConfig
from easel.configs.models.encoders.qwen3 import Qwen3StackedTextConfig
from easel.configs.models.vaes.flux2 import Flux2VAEConfig
from easel.configs.pipeline_configs.base import ImagePipelineConfig
from easel.errors import InvalidInputError
from easel.runtime.pipelines_core.schedule_batch import Req

logger = logging.getLogger(__name__)

PATCH = 2  # latents are cut into 2x2 patches, each one token of 4 x 32 channels
DEFAULT_SIZE = 1024  # without a size or a reference image: Diffusers' default_sample_size 128 x the VAE's 8
REFERENCE_TIME_STEP = 10  # the k-th reference image's tokens sit at time 10 + 10 k
MAX_REFERENCE_AREA = 1024 * 1024  # larger reference images are scaled down to this many pixels
MIN_REFERENCE_SIDE, MAX_REFERENCE_ASPECT = 64, 8  # what Diffusers' Flux2ImageProcessor accepts


@dataclasses.dataclass
class Flux2PipelineConfig(ImagePipelineConfig):
    """FLUX.2-dev: Mistral Small 3's layers 10/20/30, guidance embedded (no CFG), up to 10 reference images
    (BFL's limit for FLUX.2-dev; assumed, Diffusers sets none)."""

    dit_config: Flux2DitConfig = dataclasses.field(default_factory=Flux2DitConfig)
    vae_config: Flux2VAEConfig = dataclasses.field(default_factory=Flux2VAEConfig)
    text_encoder_configs: tuple[TextEncoderConfig, ...] = (Mistral3TextConfig(),)
    max_input_images: int = 10

    def cfg_scale(self, batch: Req) -> float | None:
        return None  # guidance-distilled: the scale goes in through the guidance embedding

    def pixel_multiple(self) -> int:
        return self.vae_config.spatial_compression * PATCH

    # --- the request ------------------------------------------------------------------------------------------
    def prepare_request(self, batch: Req) -> None:
        """Checks the reference images; without a requested size, the output takes the first one's (as it is
        encoded), else 1024x1024; then rounded down to multiples of 16."""
        for image in batch.condition_images:
            width, height = image.size
            if min(width, height) < MIN_REFERENCE_SIDE or max(width / height, height / width) > MAX_REFERENCE_ASPECT:
                raise InvalidInputError(
                    f"a {width}x{height} reference image: FLUX.2 takes images of at least {MIN_REFERENCE_SIDE} pixels "
                    f"a side and an aspect ratio of at most {MAX_REFERENCE_ASPECT}:1"
                )
        default = self._reference_size(batch.condition_images[0]) if batch.condition_images else None
        height = batch.height or (default[1] if default else DEFAULT_SIZE)
        width = batch.width or (default[0] if default else DEFAULT_SIZE)
        multiple = self.pixel_multiple()
        fitted = height // multiple * multiple, width // multiple * multiple
        if fitted != (height, width):
            logger.warning("resolution adjusted to %dx%d (width x height), multiples of %d", *fitted[::-1], multiple)
        batch.height, batch.width = fitted

    def _reference_size(self, image: Image.Image) -> tuple[int, int]:
        """(width, height) a reference image is encoded at: at most a megapixel, cropped to multiples of 16."""
        width, height = image.size
        if width * height > MAX_REFERENCE_AREA:
            scale = math.sqrt(MAX_REFERENCE_AREA / (width * height))
            width, height = int(width * scale), int(height * scale)
        multiple = self.pixel_multiple()
        return width // multiple * multiple, height // multiple * multiple

    def preprocess_condition_image(self, image: Image.Image, batch: Req) -> torch.Tensor:
        if image.width * image.height > MAX_REFERENCE_AREA:
            image = Flux2ImageProcessor._resize_to_target_area(image, MAX_REFERENCE_AREA)
        width, height = self._reference_size(image)
        processor = Flux2ImageProcessor(vae_scale_factor=self.pixel_multiple())
        return processor.preprocess(image, height=height, width=width, resize_mode="crop")

    # --- latents ----------------------------------------------------------------------------------------------
    def prepare_latent_shape(self, batch: Req) -> tuple[int, ...]:
        """The noise, drawn patchified as Diffusers draws it: (B, 4 C, H / 16, W / 16)."""
        multiple = self.pixel_multiple()
        channels = self.vae_config.latent_channels * PATCH * PATCH
        return batch.batch_size, channels, batch.height // multiple, batch.width // multiple

    def pack_latents(self, latents: torch.Tensor, batch: Req) -> torch.Tensor:
        return latents.flatten(2).transpose(1, 2)  # (B, 4 C, h, w) -> (B, h w, 4 C)

    def unpack_latents(self, latents: torch.Tensor, batch: Req) -> torch.Tensor:
        """Tokens to the VAE's (B, C, H / 8, W / 8), denormalized on the way: the statistics are per patchified
        channel, so they apply before the patches are laid out."""
        b, c, h, w = batch.raw_latent_shape
        latents = latents.transpose(1, 2).reshape(b, c, h, w)
        mean, std = (v.view(1, -1, 1, 1).to(latents) for v in self._statistics())
        latents = latents * std + mean
        latents = latents.reshape(b, c // 4, PATCH, PATCH, h, w).permute(0, 1, 4, 2, 5, 3)
        return latents.reshape(b, c // 4, h * PATCH, w * PATCH)

    def get_decode_scale_and_shift(self) -> tuple[float, None]:
        return 1.0, None  # `unpack_latents` has denormalized them

    def normalize_image_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """A reference image's VAE latents (1, C, H / 8, W / 8), patchified and normalized: (1, 4 C, h, w)."""
        b, c, h, w = latents.shape
        latents = latents.view(b, c, h // PATCH, PATCH, w // PATCH, PATCH).permute(0, 1, 3, 5, 2, 4)
        latents = latents.reshape(b, c * PATCH * PATCH, h // PATCH, w // PATCH)
        mean, std = (v.view(1, -1, 1, 1).to(latents) for v in self._statistics())
        return (latents - mean) / std

    def _statistics(self) -> tuple[torch.Tensor, torch.Tensor]:
        vae = self.vae_config
        if vae.latents_bn_mean is None:
            raise RuntimeError("FLUX.2's latent statistics are read from its VAE when the pipeline loads")
        return vae.latents_bn_mean, vae.latents_bn_std

    # --- denoising --------------------------------------------------------------------------------------------
    def get_freqs_cis(self, batch: Req, device: torch.device, rotary_emb: Any, dtype: torch.dtype) -> Any:
        text_len = batch.prompt_embeds[0].shape[1]
        text_ids = torch.zeros(text_len, 4)
        text_ids[:, 3] = torch.arange(text_len)
        image_ids = [_grid_ids(batch.raw_latent_shape, time=0)]
        for k, shape in enumerate(batch.image_latent_shapes):
            image_ids.append(_grid_ids(shape, time=REFERENCE_TIME_STEP * (k + 1)))
        return rotary_emb(torch.cat([text_ids, *image_ids]).to(device))  # (T + L, 4) -> (cos, sin)

    def postprocess_noise_pred(self, noise_pred: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        return noise_pred[:, : latents.shape[1]]  # the reference images' tokens follow the generated ones

    def prepare_pos_cond_kwargs(self, batch: Req, latent_model_input: torch.Tensor, t: torch.Tensor, **kwargs):
        return self._cond_kwargs(batch.prompt_embeds[0], batch, latent_model_input, t, kwargs["freqs_cis"])

    def prepare_neg_cond_kwargs(self, batch: Req, latent_model_input: torch.Tensor, t: torch.Tensor, **kwargs):
        return self._cond_kwargs(batch.negative_prompt_embeds[0], batch, latent_model_input, t, kwargs["freqs_cis"])

    def _cond_kwargs(self, embeds, batch: Req, latent_model_input, t, freqs_cis) -> dict[str, Any]:
        n = latent_model_input.shape[0]
        guidance = None
        if self.dit_config.guidance_embeds:
            guidance = torch.full((n,), batch.guidance_scale, device=latent_model_input.device)
        return {
            "hidden_states": torch.cat([latent_model_input, *batch.image_latents], dim=1).to(latent_model_input.dtype),
            "encoder_hidden_states": embeds,
            # The DiT takes sigma in [0, 1] and scales it back by 1000, as Diffusers' FLUX.2 transformer does.
            "timestep": t.expand(n).to(latent_model_input.dtype) / 1000,
            "guidance": guidance,
            "freqs_cis": freqs_cis,
        }


def _grid_ids(latent_shape: tuple[int, ...], time: int) -> torch.Tensor:
    """(time, row, col, 0) of each token of a patchified (B, 4 C, h, w) latent, row-major: (h w, 4)."""
    _, _, h, w = latent_shape
    rows, cols = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    ids = torch.zeros(h * w, 4)
    ids[:, 0], ids[:, 1], ids[:, 2] = time, rows.flatten(), cols.flatten()
    return ids


@dataclasses.dataclass
class Flux2KleinPipelineConfig(Flux2PipelineConfig):
    """FLUX.2-klein (4B, 9B): Qwen3's layers 9/18/27, no guidance embedding; the base (not `is_distilled`) models run
    CFG against the empty prompt when guidance_scale > 1, the step-distilled ones never. Up to 4 reference images
    (BFL's limit for klein; assumed)."""

    text_encoder_configs: tuple[TextEncoderConfig, ...] = (Qwen3StackedTextConfig(),)
    max_input_images: int = 4
    is_distilled: bool = False  # read from model_index.json

    def cfg_scale(self, batch: Req) -> float | None:
        return batch.guidance_scale if batch.guidance_scale > 1 and not self.is_distilled else None
