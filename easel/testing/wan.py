"""Random-weight Wan2.1 / Wan2.2 video pipelines in Diffusers format: the real layout and geometry, tiny widths."""

import json
import os
import pathlib
from collections.abc import Mapping
from typing import Any

import torch
from diffusers import (
    AutoencoderKLWan,
    UniPCMultistepScheduler,
    WanImageToVideoPipeline,
    WanPipeline,
    WanTransformer3DModel,
)
from diffusers.models.transformers.transformer_wan import WanAttention
from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel

from easel.testing.conditioning import CONDITIONING_EMBEDDING_GAIN, MODULATION_GAIN, QUERY_KEY_NORM_GAIN
from easel.testing.seeding import seeded
from easel.testing.text_encoders import TEXT_ENCODER_HIDDEN_SIZE, build_umt5_encoder
from easel.testing.tokenizers import build_t5_tokenizer

WAN21_LATENT_CHANNELS = 16
WAN22_LATENT_CHANNELS = 48
# Wan2.1-I2V's transformer input: noisy latents, 4 mask channels (one per frame of a latent frame), image latents.
WAN_I2V_IN_CHANNELS = 2 * WAN21_LATENT_CHANNELS + 4

# CLIP ViT-H/14 in the real I2V folders (1280 wide, 257 tokens); 16 wide and 17 tokens (32 px / 8 px patches) here.
CLIP_VISION_HIDDEN_SIZE = 16
CLIP_IMAGE_SIZE = 32

# A Wan2.1-shaped transformer: 1x2x2 patches, rotary head split 4 / 4 / 4 over frame / row / column, UMT5 width in.
TINY_WAN_TRANSFORMER_CONFIG: dict[str, Any] = {
    "patch_size": (1, 2, 2),
    "num_attention_heads": 2,
    "attention_head_dim": 12,
    "in_channels": WAN21_LATENT_CHANNELS,
    "out_channels": WAN21_LATENT_CHANNELS,
    "text_dim": TEXT_ENCODER_HIDDEN_SIZE,
    "freq_dim": 256,
    "ffn_dim": 32,
    "num_layers": 2,
    "cross_attn_norm": True,
    "qk_norm": "rms_norm_across_heads",
    "eps": 1e-6,
    "rope_max_seq_len": 32,
}
# Wan2.1-I2V: image latents and mask concatenated on channels, CLIP image tokens through added key/value projections
# as wide as the model (5120 = 40 x 128 in the real one).
TINY_WAN_I2V_TRANSFORMER_CONFIG: dict[str, Any] = {
    **TINY_WAN_TRANSFORMER_CONFIG,
    "in_channels": WAN_I2V_IN_CHANNELS,
    "image_dim": CLIP_VISION_HIDDEN_SIZE,
    "added_kv_proj_dim": 24,
}
# Wan2.2-TI2V-5B: 48 latent channels in and out, no image cross-attention (the image enters as the clean first frame).
TINY_WAN22_TI2V_TRANSFORMER_CONFIG: dict[str, Any] = {
    **TINY_WAN_TRANSFORMER_CONFIG,
    "in_channels": WAN22_LATENT_CHANNELS,
    "out_channels": WAN22_LATENT_CHANNELS,
}
# A benchmark-sized Wan2.1 DiT, about 70 M parameters: 16 layers of width 512 (4 heads of 128, Wan's head width), FFN
# 2048, rotary table as long as the real one. Pass it as `transformer_config`; text encoder and VAE stay tiny.
MEDIUM_WAN_TRANSFORMER_CONFIG: dict[str, Any] = {
    **TINY_WAN_TRANSFORMER_CONFIG,
    "num_layers": 16,
    "num_attention_heads": 4,
    "attention_head_dim": 128,
    "ffn_dim": 2048,
    "rope_max_seq_len": 1024,
}

# Wan2.1's VAE geometry (4x temporal, 8x spatial, 16 channels, its per-channel latent statistics) at base width 3.
TINY_WAN_VAE_CONFIG: dict[str, Any] = {
    "base_dim": 3,
    "z_dim": WAN21_LATENT_CHANNELS,
    "dim_mult": [1, 1, 1, 1],
    "num_res_blocks": 1,
    "temperal_downsample": [False, True, True],
}


# A random 3-wide Wan2.1 decoder squeezes every video into pixels of about 0.33..0.61 and so damps what a prompt
# changes; its output convolution scaled 3x spans about 0..0.83, as a trained decoder does. (The tiny Wan2.2 decoder,
# with its latent statistics below, already spans 0..1.)
WAN_VAE_OUTPUT_GAIN = 3.0
# A random encoder maps every image to nearly the same latents; where the image reaches the DiT only through them
# (Wan2.2-I2V-A14B has no image encoder), its output convolution is scaled so that images differ (as Qwen-Image's).
WAN_VAE_ENCODER_GAIN = 50.0


def _wan22_latent_statistics() -> tuple[list[float], list[float]]:
    """48 per-channel means and stds, fixed and of the real ones' magnitudes (the real values are not at hand)."""
    generator = torch.Generator().manual_seed(22)
    mean = (torch.randn(WAN22_LATENT_CHANNELS, generator=generator) * 0.5).round(decimals=4)
    std = (0.5 + torch.rand(WAN22_LATENT_CHANNELS, generator=generator)).round(decimals=4)
    return mean.tolist(), std.tolist()


# Wan2.2's VAE geometry: 2x2 pixel patchify (12 channels in and out), residual blocks, 48 channels, 16x spatial.
TINY_WAN22_VAE_CONFIG: dict[str, Any] = {
    **TINY_WAN_VAE_CONFIG,
    "z_dim": WAN22_LATENT_CHANNELS,
    "in_channels": 12,
    "out_channels": 12,
    "is_residual": True,
    "patch_size": 2,
    "scale_factor_spatial": 16,
    "scale_factor_temporal": 4,
    "latents_mean": _wan22_latent_statistics()[0],
    "latents_std": _wan22_latent_statistics()[1],
}

# `Wan-AI/Wan2.1-T2V-1.3B-Diffusers/scheduler/scheduler_config.json`: UniPC (bh2, order 2) on shifted flow sigmas.
WAN_SCHEDULER_CONFIG: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_start": 0.0001,
    "beta_end": 0.02,
    "beta_schedule": "linear",
    "solver_order": 2,
    "prediction_type": "flow_prediction",
    "predict_x0": True,
    "solver_type": "bh2",
    "lower_order_final": True,
    "timestep_spacing": "linspace",
    "final_sigmas_type": "zero",
    "use_flow_sigmas": True,
    "flow_shift": 3.0,
}
# Wan2.2-TI2V-5B (720p) ships a shift of 5.
WAN22_TI2V_SCHEDULER_CONFIG: dict[str, Any] = {**WAN_SCHEDULER_CONFIG, "flow_shift": 5.0}

# Wan2.2-T2V-A14B: the high-noise expert (`transformer`) runs while t >= 0.875 * 1000, the low-noise one after. With
# shift 3, 2 steps run at t = 999 and 750, so each expert gets one.
WAN22_A14B_BOUNDARY_RATIO = 0.875

# Each component draws its weights from its own seed, derived from the build's seed.
_COMPONENT_SEED_OFFSETS = {"text_encoder": 0, "transformer": 1, "transformer_2": 2, "vae": 3, "image_encoder": 4}


@torch.no_grad()
def strengthen_wan_conditioning(transformer: WanTransformer3DModel) -> None:
    """The init scaling of easel/testing/conditioning.py, applied to a Diffusers Wan DiT.

    Wan's text enters only through cross-attention over 512 tokens, most of them zero padding projected to one
    constant token; sharper qk-norms make the attention pick out the prompt tokens, and stronger timestep
    modulation makes each block's update of the order of the residual stream.
    """
    embedder = transformer.condition_embedder
    for parameter in embedder.time_embedder.linear_2.parameters():
        parameter.mul_(CONDITIONING_EMBEDDING_GAIN)
    embedder.time_proj.weight.mul_(MODULATION_GAIN)
    for module in transformer.modules():
        if isinstance(module, WanAttention):
            for name in ("norm_q", "norm_k", "norm_added_k"):
                if getattr(module, name, None) is not None:
                    getattr(module, name).weight.mul_(QUERY_KEY_NORM_GAIN)


def _transformer(config: dict[str, Any], seed: int) -> WanTransformer3DModel:
    with seeded(seed):
        transformer = WanTransformer3DModel(**config)
        strengthen_wan_conditioning(transformer)
    return transformer.eval()


def _transformer_config(base: dict[str, Any], overrides: Mapping[str, Any] | None) -> dict[str, Any]:
    return {**base, **(overrides or {})}


def _text_components(seed: int) -> dict[str, Any]:
    tokenizer = build_t5_tokenizer()
    with seeded(seed + _COMPONENT_SEED_OFFSETS["text_encoder"]):
        text_encoder = build_umt5_encoder(tokenizer)
    return {"tokenizer": tokenizer, "text_encoder": text_encoder}


def _vae(config: dict[str, Any], seed: int, output_gain: float = 1.0, encoder_gain: float = 1.0) -> AutoencoderKLWan:
    with seeded(seed + _COMPONENT_SEED_OFFSETS["vae"]):
        vae = AutoencoderKLWan(**config).eval()
    with torch.no_grad():
        for parameter in vae.decoder.conv_out.parameters():
            parameter.mul_(output_gain)
        for parameter in vae.encoder.conv_out.parameters():
            parameter.mul_(encoder_gain)
    return vae


def _save(pipeline: Any, path: str | os.PathLike[str]) -> pathlib.Path:
    output_path = pathlib.Path(path)
    pipeline.save_pretrained(output_path)
    return output_path


def build_wan_t2v_pipeline(
    path: str | os.PathLike[str], seed: int = 0, *, transformer_config: Mapping[str, Any] | None = None
) -> pathlib.Path:
    """Write a random-weight Wan2.1-T2V `WanPipeline` folder at `path` and return it.

    `transformer_config` overrides fields of the tiny transformer config (pass `MEDIUM_WAN_TRANSFORMER_CONFIG` for a
    benchmark-sized DiT); the text encoder and the VAE stay tiny whatever the transformer's size.
    """
    config = _transformer_config(TINY_WAN_TRANSFORMER_CONFIG, transformer_config)
    pipeline = WanPipeline(
        **_text_components(seed),
        vae=_vae(TINY_WAN_VAE_CONFIG, seed, WAN_VAE_OUTPUT_GAIN),
        scheduler=UniPCMultistepScheduler(**WAN_SCHEDULER_CONFIG),
        transformer=_transformer(config, seed + _COMPONENT_SEED_OFFSETS["transformer"]),
    )
    return _save(pipeline, path)


def build_wan22_a14b_pipeline(
    path: str | os.PathLike[str], seed: int = 0, *, transformer_config: Mapping[str, Any] | None = None
) -> pathlib.Path:
    """Write a random-weight Wan2.2-T2V-A14B `WanPipeline` folder: two experts switched at `boundary_ratio`.

    `transformer_config` overrides fields of both experts' tiny config.
    """
    config = _transformer_config(TINY_WAN_TRANSFORMER_CONFIG, transformer_config)
    pipeline = WanPipeline(
        **_text_components(seed),
        vae=_vae(TINY_WAN_VAE_CONFIG, seed, WAN_VAE_OUTPUT_GAIN),
        scheduler=UniPCMultistepScheduler(**WAN_SCHEDULER_CONFIG),
        transformer=_transformer(config, seed + _COMPONENT_SEED_OFFSETS["transformer"]),
        transformer_2=_transformer(config, seed + _COMPONENT_SEED_OFFSETS["transformer_2"]),
        boundary_ratio=WAN22_A14B_BOUNDARY_RATIO,
    )
    return _save(pipeline, path)


def build_wan22_ti2v_pipeline(
    path: str | os.PathLike[str], seed: int = 0, *, transformer_config: Mapping[str, Any] | None = None
) -> pathlib.Path:
    """Write a random-weight Wan2.2-TI2V-5B `WanPipeline` folder (48-channel VAE, per-token timesteps).

    As the real folder, it loads in `WanImageToVideoPipeline` too (no image encoder): the image then becomes the
    clean first latent frame, whose tokens get timestep 0. `transformer_config` overrides fields of its tiny config.
    """
    config = _transformer_config(TINY_WAN22_TI2V_TRANSFORMER_CONFIG, transformer_config)
    pipeline = WanPipeline(
        **_text_components(seed),
        vae=_vae(TINY_WAN22_VAE_CONFIG, seed),
        scheduler=UniPCMultistepScheduler(**WAN22_TI2V_SCHEDULER_CONFIG),
        transformer=_transformer(config, seed + _COMPONENT_SEED_OFFSETS["transformer"]),
        expand_timesteps=True,
    )
    return _save(pipeline, path)


def build_clip_vision_encoder() -> CLIPVisionModel:
    """A 2-layer CLIP vision tower of width 16 over 32x32 images in 8x8 patches: 17 tokens (CLS + 16)."""
    config = CLIPVisionConfig(
        hidden_size=CLIP_VISION_HIDDEN_SIZE,
        intermediate_size=37,
        projection_dim=CLIP_VISION_HIDDEN_SIZE,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=CLIP_IMAGE_SIZE,
        patch_size=8,
        hidden_act="gelu",
    )
    return CLIPVisionModel(config).eval()


def build_clip_image_processor() -> CLIPImageProcessor:
    """CLIP's preprocessing (bicubic resize of the short side, center crop, CLIP mean/std) at 32 px."""
    return CLIPImageProcessor(
        size={"shortest_edge": CLIP_IMAGE_SIZE},
        crop_size={"height": CLIP_IMAGE_SIZE, "width": CLIP_IMAGE_SIZE},
    )


def build_wan_i2v_pipeline(
    path: str | os.PathLike[str], seed: int = 0, *, transformer_config: Mapping[str, Any] | None = None
) -> pathlib.Path:
    """Write a random-weight Wan2.1-I2V `WanImageToVideoPipeline` folder (CLIP image encoder and processor).

    `transformer_config` overrides fields of its tiny config.
    """
    config = _transformer_config(TINY_WAN_I2V_TRANSFORMER_CONFIG, transformer_config)
    with seeded(seed + _COMPONENT_SEED_OFFSETS["image_encoder"]):
        image_encoder = build_clip_vision_encoder()
    pipeline = WanImageToVideoPipeline(
        **_text_components(seed),
        vae=_vae(TINY_WAN_VAE_CONFIG, seed, WAN_VAE_OUTPUT_GAIN),
        scheduler=UniPCMultistepScheduler(**WAN_SCHEDULER_CONFIG),
        image_processor=build_clip_image_processor(),
        image_encoder=image_encoder,
        transformer=_transformer(config, seed + _COMPONENT_SEED_OFFSETS["transformer"]),
    )
    return _save(pipeline, path)


def build_wan22_i2v_a14b_pipeline(
    path: str | os.PathLike[str], seed: int = 0, *, transformer_config: Mapping[str, Any] | None = None
) -> pathlib.Path:
    """Write a random-weight Wan2.2-I2V-A14B `WanImageToVideoPipeline` folder: two image-to-video experts switched
    at `boundary_ratio`, and no image encoder (the first frame enters only through the VAE latents)."""
    overrides = {"image_dim": None, "added_kv_proj_dim": None, **(transformer_config or {})}
    config = _transformer_config(TINY_WAN_I2V_TRANSFORMER_CONFIG, overrides)
    pipeline = WanImageToVideoPipeline(
        **_text_components(seed),
        vae=_vae(TINY_WAN_VAE_CONFIG, seed, WAN_VAE_OUTPUT_GAIN, WAN_VAE_ENCODER_GAIN),
        scheduler=UniPCMultistepScheduler(**WAN_SCHEDULER_CONFIG),
        transformer=_transformer(config, seed + _COMPONENT_SEED_OFFSETS["transformer"]),
        transformer_2=_transformer(config, seed + _COMPONENT_SEED_OFFSETS["transformer_2"]),
        boundary_ratio=WAN22_A14B_BOUNDARY_RATIO,
    )
    return _save(pipeline, path)


def _renamed(folder: pathlib.Path, component: str, class_name: str, **component_classes: str) -> None:
    """Names another class in a saved folder's `model_index.json` (component "", where `component_classes` rename
    its components' entries too) or a component's config.json: the folders FastVideo publishes are Diffusers' Wan
    folders under other class names, which Diffusers cannot instantiate and so cannot save."""
    path = folder / component / ("config.json" if component else "model_index.json")
    config = json.loads(path.read_text())
    config["_class_name"] = class_name
    for name, component_class in component_classes.items():
        config[name] = [config[name][0], component_class]
    path.write_text(json.dumps(config, indent=2, sort_keys=True))


def build_fastwan_pipeline(
    path: str | os.PathLike[str], seed: int = 0, *, transformer_config: Mapping[str, Any] | None = None
) -> pathlib.Path:
    """Write a random-weight FastWan2.1-T2V (DMD) folder: a Wan2.1-T2V folder whose model_index names
    `WanDMDPipeline`, as FastVideo's does."""
    folder = build_wan_t2v_pipeline(path, seed, transformer_config=transformer_config)
    _renamed(folder, "", "WanDMDPipeline")
    return folder


def build_wan_causal_pipeline(
    path: str | os.PathLike[str], seed: int = 0, *, transformer_config: Mapping[str, Any] | None = None
) -> pathlib.Path:
    """Write a random-weight self-forcing Wan2.1-T2V folder: `WanCausalDMDPipeline` over a Wan2.1 folder whose
    transformer is named `CausalWanTransformer3DModel` (Wan's weights and config under Diffusers' keys)."""
    folder = build_wan_t2v_pipeline(path, seed, transformer_config=transformer_config)
    _renamed(folder, "", "WanCausalDMDPipeline", transformer="CausalWanTransformer3DModel")
    _renamed(folder, "transformer", "CausalWanTransformer3DModel")
    return folder


# kind -> builder(path, seed), for `easel.testing.TINY_PIPELINE_BUILDERS`.
WAN_BUILDERS = {
    "fastwan": build_fastwan_pipeline,
    "wan-causal": build_wan_causal_pipeline,
    "wan-t2v": build_wan_t2v_pipeline,
    "wan-i2v": build_wan_i2v_pipeline,
    "wan2.2-i2v-a14b": build_wan22_i2v_a14b_pipeline,
    "wan2.2-a14b": build_wan22_a14b_pipeline,
    "wan2.2-ti2v": build_wan22_ti2v_pipeline,
}

__all__ = [
    "MEDIUM_WAN_TRANSFORMER_CONFIG",
    "TINY_WAN22_TI2V_TRANSFORMER_CONFIG",
    "TINY_WAN22_VAE_CONFIG",
    "TINY_WAN_I2V_TRANSFORMER_CONFIG",
    "TINY_WAN_TRANSFORMER_CONFIG",
    "TINY_WAN_VAE_CONFIG",
    "WAN22_A14B_BOUNDARY_RATIO",
    "WAN_BUILDERS",
    "WAN_SCHEDULER_CONFIG",
    "build_wan22_a14b_pipeline",
    "build_fastwan_pipeline",
    "build_wan22_ti2v_pipeline",
    "build_wan_causal_pipeline",
    "build_wan_i2v_pipeline",
    "build_wan_t2v_pipeline",
    "strengthen_wan_conditioning",
]
