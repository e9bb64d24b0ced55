"""`PipelineConfig`: a model's static settings and the callbacks the standard stages call into.

The standard stages (`DenoisingStage`, `DecodingStage`, ...) stay model-agnostic: whatever differs between
models (what the DiT's forward takes, how latents are laid out, how they are normalized) is a callback here.
"""

import dataclasses
import enum
from typing import Any, ClassVar

import torch
from diffusers.image_processor import VaeImageProcessor
from PIL import Image

from easel.configs.models.dits.base import DiTConfig
from easel.configs.models.encoders.base import TextEncoderConfig, TextEncoding
from easel.configs.models.vaes.base import VAEConfig
from easel.runtime.pipelines_core.schedule_batch import Req


class ModelTaskType(enum.Enum):
    """What a pipeline makes from what."""

    T2I = "text-to-image"
    I2I = "image-to-image"
    TI2I = "text+image-to-image"
    T2V = "text-to-video"
    I2V = "image-to-video"
    TI2V = "text+image-to-video"


IMAGE_TASKS = (ModelTaskType.T2I, ModelTaskType.I2I, ModelTaskType.TI2I)


@dataclasses.dataclass
class PipelineConfig:
    """Static configuration of one model family's pipeline."""

    task_type: ModelTaskType = ModelTaskType.T2I
    makes_transparent_images = False  # RGBA outputs (a class constant, not a field)
    # The DiT kwargs that hold one row per sample: the server's batching concatenates them when passes of several
    # requests share a forward, and requires every other kwarg to be equal across those passes. Empty: passes
    # never share a forward.
    dit_row_kwargs: ClassVar[tuple[str, ...]] = (
        "hidden_states",
        "encoder_hidden_states",
        "encoder_hidden_states_mask",
        "encoder_hidden_states_image",
        "pooled_projections",
        "timestep",
        "guidance",
    )
    dit_config: DiTConfig = dataclasses.field(default_factory=DiTConfig)
    vae_config: VAEConfig = dataclasses.field(default_factory=VAEConfig)
    text_encoder_configs: tuple[TextEncoderConfig, ...] = ()
    # True when the DiT takes `guidance_scale` through a guidance embedding (guidance-distilled models such as
    # FLUX.1-dev); real classifier-free guidance then runs only with a negative prompt and `true_cfg_scale` > 1.
    should_use_guidance: bool = False
    max_resolution: int = 4096
    # How many input images a request takes (image-conditioned models: at least one).
    min_input_images: int = 0
    max_input_images: int = 0

    def input_image_range(self) -> tuple[int, int]:
        """How many input images a request may take, (at least, at most)."""
        return self.min_input_images, self.max_input_images

    # --- the request ------------------------------------------------------------------------------------------
    def prepare_request(self, batch: Req) -> None:
        """Model-specific changes to a request before it is validated, e.g. fitting it to a pixel budget."""

    def postprocess_text_encodings(self, encodings: list[TextEncoding], batch: Req) -> list[TextEncoding]:
        """Combines the text encoders' outputs (one per encoder) into what the DiT takes; by default as they are."""
        return encodings

    def images_per_sample(self, batch: Req) -> int:
        """How many images one sample decodes to: one, or e.g. one per layer for a layer-decomposition model."""
        return 1

    def image_encoder_states(self, outputs: Any) -> torch.Tensor:
        """The image encoder's states that condition the DiT (`ImageEncodingStage`): by default the second-to-last
        hidden states (Wan2.1-I2V's CLIP)."""
        return outputs.hidden_states[-2]

    def preprocess_condition_image(self, image: Image.Image, batch: Req) -> torch.Tensor:
        """An input image as the VAE takes it, (1, 3, H, W) in [-1, 1]; by default at the requested size."""
        processor = VaeImageProcessor(vae_scale_factor=self.pixel_multiple())
        return processor.preprocess(image, batch.height, batch.width)

    # --- guidance -------------------------------------------------------------------------------------------
    def cfg_scale(self, batch: Req) -> float | None:
        """The classifier-free guidance scale of this request, or None when it runs without CFG."""
        if self.should_use_guidance:
            wants_true_cfg = batch.negative_prompt is not None and batch.true_cfg_scale > 1.0
            return batch.true_cfg_scale if wants_true_cfg else None
        return batch.guidance_scale if batch.guidance_scale > 1.0 else None

    # --- latents --------------------------------------------------------------------------------------------
    def pixel_multiple(self) -> int:
        """Height and width must be multiples of this."""
        return self.vae_config.spatial_compression

    def prepare_latent_shape(self, batch: Req) -> tuple[int, ...]:
        """Shape of the initial noise, before any packing."""
        scale = self.vae_config.spatial_compression
        return (
            batch.batch_size,
            self.vae_config.latent_channels,
            batch.height // scale,
            batch.width // scale,
        )

    def pack_latents(self, latents: torch.Tensor, batch: Req) -> torch.Tensor:
        """The layout the DiT takes; identity unless the model packs patches into tokens."""
        return latents

    def pack_image_latents(self, latents: torch.Tensor, batch: Req) -> torch.Tensor:
        """The layout in which input-image latents join the DiT's input; by default that of the noise."""
        return self.pack_latents(latents, batch)

    def unpack_latents(self, latents: torch.Tensor, batch: Req) -> torch.Tensor:
        """Back to the VAE's (B, C, H, W) layout; the inverse of `pack_latents`."""
        return latents

    # --- denoising ------------------------------------------------------------------------------------------
    def get_freqs_cis(self, batch: Req, device: torch.device, rotary_emb: Any, dtype: torch.dtype) -> Any:
        """Rotary position embeddings for the DiT, computed once per request; None for models without them."""
        return None

    def prepare_pos_cond_kwargs(self, batch: Req, latent_model_input: torch.Tensor, t: torch.Tensor, **kwargs):
        """The DiT's forward kwargs for the conditional (positive-prompt) pass of one step."""
        raise NotImplementedError(f"{type(self).__name__} must say what its DiT's forward takes")

    def prepare_neg_cond_kwargs(self, batch: Req, latent_model_input: torch.Tensor, t: torch.Tensor, **kwargs):
        """The DiT's forward kwargs for the unconditional (negative-prompt) pass of one step."""
        raise NotImplementedError(f"{type(self).__name__} must say what its DiT's forward takes")

    def select_expert(self, batch: Req, t: torch.Tensor) -> tuple[int, float]:
        """Which DiT runs this step (0, or 1 for a pipeline's `transformer_2`) and its CFG scale; one DiT by default."""
        return 0, batch.cfg_scale

    def prepare_extra_pass_kwargs(
        self, batch: Req, latent_model_input: torch.Tensor, t: torch.Tensor, step: int, **kwargs
    ) -> dict[str, Any] | None:
        """Kwargs of one more DiT pass at this step (e.g. SD3's skip-layer guidance), or None for none."""
        return None

    def combine_extra_pass(
        self, noise_pred: torch.Tensor, noise_cond: torch.Tensor, noise_extra: torch.Tensor, batch: Req
    ) -> torch.Tensor:
        """Folds the extra pass into the guided prediction; `noise_cond` is the plain conditional one."""
        raise NotImplementedError(f"{type(self).__name__} asks for an extra pass but does not combine it")

    def combine_cfg(
        self, noise_pred: torch.Tensor, noise_uncond: torch.Tensor, scale: float, batch: Req
    ) -> torch.Tensor:
        """Classifier-free guidance at `scale` (this step's: see `select_expert`): push the prediction away from the
        unconditional one."""
        return noise_uncond + scale * (noise_pred - noise_uncond)

    def postprocess_noise_pred(self, noise_pred: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        """The DiT's output as the scheduler takes it: models that append conditioning tokens cut them off here,
        models whose DiT predicts the negated velocity negate it here."""
        return noise_pred

    def normalize_image_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """An input image's VAE latents as the DiT takes them; by default the inverse of decoding's denormalization,
        `(latents - shift) * scale`."""
        scale, shift = (v.to(latents) if torch.is_tensor(v) else v for v in self.get_decode_scale_and_shift())
        return (latents - shift if shift is not None else latents) * scale

    # --- decoding -------------------------------------------------------------------------------------------
    def get_decode_scale_and_shift(self) -> tuple[float, float | None]:
        """(scale, shift) such that the VAE decodes `latents / scale + shift`."""
        return self.vae_config.decode_scale_and_shift()


@dataclasses.dataclass
class ImagePipelineConfig(PipelineConfig):
    """A pipeline that makes still images."""

    task_type: ModelTaskType = ModelTaskType.T2I
