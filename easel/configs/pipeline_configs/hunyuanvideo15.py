"""HunyuanVideo-1.5: Qwen2.5-VL prompt states and ByT5 glyphs, 32-channel latents of (frames - 1) / 4 + 1 frames at
1/16 the size, and the DiT's extra input channels: the first frame's latents and a mask (zeros for text-to-video).

Image-to-video's first frame (`HunyuanVideo15ImageToVideoPipelineConfig`) enters twice: its VAE latents fill the
condition channels of the first latent frame, with the mask set there, and SigLIP's tokens of it join the text
stream (`batch.image_embeds`). Text-to-video gives the DiT no image tokens (Diffusers gives 729 zeros, which the
DiT masks out: the same result).
"""

import dataclasses
import logging
from typing import Any

import torch
from diffusers.pipelines.hunyuan_video1_5.image_processor import HunyuanVideo15ImageProcessor
from PIL import Image

from easel.configs.models.dits.hunyuanvideo15 import HunyuanVideo15DitConfig
from easel.configs.models.encoders.base import TextEncoderConfig
from easel.configs.models.encoders.hunyuanvideo15 import HunyuanVideo15GlyphConfig, HunyuanVideo15QwenConfig
from easel.configs.models.vaes.hunyuanvideo15 import HunyuanVideo15VAEConfig
from easel.configs.pipeline_configs.base import ModelTaskType, PipelineConfig
from easel.configs.pipeline_configs.wan import fit_frames
from easel.runtime.pipelines_core.schedule_batch import Req

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class HunyuanVideo15PipelineConfig(PipelineConfig):
    """HunyuanVideo-1.5 text-to-video (480p and 720p checkpoints); CFG when guidance_scale > 1."""

    task_type: ModelTaskType = ModelTaskType.T2V
    dit_config: HunyuanVideo15DitConfig = dataclasses.field(default_factory=HunyuanVideo15DitConfig)
    vae_config: HunyuanVideo15VAEConfig = dataclasses.field(default_factory=HunyuanVideo15VAEConfig)
    text_encoder_configs: tuple[TextEncoderConfig, ...] = (HunyuanVideo15QwenConfig(), HunyuanVideo15GlyphConfig())

    def pixel_multiple(self) -> int:
        return self.vae_config.spatial_compression * self.dit_config.patch_size

    def prepare_request(self, batch: Req) -> None:
        fit_frames(batch, self.vae_config.temporal_compression)

    def prepare_latent_shape(self, batch: Req) -> tuple[int, ...]:
        step, scale = self.vae_config.temporal_compression, self.vae_config.spatial_compression
        frames = (batch.num_frames - 1) // step + 1
        return batch.batch_size, self.vae_config.latent_channels, frames, batch.height // scale, batch.width // scale

    def get_freqs_cis(self, batch: Req, device: torch.device, rotary_emb: Any, dtype: torch.dtype) -> Any:
        _, _, frames, height, width = batch.raw_latent_shape
        return tuple(t.to(device) for t in rotary_emb(frames, height, width))

    def prepare_pos_cond_kwargs(self, batch: Req, latent_model_input: torch.Tensor, t: torch.Tensor, **kwargs):
        return self._cond_kwargs(batch.prompt_embeds, batch.prompt_embeds_mask, batch, latent_model_input, t, **kwargs)

    def prepare_neg_cond_kwargs(self, batch: Req, latent_model_input: torch.Tensor, t: torch.Tensor, **kwargs):
        embeds, masks = batch.negative_prompt_embeds, batch.negative_prompt_embeds_mask
        return self._cond_kwargs(embeds, masks, batch, latent_model_input, t, **kwargs)

    def _cond_kwargs(self, embeds, masks, batch: Req, x, t, freqs_cis=None) -> dict[str, Any]:
        n = x.shape[0]
        condition, mask = self.first_frame_condition(batch, x)
        return {
            "hidden_states": torch.cat([x, condition, mask], dim=1),  # (B, 2 C + 1, F, h, w)
            "timestep": t.expand(n).to(x.dtype),
            "encoder_hidden_states": embeds[0],
            "encoder_attention_mask": masks[0],
            "encoder_hidden_states_2": embeds[1],
            "encoder_attention_mask_2": masks[1],
            "image_embeds": self.image_embeds(batch, x),
            "freqs_cis": freqs_cis,
        }

    def first_frame_condition(self, batch: Req, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The condition channels and their mask: zeros, for text-to-video."""
        b, _, f, h, w = x.shape
        return torch.zeros_like(x), x.new_zeros(b, 1, f, h, w)

    def image_embeds(self, batch: Req, x: torch.Tensor) -> torch.Tensor | None:
        """SigLIP tokens of the first frame; none for text-to-video."""
        return None

    def get_decode_scale_and_shift(self) -> tuple[float, None]:
        return self.vae_config.scaling_factor, None


@dataclasses.dataclass
class HunyuanVideo15ImageToVideoPipelineConfig(HunyuanVideo15PipelineConfig):
    """HunyuanVideo-1.5 image-to-video: the output takes the size bucket of `target_size` pixels nearest the input
    image's aspect ratio, the image cropped to it; its latents condition the first latent frame, its SigLIP tokens
    join the text stream."""

    task_type: ModelTaskType = ModelTaskType.I2V
    min_input_images: int = 1
    max_input_images: int = 1

    def prepare_request(self, batch: Req) -> None:
        super().prepare_request(batch)
        image = batch.condition_images[0]
        processor = self._processor()
        height, width = processor.calculate_default_height_width(image.height, image.width, self.dit_config.target_size)
        if (batch.height, batch.width) not in ((None, None), (height, width)):
            logger.warning("image-to-video takes the input image's size bucket: %dx%d (width x height)", width, height)
        batch.height, batch.width = height, width
        batch.condition_images = [processor.resize(image, height=height, width=width, resize_mode="crop")]

    def preprocess_condition_image(self, image: Image.Image, batch: Req) -> torch.Tensor:
        """The (cropped) first frame as the VAE takes it: (1, 3, 1, H, W) in [-1, 1]."""
        return self._processor().preprocess(image, height=batch.height, width=batch.width).unsqueeze(2)

    def image_encoder_states(self, outputs: Any) -> torch.Tensor:
        return outputs.last_hidden_state  # SigLIP's, after its final norm

    def first_frame_condition(self, batch: Req, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The first frame's latents in the condition channels of latent frame 0, and the mask set there."""
        condition, mask = super().first_frame_condition(batch, x)
        condition[:, :, :1] = batch.image_latents[0].to(x.dtype)
        mask[:, :, 0] = 1.0
        return condition, mask

    def image_embeds(self, batch: Req, x: torch.Tensor) -> torch.Tensor:
        return batch.image_embeds[0].to(x.dtype)

    def _processor(self) -> HunyuanVideo15ImageProcessor:
        scale = self.vae_config.spatial_compression
        return HunyuanVideo15ImageProcessor(vae_scale_factor=scale, do_resize=False, do_convert_rgb=True)
