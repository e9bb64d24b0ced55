"""`QwenImageLayeredBeforeDenoisingStage`: everything Qwen-Image-Layered does before its denoising loop, in one stage.

The worked example of the hybrid style: this stage ports Diffusers' `QwenImageLayeredPipeline.__call__` up to the
loop (checks, the input image, the prompts, the input image's latents, the noise, the schedule) and leaves the
batch as the standard `DenoisingStage` and `DecodingStage` take it; `QwenImageLayeredPipelineConfig`'s callbacks
shape each DiT call and the decoding of the layers.
"""

import math

import numpy as np
import torch
from diffusers.image_processor import VaeImageProcessor

from easel.configs.sample.qwen_image_layered import LAYERED_RESOLUTIONS
from easel.errors import InvalidInputError
from easel.runtime.inputs import load_images
from easel.runtime.pipelines_core.schedule_batch import Req
from easel.runtime.pipelines_core.stages.base import PipelineStage
from easel.runtime.pipelines_core.stages.input_validation import InputValidationStage
from easel.runtime.pipelines_core.stages.timestep_preparation import set_schedule
from easel.runtime.server_args import ServerArgs

# Diffusers' shift for this model: mu = sqrt(input image tokens / 256), 256 being the tokens of a 256x256 image.
BASE_IMAGE_SEQ_LEN = 256
MAX_SEQUENCE_LENGTH = 1024  # Diffusers' limit on the prompt's tokens


class QwenImageLayeredBeforeDenoisingStage(PipelineStage):
    """Checks the request, encodes the prompts and the RGBA input image, draws the noise and sets the schedule."""

    input_fields = ("prompt",)
    output_fields = (
        "prompt_embeds",
        "image_latents",
        "latents",
        "raw_latent_shape",
        "generator",
        "timesteps",
        "sigmas",
        "num_inference_steps",
    )

    def __init__(self, vae, text_encoder, tokenizer, scheduler):
        self.vae = vae
        self.text_encoder = text_encoder
        self.tokenizer = tokenizer
        self.scheduler = scheduler
        self.validation = InputValidationStage()

    def verify_output(self, batch: Req, server_args: ServerArgs) -> list[str]:
        missing = super().verify_output(batch, server_args)
        if batch.do_classifier_free_guidance and not batch.negative_prompt_embeds:
            missing.append("negative_prompt_embeds")
        return missing

    def forward(self, batch: Req, server_args: ServerArgs) -> Req:
        config = server_args.pipeline_config
        device = server_args.torch_device

        # 1. Check the request: Layered's own parameters, then the checks every model shares (one input image, a
        #    prompt, steps, guidance). The config's `prepare_request` sizes the output: the input image's aspect
        #    ratio at the `resolution` bucket. An empty prompt is refused (Diffusers would caption the image).
        self._check_layered_params(batch)
        batch = self.validation.forward(batch, server_args)

        # 2. The input image with its transparency (the shared checks load images as RGB), resized to the output
        #    size, in [-1, 1]: (1, 4, 1, H, W), one frame for the video-style VAE.
        batch.condition_images = load_images(batch.image, mode="RGBA")
        processor = VaeImageProcessor(vae_scale_factor=config.pixel_multiple())
        image = processor.resize(batch.condition_images[0], batch.height, batch.width)
        pixels = processor.preprocess(image, batch.height, batch.width).unsqueeze(2)

        # 3. The prompts (and the negative ones under CFG), with Qwen-Image's template and encoder; one entry each,
        #    as from one text encoder.
        embeds, mask = self._encode_prompts(batch.prompt, batch, config)
        batch.prompt_embeds, batch.prompt_embeds_mask = [embeds], [mask]
        if batch.do_classifier_free_guidance:
            embeds, mask = self._encode_prompts(batch.negative_prompt, batch, config)
            batch.negative_prompt_embeds, batch.negative_prompt_embeds_mask = [embeds], [mask]

        # 4. The input image's normalized latents, one frame, repeated for every sample; they follow the generated
        #    frames in the DiT's sequence.
        image_latents = self._encode_image(pixels).repeat(batch.batch_size, 1, 1, 1, 1)  # (B, C, 1, h, w)
        batch.image_latent_shapes = [tuple(image_latents.shape)]
        batch.image_latents = [config.pack_latents(image_latents.transpose(1, 2), batch)]

        # 5. The noise, (B, layers + 1, C, h, w), drawn as Diffusers draws it from a CPU generator, then packed.
        shape = config.prepare_latent_shape(batch)
        batch.generator = torch.Generator("cpu").manual_seed(batch.seed)
        noise = torch.randn(shape, generator=batch.generator, dtype=torch.float32)
        batch.latents = config.pack_latents(noise.to(device), batch)
        batch.raw_latent_shape = tuple(shape)

        # 6. The schedule: sigmas evenly from 1 down to (not including) 0, shifted by the input image's size.
        sigmas = np.linspace(1.0, 0.0, batch.num_inference_steps + 1)[:-1]
        mu = math.sqrt(batch.image_latents[0].shape[1] / BASE_IMAGE_SEQ_LEN)
        set_schedule(self.scheduler, batch, sigmas=sigmas, mu=mu, device=device)
        return batch

    @staticmethod
    def _check_layered_params(batch: Req) -> None:
        layers, resolution = batch.extra["layers"], batch.extra["resolution"]
        if not isinstance(layers, int) or layers < 1:
            raise InvalidInputError(f"layers must be a whole number of at least 1, got {layers!r}")
        if resolution not in LAYERED_RESOLUTIONS:
            raise InvalidInputError(f"resolution must be one of {LAYERED_RESOLUTIONS}, got {resolution!r}")
        if batch.max_sequence_length > MAX_SEQUENCE_LENGTH:
            raise InvalidInputError(
                f"max_sequence_length must be at most {MAX_SEQUENCE_LENGTH}, got {batch.max_sequence_length}"
            )

    def _encode_prompts(self, prompts: list[str], batch: Req, config) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Embeddings (B, T, D) and mask (B, T), or None when every token is real; repeated for each output."""
        (text_config,) = config.text_encoder_configs
        encoding = text_config.encode(prompts, self.tokenizer, self.text_encoder, batch)
        n = batch.num_outputs_per_prompt
        mask = None if encoding.mask is None else encoding.mask.repeat_interleave(n, dim=0)
        return encoding.embeds.repeat_interleave(n, dim=0), mask

    def _encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        """The latent distribution's mode, normalized per channel: (1, C, 1, h, w) in float32."""
        param = next(self.vae.parameters())
        latents = self.vae.encode(pixels.to(param.device, param.dtype)).latent_dist.mode()
        mean = torch.tensor(self.vae.config.latents_mean, device=param.device, dtype=latents.dtype)
        std = torch.tensor(self.vae.config.latents_std, device=param.device, dtype=latents.dtype)
        return ((latents - mean.view(1, -1, 1, 1, 1)) / std.view(1, -1, 1, 1, 1)).float()
