"""Random-weight Stable Diffusion 3 / 3.5 pipelines in Diffusers format: the real layout and geometry, tiny widths."""

import os
import pathlib
from collections.abc import Mapping
from typing import Any

from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline
from diffusers.models.attention_processor import Attention
from diffusers.models.normalization import AdaLayerNormContinuous, AdaLayerNormZero, SD35AdaLayerNormZeroX

from easel.testing.conditioning import strengthen_conditioning
from easel.testing.flux import TINY_FLUX_VAE_CONFIG
from easel.testing.seeding import seeded
from easel.testing.text_encoders import (
    TEXT_ENCODER_HIDDEN_SIZE,
    build_clip_text_encoder_with_projection,
    build_t5_encoder,
)
from easel.testing.tokenizers import build_clip_tokenizer, build_open_clip_tokenizer, build_t5_tokenizer

SD3_LATENT_CHANNELS = 16

# CLIP-L and CLIP-G of different widths (768 and 1280 in the real model), so that swapping them changes shapes,
# and together narrower than T5 (4096 real, 32 here), so that SD3's zero-padding of [CLIP-L | CLIP-G] up to T5's
# width pads (by 4) as it does at full size.
CLIP_L_HIDDEN_SIZE = 12
CLIP_G_HIDDEN_SIZE = 16
T5_HIDDEN_SIZE = TEXT_ENCODER_HIDDEN_SIZE

# An SD3.5-medium-shaped transformer: qk RMSNorm, dual attention in the first blocks (not the last, whose text
# stream is pre-only), 2x2 patches over 16 latent channels. The 16x16 position table covers up to 256x256 pixels.
TINY_SD3_TRANSFORMER_CONFIG: dict[str, Any] = {
    "sample_size": 32,
    "patch_size": 2,
    "in_channels": SD3_LATENT_CHANNELS,
    "out_channels": SD3_LATENT_CHANNELS,
    "num_layers": 4,
    "attention_head_dim": 16,
    "num_attention_heads": 2,
    "joint_attention_dim": T5_HIDDEN_SIZE,
    "caption_projection_dim": 32,  # heads x head_dim: the text stream shares the blocks' width
    "pooled_projection_dim": CLIP_L_HIDDEN_SIZE + CLIP_G_HIDDEN_SIZE,
    "pos_embed_max_size": 16,
    "dual_attention_layers": (0, 1),
    "qk_norm": "rms_norm",
}

# Overrides of `TINY_SD3_TRANSFORMER_CONFIG` for an SD3-medium-shaped transformer (plain MMDiT blocks).
SD3_MEDIUM_TRANSFORMER_OVERRIDES: dict[str, Any] = {"dual_attention_layers": (), "qk_norm": None}

# Skip-layer guidance over middle blocks, as StabilityAI recommends [7, 8, 9] of SD3.5-medium's 24.
TINY_SD3_SKIP_GUIDANCE_LAYERS = [1, 2]

# FLUX.1's thin VAE geometry (8x, 16 latent channels, no quant convs) with SD3's latent statistics.
TINY_SD3_VAE_CONFIG: dict[str, Any] = {**TINY_FLUX_VAE_CONFIG, "scaling_factor": 1.5305, "shift_factor": 0.0609}

# `stabilityai/stable-diffusion-3-medium-diffusers/scheduler/scheduler_config.json` (SD3.5 has the same): a fixed
# shift of 3, no resolution-dependent shifting.
SD3_SCHEDULER_CONFIG: dict[str, Any] = {"num_train_timesteps": 1000, "shift": 3.0}

# With the inits of easel/testing/conditioning.py, over seeds 0-4 at 64x64 and 48x80 (2 steps, CFG 4.5): a prompt
# change moves the pixels by 0.49 at least, a T5-only change (`prompt_3`) by 0.019 at least (3e-3 with the default
# init), with or without skip-layer guidance; fp32 outputs stay within 1e-5 of float64.

# Each component draws its weights from its own seed, derived from the build's seed.
_COMPONENT_SEED_OFFSETS = {"text_encoder": 0, "text_encoder_2": 1, "text_encoder_3": 2, "transformer": 3, "vae": 4}


def build_sd3_pipeline(
    path: str | os.PathLike[str],
    seed: int = 0,
    *,
    transformer_config: Mapping[str, Any] | None = None,
) -> pathlib.Path:
    """Write a random-weight `StableDiffusion3Pipeline` folder at `path` and return it.

    `transformer_config` overrides fields of `TINY_SD3_TRANSFORMER_CONFIG` (`SD3_MEDIUM_TRANSFORMER_OVERRIDES` for
    an SD3-medium-shaped DiT).
    """
    tokenizer, tokenizer_2, tokenizer_3 = build_clip_tokenizer(), build_open_clip_tokenizer(), build_t5_tokenizer()
    with seeded(seed + _COMPONENT_SEED_OFFSETS["text_encoder"]):
        text_encoder = build_clip_text_encoder_with_projection(tokenizer, CLIP_L_HIDDEN_SIZE)
    with seeded(seed + _COMPONENT_SEED_OFFSETS["text_encoder_2"]):
        text_encoder_2 = build_clip_text_encoder_with_projection(tokenizer_2, CLIP_G_HIDDEN_SIZE, hidden_act="gelu")
    with seeded(seed + _COMPONENT_SEED_OFFSETS["text_encoder_3"]):
        text_encoder_3 = build_t5_encoder(tokenizer_3)
    with seeded(seed + _COMPONENT_SEED_OFFSETS["transformer"]):
        transformer = SD3Transformer2DModel(**{**TINY_SD3_TRANSFORMER_CONFIG, **(transformer_config or {})})
        strengthen_conditioning(
            transformer, (AdaLayerNormZero, SD35AdaLayerNormZeroX, AdaLayerNormContinuous), (Attention,)
        )
    with seeded(seed + _COMPONENT_SEED_OFFSETS["vae"]):
        vae = AutoencoderKL(**TINY_SD3_VAE_CONFIG)
    pipeline = StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(**SD3_SCHEDULER_CONFIG),
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        text_encoder_2=text_encoder_2,
        tokenizer_2=tokenizer_2,
        text_encoder_3=text_encoder_3,
        tokenizer_3=tokenizer_3,
    )
    output_path = pathlib.Path(path)
    pipeline.save_pretrained(output_path)
    return output_path


# kind -> builder(path, seed), for `easel.testing.TINY_PIPELINE_BUILDERS`.
SD3_BUILDERS = {"sd3": build_sd3_pipeline}

__all__ = [
    "SD3_BUILDERS",
    "SD3_MEDIUM_TRANSFORMER_OVERRIDES",
    "SD3_SCHEDULER_CONFIG",
    "TINY_SD3_SKIP_GUIDANCE_LAYERS",
    "TINY_SD3_TRANSFORMER_CONFIG",
    "TINY_SD3_VAE_CONFIG",
    "build_sd3_pipeline",
]
