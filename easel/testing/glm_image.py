"""Random-weight GLM-Image pipelines in Diffusers format: the real layout, token layout and geometry, tiny widths.

A `GlmImagePipeline` folder holds two text paths and two image models:
- `vision_language_encoder/`: a `GlmImageForConditionalGeneration` (GLM-4 text decoder with 3D rotary positions, a
  ViT vision tower and a VQ codebook). From the prompt (and any condition images) it samples discrete "prior" image
  tokens: a 16x16-ish preview grid, then the target grid at 1/32 of the output size. Its `lm_head` covers only the
  vision vocabulary, so every generated id is a codebook index.
- `processor/`: a `GlmImageProcessor` (tokenizer, PIL image processor, chat template) that appends the grid sizes
  `<sop>H W<eop>` to the prompt and expands each condition image into `<|image|>` placeholders.
- `text_encoder/` + `tokenizer/`: a ByT5 (`T5EncoderModel`, byte-level `ByT5Tokenizer`) "glyph" encoder that
  embeds only the quoted text of the prompt (the words to render in the image).
- `transformer/`: the `GlmImageTransformer2DModel` DiT, conditioned on the prior tokens (upsampled 2x to its 1/16
  token grid), the glyph embeddings, the timestep and the target size; `vae/`: an `AutoencoderKL` with GLM-Image's
  16 latent channels, 8x compression and per-channel latent statistics; `scheduler/`: flow-matching Euler.

The tokenizer is built offline with a tiny vocabulary in the real layout (vision tokens `<|dit_token_i|>` first, then
byte-level BPE text tokens, then GLM-4's special tokens in their real order), so the processor, the model's special
ids and the pipeline agree on every id. Nothing is downloaded; `GlmImagePipeline.from_pretrained(folder)` loads the
folder as it is (transformers falls back to the PIL image processor by itself when torchvision is missing). Its
image-to-image path needs `patch_image_to_image(pipeline)` with transformers 5.24 (an API drift, see there).
"""

import json
import os
import pathlib
from collections.abc import Mapping
from typing import Any

import torch
from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, GlmImagePipeline, GlmImageTransformer2DModel
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
from transformers import (
    ByT5Tokenizer,
    GenerationConfig,
    GlmImageConfig,
    GlmImageForConditionalGeneration,
    GlmImageProcessor,
    PreTrainedTokenizerFast,
    T5EncoderModel,
)
from transformers.models.glm_image.image_processing_pil_glm_image import GlmImageImageProcessorPil

from easel.testing.conditioning import CONDITIONING_EMBEDDING_GAIN, MODULATION_GAIN
from easel.testing.flux import TINY_FLUX_VAE_CONFIG
from easel.testing.qwen_tokenizer import byte_to_unicode
from easel.testing.seeding import seeded
from easel.testing.text_encoders import TEXT_ENCODER_HIDDEN_SIZE, build_t5_encoder
from easel.testing.tokenizers import ENGLISH_WORD_COUNTS, byte_level_symbols, learn_bpe_merges

# --- Token layout -------------------------------------------------------------------------------------------------
# The real vocabulary (168064 ids) starts with the 16512 vision tokens `<|dit_token_0|>`..: the 16384 VQ codebook
# entries, then image start (16384, the processor's bos) and image end (16385, eos); then GLM-4's byte-level BPE text
# tokens shifted by 16512, then GLM-4's special tokens (`<|endoftext|>` 167841, `<sop>` 167845, `<eop>` 167846,
# `<|image|>` 167855). The tiny layout keeps that order with a 128-entry codebook.
TINY_CODEBOOK_SIZE = 128
IMAGE_START_TOKEN_ID = TINY_CODEBOOK_SIZE  # real: 16384
IMAGE_END_TOKEN_ID = TINY_CODEBOOK_SIZE + 1  # real: 16385
NUM_DIT_TOKENS = TINY_CODEBOOK_SIZE + 2
# The real `lm_head` has 16512 outputs (the codebook, start/end, 126 unused ids); a trained model never samples past
# the codebook, a random one would (an id >= the codebook size crashes the DiT's prior embedding, an eos stops
# generation short of the token count the pipeline slices). So the tiny vision vocabulary is the codebook exactly,
# as in Diffusers' own GLM-Image test (vision_vocab_size = codebook = 128): eos is then never sampled.
TINY_VISION_VOCAB_SIZE = TINY_CODEBOOK_SIZE

ENDOFTEXT = "<|endoftext|>"
GRID_BOS_TOKEN = "<sop>"  # opens a grid size "H W" in the prompt
GRID_EOS_TOKEN = "<eop>"
IMAGE_TOKEN = "<|image|>"  # one placeholder per vision patch of a condition image
# GLM-4's special tokens from `<|endoftext|>` (151329 in GLM-4, 167841 in GLM-Image) on: the offsets of `<sop>` (+4),
# `<eop>` (+5) and `<|image|>` (+14) are the real ones; the names between follow GLM-4's tokenizer.
GLM_SPECIAL_TOKENS = (
    ENDOFTEXT, "[MASK]", "[gMASK]", "[sMASK]", GRID_BOS_TOKEN, GRID_EOS_TOKEN, "<|system|>", "<|user|>",
    "<|assistant|>", "<|observation|>", "<|begin_of_image|>", "<|end_of_image|>", "<|begin_of_video|>",
    "<|end_of_video|>", IMAGE_TOKEN,
)  # fmt: skip
# Byte-level BPE merges learned from `ENGLISH_WORD_COUNTS` (GPT-2 style, "Ġ" marks a leading space).
TEXT_BPE_MERGES = 300


def dit_token(index: int) -> str:
    return f"<|dit_token_{index}|>"


# What the processor's chat template renders, as the real one does for GLM-Image's single user message: the text as
# is (no role markers), each condition image as `<image start><|image|><image end>` (the processor then repeats
# `<|image|>` once per vision patch). The processor appends `<sop>H W<eop>` (and for text-to-image the preview grid)
# and the image-start token after it.
GLM_IMAGE_CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message.content is string -%}{{ message.content }}"
    "{%- else -%}"
    "{%- for item in message.content -%}"
    "{%- if item.type == 'image' -%}"
    + dit_token(IMAGE_START_TOKEN_ID)
    + IMAGE_TOKEN
    + dit_token(IMAGE_END_TOKEN_ID)
    + "{%- elif item.type == 'text' -%}{{ item.text }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- endif -%}"
    "{%- endfor -%}"
)

# --- Processor --------------------------------------------------------------------------------------------------
# `zai-org/GLM-Image/processor/preprocessor_config.json`: 16-pixel patches, no temporal or spatial merging, mean/std
# 0.5, but for the minimum pixel count. The real minimum (512x512) upscales any smaller condition image for the
# vision tower while the VAE encodes it at its own size, and the two token grids must agree (the pipeline adds the
# 2x-upsampled vision tokens to the VAE latents' tokens), so small condition images would fail. 32x32 (one vision
# patch of the half-size image the processor feeds the tower) lets 64x64 condition images through unchanged: a
# condition image of H x W (multiples of 32) gives an (H/32) x (W/32) vision grid, 2x-upsampled to the DiT's
# (H/16) x (W/16) tokens.
GLM_IMAGE_PROCESSOR_MIN_PIXELS = 32 * 32
GLM_IMAGE_PREPROCESSOR_CONFIG: dict[str, Any] = {
    "patch_size": 16,
    "temporal_patch_size": 1,
    "merge_size": 1,
    "image_mean": [0.5, 0.5, 0.5],
    "image_std": [0.5, 0.5, 0.5],
    "min_pixels": GLM_IMAGE_PROCESSOR_MIN_PIXELS,
    "max_pixels": 2048 * 2048,
}

# --- Vision-language model --------------------------------------------------------------------------------------
AR_HIDDEN_SIZE = 64
VISION_HIDDEN_SIZE = 32
# GLM-Image's AR layout (GLM-4-9B: grouped-query attention, q/k/v biases, four RMSNorms per layer, partial rotary
# 0.5 with 3D sections (8, 12, 12) of the 32 rotary frequencies, theta 10000) at width 64: 2 heads of 32 with one
# key/value head, so the 8 rotary frequencies split (2, 3, 3) like the real ones. The vision tower keeps the real
# 16-pixel patches and no spatial merge (one vision token per 32x32 pixels of the condition image); its position
# table is 16x16 (the real one 128x128), interpolated to each image's grid. The VQ codebook embeds at width 32.
TINY_GLM_IMAGE_AR_CONFIG: dict[str, Any] = {
    "text_config": {
        "hidden_size": AR_HIDDEN_SIZE,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "max_position_embeddings": 131072,
        "rms_norm_eps": 1e-5,
        "attention_bias": True,
        "vision_vocab_size": TINY_VISION_VOCAB_SIZE,
        "rope_parameters": {
            "rope_type": "default",
            "rope_theta": 10000.0,
            "partial_rotary_factor": 0.5,
            "mrope_section": [2, 3, 3],
        },
    },
    "vision_config": {
        "depth": 2,
        "hidden_size": VISION_HIDDEN_SIZE,
        "intermediate_size": 64,
        "num_heads": 2,
        "patch_size": 16,
        "image_size": 256,
        "spatial_merge_size": 1,
    },
    "vq_config": {"embed_dim": 32, "num_embeddings": TINY_CODEBOOK_SIZE, "latent_channels": VISION_HIDDEN_SIZE},
    "image_start_token_id": IMAGE_START_TOKEN_ID,
    "image_end_token_id": IMAGE_END_TOKEN_ID,
    "tie_word_embeddings": False,
}
# The real `vision_language_encoder/generation_config.json` samples at temperature 0.9 with top-p 0.75 (as ports of
# the model report it) and, as assumed here, sets no top-k: transformers then applies its default top-k of 50. Its
# pad id is `<|image|>`'s (unlike the text config's `<|endoftext|>`), its eos the image end.
GLM_IMAGE_GENERATION_CONFIG: dict[str, Any] = {"do_sample": True, "temperature": 0.9, "top_p": 0.75}

# --- DiT, VAE, scheduler ----------------------------------------------------------------------------------------
GLM_IMAGE_LATENT_CHANNELS = 16
# The real DiT (about 7B parameters, Diffusers' defaults): 30 layers, patch 2, 16 channels, glyph width 1472
# (ByT5-small), timestep width 512, size conditions of width 256, codebook 16384. Tiny: 2 layers of 2 heads x 16 (the
# rotary splits each head's 16 channels between rows and columns), timestep width 32, size conditions of width 16,
# glyph width 32 (the tiny ByT5's), the tiny codebook.
TINY_GLM_IMAGE_TRANSFORMER_CONFIG: dict[str, Any] = {
    "patch_size": 2,
    "in_channels": GLM_IMAGE_LATENT_CHANNELS,
    "out_channels": GLM_IMAGE_LATENT_CHANNELS,
    "num_layers": 2,
    "attention_head_dim": 16,
    "num_attention_heads": 2,
    "text_embed_dim": TEXT_ENCODER_HIDDEN_SIZE,
    "time_embed_dim": 32,
    "condition_dim": 16,
    "prior_vq_quantizer_codebook_size": TINY_CODEBOOK_SIZE,
}

# `zai-org/GLM-Image/vae/config.json`'s per-channel latent statistics (the pipeline normalizes with these; its
# scaling_factor 0.18215 is unused).
GLM_IMAGE_LATENTS_MEAN = (
    -0.2080078125, 1.875, -0.470703125, -1.265625, -1.421875, 0.77734375, -0.3671875, -0.9453125,
    0.318359375, 0.7734375, -0.1884765625, -0.022216796875, -0.220703125, -1.59375, -0.81640625, -0.255859375,
)  # fmt: skip
GLM_IMAGE_LATENTS_STD = (
    3.0625, 2.203125, 2.265625, 4.84375, 2.5, 3.9375, 2.203125, 3.03125,
    2.1875, 2.046875, 2.71875, 2.390625, 2.390625, 2.453125, 2.25, 2.15625,
)  # fmt: skip
# GLM-Image's VAE geometry (AutoencoderKL, 4 blocks: 8x compression, 16 latent channels, no quant convs, no mid-block
# attention) with one thin layer per block, as the FLUX.1 tiny VAE.
TINY_GLM_IMAGE_VAE_CONFIG: dict[str, Any] = {
    **TINY_FLUX_VAE_CONFIG,
    "latent_channels": GLM_IMAGE_LATENT_CHANNELS,
    "mid_block_add_attention": False,
    "scaling_factor": 0.18215,
    "shift_factor": None,
    "latents_mean": list(GLM_IMAGE_LATENTS_MEAN),
    "latents_std": list(GLM_IMAGE_LATENTS_STD),
}

# Assumed `zai-org/GLM-Image/scheduler/scheduler_config.json` (CogView4's, the same team's previous model):
# dynamic shifting with linear time shift, mu = 0.75 * sqrt(seq / 256) + 0.25. The pipeline reads base_shift,
# max_shift and base_image_seq_len itself (defaults 0.25, 0.75, 256) and passes its own integer timesteps and
# sigmas; reported GLM-Image ports measured mu = 1.75 at 512x512 and 3.25 at 1024x1024, which these values give.
GLM_IMAGE_SCHEDULER_CONFIG: dict[str, Any] = {
    "base_image_seq_len": 256,
    "base_shift": 0.25,
    "invert_sigmas": False,
    "max_image_seq_len": 4096,
    "max_shift": 0.75,
    "num_train_timesteps": 1000,
    "shift": 1.0,
    "shift_terminal": None,
    "time_shift_type": "linear",
    "use_beta_sigmas": False,
    "use_dynamic_shifting": True,
    "use_exponential_sigmas": False,
    "use_karras_sigmas": False,
}

# --- Conditioning strength ----------------------------------------------------------------------------------------
# The prompt reaches the DiT mostly through the sampled prior tokens, which a random model already follows: another
# prompt samples other tokens and moves the pixels by 0.17-0.41 (seeds 0-2, 2 steps, 64x64 without CFG and 64x96
# with guidance 1.5). The glyph embeddings (quoted text) and the condition image's VAE latents (the DiT's KV cache)
# barely did: 0.008-0.013 and 0.003-0.006. Three inits are scaled towards a trained model's magnitudes:
# the conditioning vector and the adaLN projections (blocks and final norm) with the gains of
# easel/testing/conditioning.py, the glyph projector's output by `GLYPH_PROJECTION_GAIN`, and the VAE encoder's
# output convolution by `ENCODER_OUTPUT_GAIN` (default init leaves the normalized latents of a noise image with a
# spatial std of about 0.1; 10x brings it to about 1). Measured the same way: the prompt moves the pixels by
# 0.15-0.36, the quoted text (prior tokens fixed) by 0.044-0.059, the condition image through the AR prior by
# 0.14-0.39, and through the VAE latents alone (prior tokens fixed) by 0.022-0.067.
GLYPH_PROJECTION_GAIN = 4.0
ENCODER_OUTPUT_GAIN = 10.0

# Each component draws its weights from its own seed, derived from the build's seed.
_COMPONENT_SEED_OFFSETS = {"vision_language_encoder": 0, "text_encoder": 1, "transformer": 2, "vae": 3}


def build_glm_image_tokenizer() -> PreTrainedTokenizerFast:
    """The AR tokenizer (`processor/`): vision tokens, byte-level BPE text tokens, GLM-4's special tokens, in the
    real order; bos is the image start (`<|dit_token_128|>`), eos and pad the image end, as in the real one."""
    merges = learn_bpe_merges(byte_level_symbols(ENGLISH_WORD_COUNTS), TEXT_BPE_MERGES)
    tokens = [dit_token(index) for index in range(NUM_DIT_TOKENS)]
    alphabet = byte_to_unicode()
    tokens += [alphabet[byte] for byte in range(256)]
    tokens += [left + right for left, right in merges]
    tokens += GLM_SPECIAL_TOKENS
    vocab = {token: index for index, token in enumerate(tokens)}
    if len(vocab) != len(tokens):
        raise AssertionError("the GLM-Image tokenizer has duplicate tokens")
    backend = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    backend.decoder = decoders.ByteLevel()
    specials = [*(dit_token(index) for index in range(NUM_DIT_TOKENS)), *GLM_SPECIAL_TOKENS]
    backend.add_special_tokens([AddedToken(token, special=True, normalized=False) for token in specials])
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=dit_token(IMAGE_START_TOKEN_ID),
        eos_token=dit_token(IMAGE_END_TOKEN_ID),
        pad_token=dit_token(IMAGE_END_TOKEN_ID),
        # Model-specific tokens the processor reads as tokenizer attributes.
        image_token=IMAGE_TOKEN,
        grid_bos_token=GRID_BOS_TOKEN,
        grid_eos_token=GRID_EOS_TOKEN,
        clean_up_tokenization_spaces=False,
    )


def build_glm_image_processor(tokenizer: PreTrainedTokenizerFast | None = None) -> GlmImageProcessor:
    """The `GlmImageProcessor` of `processor/`: the tokenizer, the PIL image processor and the chat template."""
    return GlmImageProcessor(
        image_processor=GlmImageImageProcessorPil(**GLM_IMAGE_PREPROCESSOR_CONFIG),
        tokenizer=tokenizer or build_glm_image_tokenizer(),
        chat_template=GLM_IMAGE_CHAT_TEMPLATE,
    )


def build_glm_image_vision_language_encoder(tokenizer: PreTrainedTokenizerFast) -> GlmImageForConditionalGeneration:
    """A 2-layer GLM-Image AR model of width 64 (2-block vision tower, 128-entry codebook) on `tokenizer`'s ids."""
    config = dict(TINY_GLM_IMAGE_AR_CONFIG)
    config["text_config"] = {
        **config["text_config"],
        "vocab_size": len(tokenizer),
        "pad_token_id": tokenizer.convert_tokens_to_ids(ENDOFTEXT),  # the real text config's 167841
        "eos_token_id": IMAGE_END_TOKEN_ID,
    }
    config["image_token_id"] = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    model = GlmImageForConditionalGeneration(GlmImageConfig(**config)).eval()
    model.generation_config = GenerationConfig(
        **GLM_IMAGE_GENERATION_CONFIG, eos_token_id=IMAGE_END_TOKEN_ID, pad_token_id=config["image_token_id"]
    )
    return model


def build_glm_image_pipeline(
    path: str | os.PathLike[str], seed: int = 0, *, transformer_config: Mapping[str, Any] | None = None
) -> pathlib.Path:
    """Write a random-weight `GlmImagePipeline` folder at `path` and return it.

    `transformer_config` overrides fields of `TINY_GLM_IMAGE_TRANSFORMER_CONFIG` (keep `text_embed_dim` at the
    glyph encoder's width and `prior_vq_quantizer_codebook_size` at the codebook's size).
    """
    tokenizer = build_glm_image_tokenizer()
    glyph_tokenizer = ByT5Tokenizer()
    with seeded(seed + _COMPONENT_SEED_OFFSETS["vision_language_encoder"]):
        vision_language_encoder = build_glm_image_vision_language_encoder(tokenizer)
    with seeded(seed + _COMPONENT_SEED_OFFSETS["text_encoder"]):
        text_encoder: T5EncoderModel = build_t5_encoder(glyph_tokenizer)
    with seeded(seed + _COMPONENT_SEED_OFFSETS["transformer"]):
        transformer = GlmImageTransformer2DModel(**{**TINY_GLM_IMAGE_TRANSFORMER_CONFIG, **(transformer_config or {})})
        _strengthen_conditioning(transformer)
    with seeded(seed + _COMPONENT_SEED_OFFSETS["vae"]):
        vae = AutoencoderKL(**TINY_GLM_IMAGE_VAE_CONFIG)
        _strengthen_image_latents(vae)
    pipeline = GlmImagePipeline(
        tokenizer=glyph_tokenizer,
        processor=build_glm_image_processor(tokenizer),
        text_encoder=text_encoder,
        vision_language_encoder=vision_language_encoder,
        vae=vae,
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(**GLM_IMAGE_SCHEDULER_CONFIG),
    )
    output_path = pathlib.Path(path)
    pipeline.save_pretrained(output_path)
    _name_transformers_library(output_path)
    return output_path


def _name_transformers_library(folder: pathlib.Path) -> None:
    """Name transformers as the library of the processor and the AR model in `model_index.json`.

    Diffusers 0.42.1 writes `glm_image` there: it takes any class from a module path with a `glm_image` package
    (transformers.models.glm_image) for a class of its own `pipelines/glm_image`. Diffusers loads both spellings;
    `transformers` is what the classes are, and what a loader that maps libraries to packages can follow.
    """
    index_path = folder / "model_index.json"
    index = json.loads(index_path.read_text())
    for name in ("processor", "vision_language_encoder"):
        index[name] = ["transformers", index[name][1]]
    index_path.write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")


@torch.no_grad()
def _strengthen_conditioning(transformer: GlmImageTransformer2DModel) -> None:
    """Scale the conditioning embedders, the adaLN projections and the glyph projector (see above)."""
    embedders = transformer.time_condition_embed
    for linear in (embedders.timestep_embedder.linear_2, embedders.condition_embedder.linear_2):
        for parameter in linear.parameters():
            parameter.mul_(CONDITIONING_EMBEDDING_GAIN)
    for block in transformer.transformer_blocks:
        block.norm1.linear.weight.mul_(MODULATION_GAIN)
    transformer.norm_out.linear.weight.mul_(MODULATION_GAIN)
    for parameter in transformer.glyph_projector.net[-1].parameters():
        parameter.mul_(GLYPH_PROJECTION_GAIN)


@torch.no_grad()
def _strengthen_image_latents(vae: AutoencoderKL) -> None:
    """Scale the encoder's output convolution so that encoded condition images vary (see `ENCODER_OUTPUT_GAIN`)."""
    for parameter in vae.encoder.conv_out.parameters():
        parameter.mul_(ENCODER_OUTPUT_GAIN)


def patch_image_to_image(pipeline: GlmImagePipeline) -> GlmImagePipeline:
    """Make Diffusers 0.42.1's image-to-image path run with transformers 5.24; return `pipeline`.

    `GlmImagePipeline.generate_prior_tokens` concatenates the condition images' vision features
    (`get_image_features(...).pooler_output`, one (C, h, w) map per image in transformers 5.24) along dim 0 and hands
    the result to `vision_language_encoder.get_image_tokens`, which in 5.24 iterates over per-image (C, h, w) maps:
    it would iterate over the channels and fail. This wraps that method (on this instance only; the AR model's own
    `generate` does not go through it) to split such a tensor back into C-channel maps, which gives exactly the VQ
    codes the AR model computes for its prompt. Text-to-image does not need it.
    """
    encoder = pipeline.vision_language_encoder
    if getattr(encoder.get_image_tokens, "_splits_concatenated_features", False):
        return pipeline
    get_image_tokens = encoder.get_image_tokens
    channels = encoder.config.vision_config.hidden_size

    def split_then_get_image_tokens(hidden_states, image_grid_thw=None):
        if isinstance(hidden_states, torch.Tensor):
            hidden_states = hidden_states.split(channels)
        return get_image_tokens(hidden_states, image_grid_thw)

    split_then_get_image_tokens._splits_concatenated_features = True
    encoder.get_image_tokens = split_then_get_image_tokens
    return pipeline


GLM_IMAGE_BUILDERS = {"glm-image": build_glm_image_pipeline}
