"""Random-weight FLUX.1 pipelines in Diffusers format: the real layout and geometry, tiny widths."""

import dataclasses
import os
import pathlib
from collections.abc import Mapping
from typing import Any, Literal

from diffusers import (
    AutoencoderKL,
    FlowMatchEulerDiscreteScheduler,
    FluxKontextPipeline,
    FluxPipeline,
    FluxTransformer2DModel,
)
from diffusers.models.normalization import AdaLayerNormContinuous, AdaLayerNormZero, AdaLayerNormZeroSingle
from diffusers.models.transformers.transformer_flux import FluxAttention

from easel.testing.conditioning import strengthen_conditioning
from easel.testing.seeding import seeded
from easel.testing.text_encoders import TEXT_ENCODER_HIDDEN_SIZE, build_clip_text_encoder, build_t5_encoder
from easel.testing.tokenizers import build_clip_tokenizer, build_t5_tokenizer

# 16 latent channels packed 2x2 into each token, as in FLUX.1.
FLUX_LATENT_CHANNELS = 16
FLUX_PACKED_CHANNELS = FLUX_LATENT_CHANNELS * 2 * 2

TINY_FLUX_TRANSFORMER_CONFIG: dict[str, Any] = {
    "patch_size": 1,
    "in_channels": FLUX_PACKED_CHANNELS,
    "num_layers": 2,
    "num_single_layers": 2,
    "num_attention_heads": 2,
    "attention_head_dim": 16,
    "axes_dims_rope": (4, 6, 6),
    "joint_attention_dim": TEXT_ENCODER_HIDDEN_SIZE,
    "pooled_projection_dim": TEXT_ENCODER_HIDDEN_SIZE,
}

# About 70 M parameters: enough that the DiT dominates a CPU benchmark at 256x256 over the tiny encoders and VAE.
MEDIUM_FLUX_TRANSFORMER_CONFIG: dict[str, Any] = {
    **TINY_FLUX_TRANSFORMER_CONFIG,
    "num_layers": 4,
    "num_single_layers": 8,
    "num_attention_heads": 8,
    "attention_head_dim": 64,
    "axes_dims_rope": (16, 24, 24),
}

# FLUX.1's VAE geometry (8x spatial compression, 16 latent channels, its latent statistics, no quant convs)
# with one thin layer per block.
TINY_FLUX_VAE_CONFIG: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
    "block_out_channels": (8, 8, 8, 8),
    "layers_per_block": 1,
    "norm_num_groups": 4,
    "latent_channels": FLUX_LATENT_CHANNELS,
    "sample_size": 64,
    "scaling_factor": 0.3611,
    "shift_factor": 0.1159,
    "use_quant_conv": False,
    "use_post_quant_conv": False,
}

_SCHEDULER_SEQUENCE_LENGTHS = {"base_image_seq_len": 256, "max_image_seq_len": 4096}


@dataclasses.dataclass(frozen=True)
class FluxVariant:
    """What tells FLUX.1 checkpoints apart beyond their sizes: guidance distillation and the sigma schedule."""

    guidance_embeds: bool
    scheduler_config: Mapping[str, Any]
    pipeline_cls: type = FluxPipeline


_DEV_SCHEDULER_CONFIG = {
    "shift": 3.0,
    "use_dynamic_shifting": True,
    "base_shift": 0.5,
    "max_shift": 1.15,
    **_SCHEDULER_SEQUENCE_LENGTHS,
}

FLUX_VARIANTS: dict[str, FluxVariant] = {
    # FLUX.1-dev: guidance-distilled, sigmas shifted by the image's token count.
    "dev": FluxVariant(guidance_embeds=True, scheduler_config=_DEV_SCHEDULER_CONFIG),
    # FLUX.1-Kontext-dev: FLUX.1-dev's architecture and schedule, editing an input image.
    "kontext": FluxVariant(
        guidance_embeds=True, scheduler_config=_DEV_SCHEDULER_CONFIG, pipeline_cls=FluxKontextPipeline
    ),
    # FLUX.1-schnell: timestep-distilled, unshifted sigmas.
    "schnell": FluxVariant(
        guidance_embeds=False,
        scheduler_config={
            "shift": 1.0,
            "use_dynamic_shifting": False,
            "base_shift": 0.5,
            "max_shift": 1.15,
            **_SCHEDULER_SEQUENCE_LENGTHS,
        },
    ),
}

# With the inits of easel/testing/conditioning.py, measured over seeds 0-4 at 64x64 and 48x80 with 2 steps: a prompt
# change moves the pixels by 0.06-0.75 and a T5-only change by 0.02-0.18, about 10x what the default init gives;
# outputs stay within 3e-6 of float64.

# Each component draws its weights from its own seed, derived from the build's seed.
_COMPONENT_SEED_OFFSETS = {"text_encoder": 0, "text_encoder_2": 1, "transformer": 2, "vae": 3}


def build_flux_pipeline(
    path: str | os.PathLike[str],
    seed: int = 0,
    *,
    variant: Literal["dev", "schnell", "kontext"] = "dev",
    transformer_config: Mapping[str, Any] | None = None,
) -> pathlib.Path:
    """Write a random-weight `FluxPipeline` (or, for "kontext", `FluxKontextPipeline`) folder at `path`.

    `transformer_config` overrides fields of `TINY_FLUX_TRANSFORMER_CONFIG` (pass `MEDIUM_FLUX_TRANSFORMER_CONFIG`
    for a benchmark-sized DiT); the text encoders and the VAE stay tiny whatever the transformer's size.
    """
    flux_variant = FLUX_VARIANTS[variant]
    tokenizer, tokenizer_2 = build_clip_tokenizer(), build_t5_tokenizer()
    with seeded(seed + _COMPONENT_SEED_OFFSETS["text_encoder"]):
        text_encoder = build_clip_text_encoder(tokenizer)
    with seeded(seed + _COMPONENT_SEED_OFFSETS["text_encoder_2"]):
        text_encoder_2 = build_t5_encoder(tokenizer_2)
    with seeded(seed + _COMPONENT_SEED_OFFSETS["transformer"]):
        transformer = FluxTransformer2DModel(
            **{
                **TINY_FLUX_TRANSFORMER_CONFIG,
                "guidance_embeds": flux_variant.guidance_embeds,
                **(transformer_config or {}),
            }
        )
        strengthen_conditioning(
            transformer, (AdaLayerNormZero, AdaLayerNormZeroSingle, AdaLayerNormContinuous), (FluxAttention,)
        )
    with seeded(seed + _COMPONENT_SEED_OFFSETS["vae"]):
        vae = AutoencoderKL(**TINY_FLUX_VAE_CONFIG)
    pipeline = flux_variant.pipeline_cls(
        scheduler=FlowMatchEulerDiscreteScheduler(**flux_variant.scheduler_config),
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        text_encoder_2=text_encoder_2,
        tokenizer_2=tokenizer_2,
        transformer=transformer,
    )
    output_path = pathlib.Path(path)
    pipeline.save_pretrained(output_path)
    return output_path
