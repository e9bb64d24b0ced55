"""`GlmImageBeforeDenoisingStage`: everything GLM-Image does before its denoising loop, in one stage (the hybrid style).

It ports Diffusers' `GlmImagePipeline.__call__` up to the loop: the vision-language model writes the image's prior
codes autoregressively (transformers' `generate`, sampling seeded from the request's seed as Diffusers seeds it:
torch's global generator, here inside a fork so the caller's stream is left as it was); condition images give
their own codes, and their VAE latents go once through the DiT to fill its per-block key/value caches; then the
standard stages' work: glyph encoding, the noise, and GLM-Image's schedule. The batch is left as the standard
`DenoisingStage` and `DecodingStage` take it (`GlmImagePipelineConfig` shapes each DiT call).
"""

import numpy as np
import torch
import torch.nn.functional as F
from diffusers.image_processor import VaeImageProcessor

from easel.runtime.pipelines_core.schedule_batch import Req
from easel.runtime.pipelines_core.stages.base import PipelineStage
from easel.runtime.pipelines_core.stages.input_validation import InputValidationStage
from easel.runtime.pipelines_core.stages.latent_preparation import LatentPreparationStage
from easel.runtime.pipelines_core.stages.text_encoding import TextEncodingStage
from easel.runtime.pipelines_core.stages.timestep_preparation import set_schedule
from easel.runtime.server_args import ServerArgs

# GLM-Image's schedule shift: mu = max_shift * sqrt(image tokens / 256) + base_shift (defaults if the scheduler's
# config gives none).
BASE_IMAGE_SEQ_LEN, BASE_SHIFT, MAX_SHIFT = 256, 0.25, 0.75


def upsampled_codes(codes: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """A grid of codes (rows x cols, flattened) at twice the resolution, nearest: (4 rows cols,), the DiT's patches."""
    grid = codes.view(1, 1, rows, cols).float()
    return F.interpolate(grid, scale_factor=2, mode="nearest").long().flatten()


class GlmImageBeforeDenoisingStage(PipelineStage):
    """Checks the request, writes the prior codes, caches the condition images, encodes the glyphs, draws the noise
    and sets the schedule."""

    input_fields = ("prompt",)
    output_fields = ("prompt_embeds", "latents", "raw_latent_shape", "generator", "timesteps", "sigmas")

    def __init__(
        self, processor, vision_language_encoder, vae, transformer, scheduler, text_encoding: TextEncodingStage
    ):
        self.processor, self.vision_language_encoder = processor, vision_language_encoder
        self.vae, self.transformer, self.scheduler = vae, transformer, scheduler
        self.validation, self.text_encoding, self.latents = (
            InputValidationStage(),
            text_encoding,
            LatentPreparationStage(),
        )

    def forward(self, batch: Req, server_args: ServerArgs) -> Req:
        device = server_args.torch_device
        batch = self.validation.forward(batch, server_args)
        # 1. The prior: the image's codes (one per 32 pixels, upsampled to the DiT's 16), repeated per output.
        prior, condition_codes = self._prior_codes(batch, device)
        batch.extra["prior_token_ids"] = prior.repeat_interleave(batch.num_outputs_per_prompt, dim=0)
        # 2. The glyphs of the prompt's quoted text (and of "" for CFG's unconditional pass).
        batch = self.text_encoding.forward(batch, server_args)
        # 3. The noise, from the request's own generator.
        batch = self.latents.forward(batch, server_args)
        # 4. Image-to-image: the condition images' keys and values, cached in every block.
        if batch.condition_images:
            batch.extra["kv_caches"] = self._cache_condition_images(batch, condition_codes, server_args)
        # 5. The schedule: 1000 down to 1 evenly, as integers, shifted by mu.
        steps = batch.num_inference_steps
        timesteps = np.linspace(1000, 1.0, steps + 1)[:-1].astype(np.int64).astype(np.float32)
        config = self.scheduler.config
        image_tokens = (batch.height // 16) * (batch.width // 16)
        mu = (image_tokens / config.get("base_image_seq_len", BASE_IMAGE_SEQ_LEN)) ** 0.5
        mu = mu * config.get("max_shift", MAX_SHIFT) + config.get("base_shift", BASE_SHIFT)
        set_schedule(self.scheduler, batch, device=device, timesteps=timesteps, sigmas=timesteps / 1000, mu=mu)
        return batch

    def _prior_codes(self, batch: Req, device) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """(B, DiT patches) prior codes of the prompts, and each condition image's codes at the DiT's resolution."""
        images = batch.condition_images
        messages = [
            [
                {
                    "role": "user",
                    "content": [*({"type": "image", "image": image} for image in images), {"type": "text", "text": p}],
                }
            ]
            for p in batch.prompt
        ]
        inputs = self.processor.apply_chat_template(
            messages,
            tokenize=True,
            padding=len(batch.prompt) > 1,
            target_h=batch.height,
            target_w=batch.width,
            return_dict=True,
            return_tensors="pt",
        ).to(device)
        grids = inputs["image_grid_thw"]
        per_sample = inputs.get("images_per_sample")
        grids = grids[: per_sample[0].item() if per_sample is not None else grids.shape[0]]  # the first sample's
        sizes = [int(h * w) for _, h, w in grids.tolist()]
        if images:  # the target grid comes last; the codes are all that is generated
            new_tokens, offset, (_, rows, cols) = sizes[-1] + 1, 0, grids[-1].tolist()
        else:  # text-to-image: a small preview grid is generated first, then the target (the first grid)
            new_tokens, offset, (_, rows, cols) = sum(sizes) + 1, sum(sizes[1:]), grids[0].tolist()

        condition_codes = []
        if images:
            sources = grids[: len(images)]
            features = self.vision_language_encoder.get_image_features(inputs["pixel_values"], sources).pooler_output
            codes = self.vision_language_encoder.get_image_tokens(features, sources)
            grid_sizes = [int(h * w) for _, h, w in sources.tolist()]
            for image_codes, (_, h, w) in zip(codes.split(grid_sizes), sources.tolist(), strict=True):
                condition_codes.append(upsampled_codes(image_codes, int(h), int(w)))

        with torch.random.fork_rng(devices=[device] if torch.device(device).type == "cuda" else []):
            torch.manual_seed(batch.seed)
            if torch.device(device).type == "cuda":
                torch.cuda.manual_seed(batch.seed)
            outputs = self.vision_language_encoder.generate(**inputs, max_new_tokens=new_tokens, do_sample=True)
        start = inputs["input_ids"].shape[-1] + offset
        prior = [upsampled_codes(row[start : start + rows * cols], rows, cols) for row in outputs]
        return torch.stack(prior), condition_codes

    def _cache_condition_images(self, batch: Req, condition_codes: list[torch.Tensor], server_args: ServerArgs):
        """Each condition image's normalized VAE latents through the DiT once, at timestep 0 without text: every
        block's cache records their keys and values (each image attending to itself), for the conditional passes."""
        config = server_args.pipeline_config
        param = next(self.vae.parameters())
        dtype = batch.prompt_embeds[0].dtype
        caches = self.transformer.new_kv_cache()
        for cache in caches:
            cache.read, cache.record = False, True
        processor = VaeImageProcessor(vae_scale_factor=config.vae_config.spatial_compression)
        for image, codes in zip(batch.condition_images, condition_codes, strict=True):
            height, width = (side // 16 * 16 for side in image.size[::-1])
            pixels = processor.preprocess(image, height=height, width=width).to(param.device, dtype)
            latents = config.normalize_image_latents(self.vae.encode(pixels).latent_dist.mode())  # (1, C, h, w)
            device = latents.device
            self.transformer(
                hidden_states=latents.to(dtype),
                encoder_hidden_states=batch.prompt_embeds[0][:1, :0],
                prior_token_id=codes.to(device),
                prior_token_drop=torch.zeros_like(codes, dtype=torch.bool, device=device),
                timestep=torch.zeros(1, device=device),
                target_size=torch.tensor([[height, width]], device=device),
                crop_coords=torch.zeros(1, 2, device=device),
                freqs_cis=self.transformer.rotary_emb(*latents.shape[-2:]),
                kv_caches=caches,
            )
        for cache in caches:
            cache.read, cache.record = True, False
        return caches
