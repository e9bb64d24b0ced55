"""Random-weight FLUX.2 pipelines in Diffusers format: the real layouts and geometry, tiny widths.

Three kinds. `flux2` is a `Flux2Pipeline` folder in the FLUX.2-dev layout: a `Mistral3ForConditionalGeneration` text
encoder (Mistral Small 3.x with its Pixtral vision tower) and, as `tokenizer/`, a `PixtralProcessor`.
`flux2-klein` and `flux2-klein-base` are `Flux2KleinPipeline` folders in the FLUX.2-klein-4B and
FLUX.2-klein-base-4B layouts: a `Qwen3ForCausalLM` text encoder with the real Qwen3 tokenizer, the first
step-distilled (`is_distilled` in model_index.json: no CFG), the second not (CFG against the empty prompt).
All three share FLUX.2's VAE geometry (`AutoencoderKLFlux2`: 8x compression, 32 latent channels packed 2x2 into 128,
normalized by the batch-norm statistics the VAE stores), its scheduler and a tiny `Flux2Transformer2DModel`.

The prompt embeddings are text-encoder hidden states of three intermediate layers stacked along the width
((10, 20, 30) of Mistral's 40 layers, (9, 18, 27) of Qwen3-4B's 36), so the tiny text encoders keep the real layer
counts: the stacked layers stay intermediate ones (transformers returns the last hidden state after the final norm)
and the transformer's `joint_attention_dim` is 3x the text width, as in the real models.

The Mistral tokenizer is not on PyPI: `build_mistral_tokenizer` writes a small byte-level BPE in the layout of
Mistral's Tekken tokenizer as `LlamaTokenizerFast` converts it (1000 special tokens first, with the real ids of
`<s>`, `[INST]`, `[IMG]`, `<pad>` and the system-prompt markers, then the 256 bytes, then merges learned from
`ENGLISH_WORD_COUNTS` and FLUX.2's system message), with Mistral Small's chat template reduced to what FLUX.2 sends.
`PixtralProcessor` cannot be built, saved or loaded without torchvision, so `tokenizer/` is written by hand in the
processor's layout (tokenizer files, `chat_template.jinja`, `processor_config.json` and the PIL image processor's
`preprocessor_config.json`) and model_index.json names `PixtralProcessor` as the real one does. Diffusers cannot
load that entry without torchvision, nor take a replacement for it (it type-checks a passed component against the
named class): `load_flux2_reference` loads the pipeline with `tokenizer=None` and attaches the tokenizer of
`tokenizer/`, which is all that `Flux2Pipeline` uses of its processor to encode a prompt (`apply_chat_template`).
Caption upsampling, which also sends images through the processor, is not supported on these folders.
"""

import functools
import json
import os
import pathlib
import re
from collections.abc import Callable, Mapping
from typing import Any

import torch
from diffusers import (
    AutoencoderKLFlux2,
    DiffusionPipeline,
    FlowMatchEulerDiscreteScheduler,
    Flux2KleinPipeline,
    Flux2Pipeline,
    Flux2Transformer2DModel,
)
from diffusers.models.normalization import AdaLayerNormContinuous
from diffusers.models.transformers.transformer_flux2 import (
    Flux2Attention,
    Flux2Modulation,
    Flux2ParallelSelfAttention,
)
from diffusers.pipelines.flux2.system_messages import SYSTEM_MESSAGE
from tokenizers import AddedToken, Regex, Tokenizer, decoders, pre_tokenizers
from tokenizers.models import BPE
from transformers import (
    AutoTokenizer,
    Mistral3Config,
    Mistral3ForConditionalGeneration,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
    Qwen2Tokenizer,
    Qwen3Config,
    Qwen3ForCausalLM,
)
from transformers.models.pixtral.image_processing_pil_pixtral import PixtralImageProcessorPil

from easel.testing.conditioning import (
    CONDITIONING_EMBEDDING_GAIN,
    MODULATION_GAIN,
    QUERY_KEY_NORM_GAIN,
    QUERY_KEY_NORMS,
)
from easel.testing.qwen_tokenizer import ENDOFTEXT, byte_to_unicode
from easel.testing.seeding import seeded
from easel.testing.tokenizers import ENGLISH_WORD_COUNTS, byte_level_symbols, learn_bpe_merges
from easel.testing.z_image import TINY_QWEN3_CONFIG, build_qwen3_tokenizer

# The text encoders' width: the transformer reads three of their hidden states side by side.
TEXT_ENCODER_HIDDEN_SIZE = 16
NUM_STACKED_TEXT_LAYERS = 3
# Diffusers' defaults, the layers BFL's reference stacks: `text_encoder_out_layers` of each pipeline's __call__.
MISTRAL_HIDDEN_STATES_LAYERS = (10, 20, 30)
QWEN3_HIDDEN_STATES_LAYERS = (9, 18, 27)
# Both pipelines pad (or truncate) every prompt to this many tokens and the transformer attends to all of them.
FLUX2_MAX_SEQUENCE_LENGTH = 512

# 32 latent channels, packed 2x2 into each token's 128 (the VAE's batch norm works on the packed channels).
FLUX2_LATENT_CHANNELS = 32
FLUX2_PACKED_CHANNELS = FLUX2_LATENT_CHANNELS * 2 * 2

# Mistral's Tekken tokenizer as converted for transformers: 1000 special tokens at ids 0..999 (these are the named
# ones of Mistral Small 3.1; the rest are placeholders), the 256 bytes at 1000..1255, then the merged tokens.
MISTRAL_NAMED_SPECIAL_TOKENS = (
    "<unk>", "<s>", "</s>", "[INST]", "[/INST]", "[AVAILABLE_TOOLS]", "[/AVAILABLE_TOOLS]", "[TOOL_RESULTS]",
    "[/TOOL_RESULTS]", "[TOOL_CALLS]", "[IMG]", "<pad>", "[IMG_BREAK]", "[IMG_END]", "[PREFIX]", "[MIDDLE]",
    "[SUFFIX]", "[SYSTEM_PROMPT]", "[/SYSTEM_PROMPT]", "[TOOL_CONTENT]",
)  # fmt: skip
MISTRAL_NUM_SPECIAL_TOKENS = 1000
MISTRAL_BOS_TOKEN, MISTRAL_EOS_TOKEN, MISTRAL_PAD_TOKEN, MISTRAL_IMAGE_TOKEN = "<s>", "</s>", "<pad>", "[IMG]"
MISTRAL_MAX_MERGES = 600
# Tekken's split pattern (the one transformers' `fix_mistral_regex` restores).
TEKKEN_SPLIT_PATTERN = (
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+"
    r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*"
    r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# FLUX.2's system message is sent with every prompt: its words become tokens too, as in the real vocabulary.
_SYSTEM_MESSAGE_WORD_COUNT = 50

# Mistral Small 3.x's chat template reduced to what the pipelines send (no tools, no default system message):
# "<s>[SYSTEM_PROMPT]{system}[/SYSTEM_PROMPT][INST]{prompt}[/INST]", an image block rendered as "[IMG]" (which
# the processor expands to the image's patch tokens), an assistant turn closed by "</s>".
MISTRAL_CHAT_TEMPLATE = (
    "{%- macro text(content) -%}"
    "{%- if content is string -%}{{- content -}}"
    "{%- else -%}{%- for block in content -%}"
    "{%- if block['type'] == 'text' -%}{{- block['text'] -}}"
    "{%- elif block['type'] in ['image', 'image_url'] -%}{{- '[IMG]' -}}"
    "{%- else -%}{{- raise_exception('Only text and image blocks are supported in message content!') -}}"
    "{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "{%- endmacro -%}"
    "{{- bos_token -}}"
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'system' -%}{{- '[SYSTEM_PROMPT]' + text(message['content']) + '[/SYSTEM_PROMPT]' -}}"
    "{%- elif message['role'] == 'user' -%}{{- '[INST]' + text(message['content']) + '[/INST]' -}}"
    "{%- elif message['role'] == 'assistant' -%}{{- text(message['content']) + eos_token -}}"
    "{%- else -%}{{- raise_exception('Only user, system and assistant roles are supported!') -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
)

# Mistral Small 3.x's layout (grouped-query attention with a head width of its own, rope theta 1e9, no sliding
# window, untied output layer) at width 16, with all 40 layers so that (10, 20, 30) are intermediate ones, as in the
# real model; its Pixtral vision tower (patch 14, merged 2x2) reduced to one layer. Only the vocabulary is tiny
# (`vocab_size` is set to the tokenizer's size).
TINY_MISTRAL3_CONFIG: dict[str, Any] = {
    "text_config": {
        "model_type": "mistral",
        "hidden_size": TEXT_ENCODER_HIDDEN_SIZE,
        "intermediate_size": 32,
        "num_hidden_layers": 40,
        "num_attention_heads": 4,
        "num_key_value_heads": 1,
        "head_dim": 8,
        "hidden_act": "silu",
        "max_position_embeddings": 131072,
        "rms_norm_eps": 1e-5,
        "rope_theta": 1_000_000_000.0,
        "sliding_window": None,
        "tie_word_embeddings": False,
    },
    "vision_config": {
        "model_type": "pixtral",
        "hidden_size": TEXT_ENCODER_HIDDEN_SIZE,
        "intermediate_size": 32,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "hidden_act": "silu",
        "image_size": 1540,
        "patch_size": 14,
        "rope_theta": 10000.0,
    },
    "image_token_index": 10,
    "projector_hidden_act": "gelu",
    "vision_feature_layer": -1,
    "multimodal_projector_bias": False,
    "spatial_merge_size": 2,
    "tie_word_embeddings": False,
}

# `tokenizer/processor_config.json` of FLUX.2-dev: the vision tower's patch and merge sizes and the image tokens.
PIXTRAL_PROCESSOR_CONFIG: dict[str, Any] = {
    "image_break_token": "[IMG_BREAK]",
    "image_end_token": "[IMG_END]",
    "image_token": MISTRAL_IMAGE_TOKEN,
    "patch_size": 14,
    "processor_class": "PixtralProcessor",
    "spatial_merge_size": 2,
}
# Mistral Small 3.x's image preprocessing (CLIP mean and std, images fit within 1540 pixels, 14-pixel patches).
PIXTRAL_IMAGE_PROCESSOR_CONFIG: dict[str, Any] = {
    "image_mean": [0.48145466, 0.4578275, 0.40821073],
    "image_std": [0.26862954, 0.26130258, 0.27577711],
    "patch_size": {"height": 14, "width": 14},
    "size": {"longest_edge": 1540},
}

# Qwen3-4B's layout (TINY_QWEN3_CONFIG, width 16, the real vocabulary) with all 36 of its layers, so that (9, 18, 27)
# are intermediate ones as in the real model.
TINY_KLEIN_QWEN3_CONFIG: dict[str, Any] = {**TINY_QWEN3_CONFIG, "num_hidden_layers": 36}

# FLUX.2's transformer (no patching in the DiT: the VAE's 2x2 packing makes 128-channel tokens; SwiGLU MLPs of
# ratio 3; no biases; RoPE over four axes (time, height, width, text position) with theta 2000) at width 32:
# 2 heads of 16 split (4, 4, 4, 4) like the real (32, 32, 32, 32) of 128. The real ones: FLUX.2-dev 8 double and
# 48 single blocks of 48 heads; klein-4B 5 and 20 of 24 heads.
TINY_FLUX2_TRANSFORMER_CONFIG: dict[str, Any] = {
    "patch_size": 1,
    "in_channels": FLUX2_PACKED_CHANNELS,
    "out_channels": None,
    "num_layers": 2,
    "num_single_layers": 2,
    "attention_head_dim": 16,
    "num_attention_heads": 2,
    "joint_attention_dim": NUM_STACKED_TEXT_LAYERS * TEXT_ENCODER_HIDDEN_SIZE,
    "timestep_guidance_channels": 256,
    "mlp_ratio": 3.0,
    "axes_dims_rope": (4, 4, 4, 4),
    "rope_theta": 2000,
    "eps": 1e-6,
}

# FLUX.2's VAE geometry (8x spatial compression, 32 latent channels, quant convs, an attention mid block, batch-norm
# statistics over the 2x2-packed channels with eps 1e-4) with one thin layer per block.
TINY_FLUX2_VAE_CONFIG: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
    "block_out_channels": (8, 8, 8, 8),
    "layers_per_block": 1,
    "norm_num_groups": 4,
    "latent_channels": FLUX2_LATENT_CHANNELS,
    "sample_size": 1024,
    "use_quant_conv": True,
    "use_post_quant_conv": True,
    "mid_block_add_attention": True,
    "batch_norm_eps": 1e-4,
    "batch_norm_momentum": 0.1,
    "patch_size": (2, 2),
}

# The scheduler of the FLUX.2 folders (assumed from Diffusers' pipelines, which pass their own `mu`): dynamic
# shifting must be on, as the pipelines compute `mu` from the image's token count and the step count
# (`compute_empirical_mu`) and pass it with their sigmas linspace(1, 1/steps, steps); the exponential time shift
# then gives sigma' = e^mu / (e^mu + 1/sigma - 1). With dynamic shifting `shift` and the base/max shifts and
# sequence lengths are unused; they are FLUX.1-dev's values.
FLUX2_SCHEDULER_CONFIG: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "shift": 3.0,
    "use_dynamic_shifting": True,
    "base_shift": 0.5,
    "max_shift": 1.15,
    "base_image_seq_len": 256,
    "max_image_seq_len": 4096,
    "time_shift_type": "exponential",
}

# Default init gives the encoder's mean latents a spatial std of about 0.17 on a noise image (a trained encoder's,
# after its batch norm, about 1): reference images would matter little. Scaling the encoder's output convolution
# (weight and bias) by 6 brings it to about 1.
ENCODER_OUTPUT_GAIN = 6.0
# Batch-norm statistics of the packed latents: means N(0, 0.5^2), variances exp(N(0, 0.5^2)), so that normalizing
# (reference images) and de-normalizing (the output) visibly shift and scale each channel.
BN_MEAN_STD = 0.5
BN_LOG_VAR_STD = 0.5

# A random FLUX.2 transformer with default init barely reacts to its conditioning: measured over seeds 0-4 with 2 steps,
# another prompt moves the pixels by 0.003-0.006 (dev, 64x64 and 48x80), 0.005-0.02 (klein), 0.02-0.08 (klein-base,
# CFG 4), another reference image by 0.001-0.02 (even with `ENCODER_OUTPUT_GAIN`). With the gains of
# easel/testing/conditioning.py on the timestep (and guidance) embedders, the modulation layers and the qk-norms
# (`_strengthen_conditioning`) and `ENCODER_OUTPUT_GAIN`, measured the same way: prompt 0.04-0.17 (dev), 0.06-0.22
# (klein), 0.22-0.64 (klein-base); reference image (64x64, alone or as the second of two) 0.09-0.33 (dev), 0.03-0.14
# (klein), 0.09-0.47 (klein-base), about 3x what the same gains give without `ENCODER_OUTPUT_GAIN`.

# Each component draws its weights from its own seed, derived from the build's seed.
_COMPONENT_SEED_OFFSETS = {"text_encoder": 0, "transformer": 1, "vae": 2}


def build_mistral_tokenizer() -> PreTrainedTokenizerFast:
    """A tiny byte-level BPE in the layout of Mistral's Tekken tokenizer, with Mistral Small's chat template.

    Pads on the left with `<pad>` (id 11), as BFL's FLUX.2 reference does (and transformers 4's
    `LlamaTokenizerFast`, the class converted Tekken tokenizers are saved as).
    """
    specials = list(MISTRAL_NAMED_SPECIAL_TOKENS)
    specials += [f"<SPECIAL_{index}>" for index in range(len(specials), MISTRAL_NUM_SPECIAL_TOKENS)]
    alphabet = byte_to_unicode()
    vocab = {token: index for index, token in enumerate(specials)}
    vocab.update({alphabet[byte]: MISTRAL_NUM_SPECIAL_TOKENS + byte for byte in range(256)})
    word_counts = dict(ENGLISH_WORD_COUNTS)
    for word in re.findall(r"[A-Za-z]+", SYSTEM_MESSAGE):
        word_counts[word] = word_counts.get(word, 0) + _SYSTEM_MESSAGE_WORD_COUNT
    merges = learn_bpe_merges(byte_level_symbols(word_counts), MISTRAL_MAX_MERGES)
    for left, right in merges:
        vocab[left + right] = len(vocab)

    backend = Tokenizer(BPE(vocab=vocab, merges=merges, fuse_unk=False))
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(TEKKEN_SPLIT_PATTERN), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens([AddedToken(token, special=True, normalized=False) for token in specials])
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=MISTRAL_BOS_TOKEN,
        eos_token=MISTRAL_EOS_TOKEN,
        unk_token="<unk>",
        pad_token=MISTRAL_PAD_TOKEN,
        padding_side="left",
        clean_up_tokenization_spaces=False,
        chat_template=MISTRAL_CHAT_TEMPLATE,
    )


def build_mistral3_text_encoder(tokenizer: PreTrainedTokenizerBase) -> Mistral3ForConditionalGeneration:
    """Mistral Small 3.x (`TINY_MISTRAL3_CONFIG`) over `tokenizer`'s vocabulary and special ids."""
    special_ids = {
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    config = Mistral3Config(
        **{
            **TINY_MISTRAL3_CONFIG,
            "text_config": {**TINY_MISTRAL3_CONFIG["text_config"], "vocab_size": len(tokenizer), **special_ids},
        }
    )
    return Mistral3ForConditionalGeneration(config).eval()


def build_klein_text_encoder(tokenizer: Qwen2Tokenizer) -> Qwen3ForCausalLM:
    """Qwen3-4B's 36 layers at width 16 (`TINY_KLEIN_QWEN3_CONFIG`) with `tokenizer`'s special ids."""
    config = Qwen3Config(
        **TINY_KLEIN_QWEN3_CONFIG,
        bos_token_id=tokenizer.convert_tokens_to_ids(ENDOFTEXT),
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return Qwen3ForCausalLM(config).eval()


def build_flux2_transformer(guidance_embeds: bool, transformer_config: Mapping[str, Any] | None = None):
    """The tiny `Flux2Transformer2DModel`, its conditioning inits strengthened (see `_strengthen_conditioning`)."""
    transformer = Flux2Transformer2DModel(
        **{**TINY_FLUX2_TRANSFORMER_CONFIG, "guidance_embeds": guidance_embeds, **(transformer_config or {})}
    )
    _strengthen_conditioning(transformer)
    return transformer


def build_flux2_vae() -> AutoencoderKLFlux2:
    """The tiny `AutoencoderKLFlux2` with a scaled encoder output and deterministic batch-norm statistics."""
    vae = AutoencoderKLFlux2(**TINY_FLUX2_VAE_CONFIG)
    with torch.no_grad():
        for parameter in vae.encoder.conv_out.parameters():
            parameter.mul_(ENCODER_OUTPUT_GAIN)
        vae.bn.running_mean.copy_(torch.randn(vae.bn.num_features) * BN_MEAN_STD)
        vae.bn.running_var.copy_(torch.exp(torch.randn(vae.bn.num_features) * BN_LOG_VAR_STD))
    return vae.eval()


@torch.no_grad()
def _strengthen_conditioning(transformer: Flux2Transformer2DModel) -> None:
    """The gains of `easel.testing.conditioning.strengthen_conditioning`, on FLUX.2's module names.

    FLUX.2 has no pooled text: its conditioning vector is the timestep (plus, for dev, the guidance) embedding, read by
    three shared modulation layers (double-stream image and text, single-stream) and the output norm.
    """
    embedders = transformer.time_guidance_embed
    for embedder in (embedders.timestep_embedder, embedders.guidance_embedder):
        if embedder is not None:
            for parameter in embedder.linear_2.parameters():
                parameter.mul_(CONDITIONING_EMBEDDING_GAIN)
    for module in transformer.modules():
        if isinstance(module, Flux2Modulation | AdaLayerNormContinuous):
            module.linear.weight.mul_(MODULATION_GAIN)
        if isinstance(module, Flux2Attention | Flux2ParallelSelfAttention):
            for name in QUERY_KEY_NORMS:
                norm = getattr(module, name, None)
                if norm is not None and norm.weight is not None:
                    norm.weight.mul_(QUERY_KEY_NORM_GAIN)


def _write_pixtral_processor(folder: pathlib.Path) -> None:
    """Complete `tokenizer/` (the tokenizer's files) to a `PixtralProcessor` folder as FLUX.2-dev ships it."""
    config_file = folder / "tokenizer_config.json"
    tokenizer_config = json.loads(config_file.read_text())
    # The class converted Tekken tokenizers are saved as; transformers 5 loads its byte-level tokenizer.json as
    # TokenizersBackend. The padding side is written out: LlamaTokenizerFast padded left by default.
    tokenizer_config.update(tokenizer_class="LlamaTokenizer", processor_class="PixtralProcessor", padding_side="left")
    config_file.write_text(json.dumps(tokenizer_config, indent=2, sort_keys=True) + "\n")
    (folder / "processor_config.json").write_text(json.dumps(PIXTRAL_PROCESSOR_CONFIG, indent=2) + "\n")
    image_processor = PixtralImageProcessorPil(**PIXTRAL_IMAGE_PROCESSOR_CONFIG)
    preprocessor_config = {**image_processor.to_dict(), "processor_class": "PixtralProcessor"}
    (folder / "preprocessor_config.json").write_text(json.dumps(preprocessor_config, indent=2, sort_keys=True) + "\n")


def _rewrite_model_index(folder: pathlib.Path, **entries: Any) -> None:
    index_file = folder / "model_index.json"
    model_index = json.loads(index_file.read_text())
    model_index.update(entries)
    index_file.write_text(json.dumps(model_index, indent=2, sort_keys=True) + "\n")


def build_flux2_pipeline(
    path: str | os.PathLike[str], seed: int = 0, *, transformer_config: Mapping[str, Any] | None = None
) -> pathlib.Path:
    """Write a random-weight `Flux2Pipeline` folder (FLUX.2-dev layout) at `path` and return it.

    Load it with `load_flux2_reference` (Diffusers needs the tokenizer passed: see the module docstring).
    `transformer_config` overrides fields of `TINY_FLUX2_TRANSFORMER_CONFIG`.
    """
    tokenizer = build_mistral_tokenizer()
    with seeded(seed + _COMPONENT_SEED_OFFSETS["text_encoder"]):
        text_encoder = build_mistral3_text_encoder(tokenizer)
    with seeded(seed + _COMPONENT_SEED_OFFSETS["transformer"]):
        # FLUX.2-dev is guidance-distilled: the guidance scale is embedded with the timestep.
        transformer = build_flux2_transformer(guidance_embeds=True, transformer_config=transformer_config)
    with seeded(seed + _COMPONENT_SEED_OFFSETS["vae"]):
        vae = build_flux2_vae()
    pipeline = Flux2Pipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(**FLUX2_SCHEDULER_CONFIG),
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        transformer=transformer,
    )
    output_path = pathlib.Path(path)
    pipeline.save_pretrained(output_path)
    _write_pixtral_processor(output_path / "tokenizer")
    _rewrite_model_index(output_path, tokenizer=["transformers", "PixtralProcessor"])
    return output_path


def build_flux2_klein_pipeline(
    path: str | os.PathLike[str],
    seed: int = 0,
    *,
    distilled: bool = True,
    transformer_config: Mapping[str, Any] | None = None,
) -> pathlib.Path:
    """Write a random-weight `Flux2KleinPipeline` folder at `path` and return it.

    `distilled=True` is the FLUX.2-klein-4B layout (`is_distilled`: the pipeline ignores the guidance scale),
    `distilled=False` FLUX.2-klein-base-4B (CFG against the empty prompt when guidance_scale > 1). Klein has no
    guidance embedding. `transformer_config` overrides fields of `TINY_FLUX2_TRANSFORMER_CONFIG`.
    """
    tokenizer = build_qwen3_tokenizer()
    with seeded(seed + _COMPONENT_SEED_OFFSETS["text_encoder"]):
        text_encoder = build_klein_text_encoder(tokenizer)
    with seeded(seed + _COMPONENT_SEED_OFFSETS["transformer"]):
        transformer = build_flux2_transformer(guidance_embeds=False, transformer_config=transformer_config)
    with seeded(seed + _COMPONENT_SEED_OFFSETS["vae"]):
        vae = build_flux2_vae()
    pipeline = Flux2KleinPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(**FLUX2_SCHEDULER_CONFIG),
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        transformer=transformer,
        is_distilled=distilled,
    )
    output_path = pathlib.Path(path)
    pipeline.save_pretrained(output_path)
    return output_path


def load_flux2_tokenizer(path: str | os.PathLike[str]) -> PreTrainedTokenizerBase:
    """The tokenizer of a FLUX.2-dev `tokenizer/` folder (its `PixtralProcessor`'s text half, with the chat
    template): what `Flux2Pipeline` needs of its processor to encode prompts."""
    return AutoTokenizer.from_pretrained(path)


def load_flux2_reference(path: str | os.PathLike[str], **kwargs: Any) -> DiffusionPipeline:
    """The Diffusers pipeline of a tiny FLUX.2 folder (`Flux2Pipeline` or `Flux2KleinPipeline`, as its
    model_index.json says), given the tokenizer for a `PixtralProcessor` it cannot load without torchvision."""
    path = pathlib.Path(path)
    model_index = json.loads((path / "model_index.json").read_text())
    pipeline_cls = FLUX2_PIPELINE_CLASSES[model_index["_class_name"]]
    if model_index["tokenizer"][1] != "PixtralProcessor":
        return pipeline_cls.from_pretrained(path, **kwargs)
    # Diffusers type-checks a passed component against the class model_index.json names, which without torchvision
    # is a placeholder that is no class: load the pipeline without its tokenizer, then attach the tokenizer.
    tokenizer = kwargs.pop("tokenizer", None) or load_flux2_tokenizer(path / "tokenizer")
    pipeline = pipeline_cls.from_pretrained(path, tokenizer=None, **kwargs)
    pipeline.tokenizer = tokenizer
    return pipeline


FLUX2_PIPELINE_CLASSES: dict[str, type[DiffusionPipeline]] = {
    "Flux2Pipeline": Flux2Pipeline,
    "Flux2KleinPipeline": Flux2KleinPipeline,
}


# kind -> builder(path, seed).
FLUX2_BUILDERS: dict[str, Callable[..., pathlib.Path]] = {
    "flux2": build_flux2_pipeline,
    "flux2-klein": build_flux2_klein_pipeline,
    "flux2-klein-base": functools.partial(build_flux2_klein_pipeline, distilled=False),
}
