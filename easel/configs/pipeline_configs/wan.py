"""Wan video: UMT5 text states, latents of (frames - 1) / 4 + 1 frames, a 3D-rotary DiT, optionally two experts."""

import dataclasses
import logging
from typing import Any

import torch
from PIL import Image

from easel.configs.models.dits.wanvideo import WanDitConfig
from easel.configs.models.encoders.base import TextEncoderConfig
from easel.configs.models.encoders.t5 import UMT5Config
from easel.configs.models.vaes.wanvideo import WanVAEConfig
from easel.configs.pipeline_configs.base import ModelTaskType, PipelineConfig
from easel.errors import InvalidInputError
from easel.runtime.pipelines_core.schedule_batch import Req

logger = logging.getLogger(__name__)
NUM_TRAIN_TIMESTEPS = 1000  # Wan's schedulers: `boundary_ratio` is a fraction of these


def fit_frames(batch: Req, step: int) -> None:
    """A causal video VAE of temporal compression `step` takes `step` k + 1 frames: fit the request's to that, as
    Diffusers' latent shape does, and say so."""
    if batch.num_frames < 1:
        raise InvalidInputError(f"num_frames must be at least 1, got {batch.num_frames}")
    frames = batch.num_frames // step * step + 1 if batch.num_frames % step != 1 else batch.num_frames
    if frames != batch.num_frames:
        logger.warning("num_frames must be 4k + 1 for this VAE: %d adjusted to %d", batch.num_frames, frames)
    batch.num_frames = frames


@dataclasses.dataclass
class WanPipelineConfig(PipelineConfig):
    """Wan2.1 and Wan2.2 text-to-video; `boundary_ratio` (from model_index.json) switches to the low-noise expert."""

    task_type: ModelTaskType = ModelTaskType.T2V
    dit_config: WanDitConfig = dataclasses.field(default_factory=WanDitConfig)
    vae_config: WanVAEConfig = dataclasses.field(default_factory=WanVAEConfig)
    text_encoder_configs: tuple[TextEncoderConfig, ...] = (
        UMT5Config(tokenizer="tokenizer", text_encoder="text_encoder"),
    )
    boundary_ratio: float | None = None  # Wan2.2-A14B: the fraction of the schedule the high-noise expert runs
    # Wan2.2-TI2V-5B: one timestep per token, so that an input image can be the (clean) first latent frame.
    expand_timesteps: bool = False

    def input_image_range(self) -> tuple[int, int]:
        return 0, 1 if self.expand_timesteps else 0  # TI2V-5B: text-to-video, or image-to-video from a first frame

    def pixel_multiple(self) -> int:
        return self.vae_config.spatial_compression * self.dit_config.patch_size[1]

    def prepare_request(self, batch: Req) -> None:
        fit_frames(batch, self.vae_config.temporal_compression)

    def prepare_latent_shape(self, batch: Req) -> tuple[int, ...]:
        scale, step = self.vae_config.spatial_compression, self.vae_config.temporal_compression
        frames = (batch.num_frames - 1) // step + 1
        channels = self.vae_config.latent_channels
        return (batch.batch_size, channels, frames, batch.height // scale, batch.width // scale)  # (B, C, F, h, w)

    def get_freqs_cis(self, batch: Req, device: torch.device, rotary_emb: Any, dtype: torch.dtype) -> Any:
        _, _, frames, height, width = batch.raw_latent_shape
        return rotary_emb(frames, height, width, device=device)

    def preprocess_condition_image(self, image: Image.Image, batch: Req) -> torch.Tensor:
        """The input image as a one-frame video, (1, 3, 1, H, W) in [-1, 1]."""
        return super().preprocess_condition_image(image, batch).unsqueeze(2)

    def select_expert(self, batch: Req, t: torch.Tensor) -> tuple[int, float]:
        if self.boundary_ratio is None or t >= self.boundary_ratio * NUM_TRAIN_TIMESTEPS:
            return 0, batch.cfg_scale
        scale_2 = batch.extra["guidance_scale_2"]
        return 1, batch.cfg_scale if scale_2 is None else scale_2

    def prepare_pos_cond_kwargs(self, batch: Req, latent_model_input: torch.Tensor, t: torch.Tensor, **kwargs):
        return self._cond_kwargs(batch.prompt_embeds[0], batch, latent_model_input, t, kwargs["freqs_cis"])

    def prepare_neg_cond_kwargs(self, batch: Req, latent_model_input: torch.Tensor, t: torch.Tensor, **kwargs):
        return self._cond_kwargs(batch.negative_prompt_embeds[0], batch, latent_model_input, t, kwargs["freqs_cis"])

    def _cond_kwargs(self, embeds: torch.Tensor, batch: Req, latent_model_input, t, freqs_cis) -> dict[str, Any]:
        n = latent_model_input.shape[0]
        timestep = t.expand(n)
        if self.expand_timesteps:
            # One timestep per token (B, F * h/2 * w/2): 0 on a given first frame, which is clean already.
            latent_model_input = self.with_first_frame(latent_model_input, batch)
            noisy = self.noisy_frames_mask(batch)[0, 0, :, ::2, ::2]  # (F, h/2, w/2): tokens are 2x2 patches
            timestep = (noisy * t).flatten().unsqueeze(0).expand(n, -1)
        return {
            "hidden_states": latent_model_input,
            "timestep": timestep,
            "encoder_hidden_states": embeds,
            "freqs_cis": freqs_cis,
        }

    def noisy_frames_mask(self, batch: Req) -> torch.Tensor:
        """(1, 1, F, h, w): 0 on the latent frame an input image gives, 1 on the frames being generated."""
        mask = torch.ones(1, 1, *batch.raw_latent_shape[2:], device=batch.latents.device)
        if batch.image_latents:
            mask[:, :, 0] = 0
        return mask

    def with_first_frame(self, latents: torch.Tensor, batch: Req) -> torch.Tensor:
        """The latents with the input image's latent frame in place of their first (unchanged without an image)."""
        if not batch.image_latents:
            return latents
        mask = self.noisy_frames_mask(batch)
        return ((1 - mask) * batch.image_latents[0] + mask * latents).to(latents.dtype)

    def unpack_latents(self, latents: torch.Tensor, batch: Req) -> torch.Tensor:
        return self.with_first_frame(latents, batch) if self.expand_timesteps else latents


@dataclasses.dataclass
class WanImageToVideoPipelineConfig(WanPipelineConfig):
    """Wan2.1-I2V and Wan2.2-I2V-A14B: the first frame is given; its latents and a mask join the DiT's input
    channels, and (Wan2.1) its CLIP image tokens join the text in cross-attention."""

    task_type: ModelTaskType = ModelTaskType.I2V

    def input_image_range(self) -> tuple[int, int]:
        return 1, 1

    def preprocess_condition_image(self, image: Image.Image, batch: Req) -> torch.Tensor:
        """The input image as the first frame of an otherwise black video, (1, 3, F, H, W) in [-1, 1]."""
        frame = super().preprocess_condition_image(image, batch)  # (1, 3, 1, H, W)
        rest = frame.new_zeros(1, 3, batch.num_frames - 1, batch.height, batch.width)
        return torch.cat([frame, rest], dim=2)

    def pack_image_latents(self, latents: torch.Tensor, batch: Req) -> torch.Tensor:
        """[mask | latents] on channels: the mask marks, per latent frame and VAE time step, which frames are given
        (the first only); (B, 4 + C, F, h, w)."""
        b, _, frames, h, w = latents.shape
        step = self.vae_config.temporal_compression
        given = torch.zeros(b, 1, batch.num_frames, h, w, device=latents.device)
        given[:, :, 0] = 1
        # The first frame stands for a whole latent frame of `step` video frames.
        given = torch.cat([given[:, :, :1].repeat_interleave(step, dim=2), given[:, :, 1:]], dim=2)
        mask = given.view(b, frames, step, h, w).transpose(1, 2)  # (B, step, F, h, w)
        return torch.cat([mask, latents], dim=1)

    def _cond_kwargs(self, embeds: torch.Tensor, batch: Req, latent_model_input, t, freqs_cis) -> dict[str, Any]:
        kwargs = super()._cond_kwargs(embeds, batch, latent_model_input, t, freqs_cis)
        kwargs["hidden_states"] = torch.cat([kwargs["hidden_states"], batch.image_latents[0]], dim=1)
        if batch.image_embeds:  # Wan2.1: CLIP image tokens; Wan2.2-I2V has no image encoder
            kwargs["encoder_hidden_states_image"] = batch.image_embeds[0]
        return kwargs
