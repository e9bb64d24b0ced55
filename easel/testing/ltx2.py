"""Random-weight LTX-2 audio-video pipelines in Diffusers format: the real layout and geometry, tiny widths.

Two kinds, one set of components. `ltx2` is an `LTX2Pipeline` folder (text to video with audio) in the layout of
`Lightricks/LTX-2` (LTX-2.0); `ltx2-i2v` is the same folder with model_index.json naming `LTX2ImageToVideoPipeline`
(the real repository serves both pipelines from one folder; the weights here are the same too).

The components, as in the real folder:
- `tokenizer`: a Gemma 3 tokenizer (`GemmaTokenizer`: SentencePiece-style BPE with byte fallback, "▁" for spaces,
  `<bos>` prepended, left padding) built in code by `build_gemma_tokenizer`, with Gemma's special tokens at their
  real ids (<pad> 0, <eos> 1, <bos> 2, <unk> 3, <mask> 4, <start_of_turn> 105, <end_of_turn> 106) and a reduced
  Gemma 3 chat template (the pipelines' prompt encoding does not use it; only prompt enhancement would).
- `text_encoder`: `Gemma3ForConditionalGeneration` (Gemma 3 12B in the real folder) at width 32. The pipelines read
  every hidden state (the embeddings, each layer's output, the last one after the final norm) stacked along the width,
  so the layer count only sets the connectors' `text_proj_in_factor` (49 = 48 layers + 1 in the real model).
- `connectors`: `LTX2TextConnectors` (LTX-2.0: one shared projection of the per-layer-normalized stack, then a video
  and an audio 1D transformer whose padding is replaced by 128 learnable registers).
- `transformer`: `LTX2VideoTransformer3DModel` with both streams (video, audio) and the audio-video cross-attention.
- `vae`: `AutoencoderKLLTX2Video` with the real geometry (4x4 pixel patches, three 2x down/up stages: 32x spatial,
  8x temporal and causal, 128 latent channels) and fixed per-channel latent statistics.
- `audio_vae`: `AutoencoderKLLTX2Audio` (stereo 64-bin mel spectrograms at 16 kHz, hop 160, 4x in time and mel,
  causal in time) and `vocoder`: `LTX2Vocoder` (HiFi-GAN, 240x upsampling: 100 mel frames/s -> 24 kHz stereo).
- `scheduler`: `FlowMatchEulerDiscreteScheduler` with the real config.

Everything loads with `LTX2Pipeline.from_pretrained` / `LTX2ImageToVideoPipeline.from_pretrained` as is;
`load_ltx2_reference` only picks the class model_index.json names. torchvision is not needed: there is no processor
(the optional prompt-enhancement component) and the pipelines preprocess images with Diffusers' own processor.
`LTX2ImageToVideoPipeline` re-compresses its input image with H.264 through PyAV (CRF 33 for a Gemma 3 text
encoder) unless called with `image_crf=0`; PyAV is not installed here, so image-to-video calls pass `image_crf=0`.

A few inits are scaled (see the gains below) so that the random components pass on what they are given: two prompts
move the frames and the waveform, two images the frames, by far more than a 1e-4 parity tolerance.
"""

import functools
import json
import os
import pathlib
import string
from collections.abc import Callable, Mapping
from typing import Any

import torch
from diffusers import (
    AutoencoderKLLTX2Audio,
    AutoencoderKLLTX2Video,
    DiffusionPipeline,
    FlowMatchEulerDiscreteScheduler,
    LTX2ImageToVideoPipeline,
    LTX2Pipeline,
    LTX2VideoTransformer3DModel,
)
from diffusers.models.transformers.transformer_ltx2 import LTX2AdaLayerNormSingle, LTX2Attention
from diffusers.pipelines.ltx2 import LTX2TextConnectors
from diffusers.pipelines.ltx2.vocoder import LTX2Vocoder
from tokenizers import AddedToken
from transformers import Gemma3Config, Gemma3ForConditionalGeneration, GemmaTokenizer

from easel.testing.conditioning import CONDITIONING_EMBEDDING_GAIN, MODULATION_GAIN, QUERY_KEY_NORM_GAIN
from easel.testing.seeding import seeded
from easel.testing.tokenizers import ENGLISH_WORD_COUNTS, learn_bpe_merges

# Gemma's special tokens at their real ids 0..106: <pad>, <eos>, <bos>, <unk>, <mask>, [multimodal], 99 unused
# tokens, then the chat-turn markers. The image markers (real ids 255999, 256000 and 262144) close the tiny
# vocabulary instead.
GEMMA_PAD_TOKEN, GEMMA_EOS_TOKEN, GEMMA_BOS_TOKEN, GEMMA_UNK_TOKEN = "<pad>", "<eos>", "<bos>", "<unk>"
GEMMA_START_OF_TURN, GEMMA_END_OF_TURN = "<start_of_turn>", "<end_of_turn>"
GEMMA_SPECIAL_TOKENS = (
    GEMMA_PAD_TOKEN, GEMMA_EOS_TOKEN, GEMMA_BOS_TOKEN, GEMMA_UNK_TOKEN, "<mask>", "[multimodal]",
    *(f"<unused{index}>" for index in range(99)), GEMMA_START_OF_TURN, GEMMA_END_OF_TURN,
)  # fmt: skip
GEMMA_IMAGE_TOKENS = ("<start_of_image>", "<end_of_image>", "<image_soft_token>")
GEMMA_WORD_BOUNDARY = "\u2581"  # "▁": Gemma's normalizer writes every space as this
GEMMA_MAX_MERGES = 400
# Gemma 3's context length (the pipelines pad every prompt to `max_sequence_length`, 1024, whatever this is).
GEMMA_MAX_LENGTH = 131072

# Gemma 3's chat template reduced to text and image blocks: a system message is prepended to the first user turn,
# "assistant" is called "model". Only prompt enhancement (which also needs a processor) applies it.
GEMMA3_CHAT_TEMPLATE = (
    "{{- bos_token -}}"
    "{%- if messages[0]['role'] == 'system' -%}"
    "{%- if messages[0]['content'] is string -%}{%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}"
    "{%- else -%}{%- set first_user_prefix = messages[0]['content'][0]['text'] + '\n\n' -%}{%- endif -%}"
    "{%- set loop_messages = messages[1:] -%}"
    "{%- else -%}{%- set first_user_prefix = '' -%}{%- set loop_messages = messages -%}{%- endif -%}"
    "{%- for message in loop_messages -%}"
    "{%- set role = 'model' if message['role'] == 'assistant' else message['role'] -%}"
    "{{- '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else '') -}}"
    "{%- if message['content'] is string -%}{{- message['content'] | trim -}}"
    "{%- else -%}{%- for item in message['content'] -%}"
    "{%- if item['type'] == 'image' -%}{{- '<start_of_image>' -}}"
    "{%- elif item['type'] == 'text' -%}{{- item['text'] | trim -}}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "{{- '<end_of_turn>\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<start_of_turn>model\n' -}}{%- endif -%}"
)

# The text encoder's width, which is also the connectors' width (`caption_channels`: the shared projection maps the
# stacked hidden states back to it, and the connectors' heads x head width must equal it: 30 x 128 = 3840 in the
# real model) and the transformer's caption width.
TEXT_ENCODER_HIDDEN_SIZE = 32
# Gemma 3's layout (grouped-query attention 2:1, a head width of its own with the query scale 1/sqrt(head width), five
# sliding-window layers then one global one, linear RoPE scaling 8 on the global layers, tied embeddings) at width 32
# with 6 layers, so both attention kinds run. The real sliding window (1024) spans any prompt of the pipelines' 1024
# tokens, as here. `vocab_size` and the special ids are set from the tokenizer.
TINY_GEMMA3_TEXT_CONFIG: dict[str, Any] = {
    "hidden_size": TEXT_ENCODER_HIDDEN_SIZE,
    "intermediate_size": 64,
    "num_hidden_layers": 6,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 8,
    "query_pre_attn_scalar": 8,
    "hidden_activation": "gelu_pytorch_tanh",
    "max_position_embeddings": GEMMA_MAX_LENGTH,
    "rms_norm_eps": 1e-6,
    "sliding_window": 1024,
    "rope_parameters": {
        "full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1_000_000.0},
        "sliding_attention": {"rope_type": "default", "rope_theta": 10_000.0},
    },
    "tie_word_embeddings": True,
}
# Its SigLIP vision tower (unused by the pipelines' prompt encoding) reduced to one layer over 56-pixel images in
# 14-pixel patches, pooled 2x2 into 4 image tokens (896 pixels -> 64x64 patches -> 256 tokens in the real one).
TINY_SIGLIP_VISION_CONFIG: dict[str, Any] = {
    "hidden_size": 16,
    "intermediate_size": 32,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "image_size": 56,
    "patch_size": 14,
    "vision_use_head": False,
}
GEMMA3_MM_TOKENS_PER_IMAGE = 4
# The pipelines stack all hidden states: the embeddings and one per layer.
TEXT_PROJ_IN_FACTOR = TINY_GEMMA3_TEXT_CONFIG["num_hidden_layers"] + 1

# The pipelines pad every prompt to `max_sequence_length` tokens (1024 by default), which must be a multiple of the
# number of registers that replace the padding in each connector.
NUM_LEARNABLE_REGISTERS = 128
# `Lightricks/LTX-2/connectors/config.json` (LTX-2.0: shared `text_proj_in` without bias, 2-layer connectors with
# split RoPE over positions / 4096, registers) at width 32: 4 heads of 8 per connector.
TINY_LTX2_CONNECTORS_CONFIG: dict[str, Any] = {
    "caption_channels": TEXT_ENCODER_HIDDEN_SIZE,
    "text_proj_in_factor": TEXT_PROJ_IN_FACTOR,
    "video_connector_num_attention_heads": 4,
    "video_connector_attention_head_dim": 8,
    "video_connector_num_layers": 2,
    "video_connector_num_learnable_registers": NUM_LEARNABLE_REGISTERS,
    "video_gated_attn": False,
    "audio_connector_num_attention_heads": 4,
    "audio_connector_attention_head_dim": 8,
    "audio_connector_num_layers": 2,
    "audio_connector_num_learnable_registers": NUM_LEARNABLE_REGISTERS,
    "audio_gated_attn": False,
    "connector_rope_base_seq_len": 4096,
    "rope_theta": 10000.0,
    "rope_double_precision": True,
    "causal_temporal_positioning": False,
    "rope_type": "split",
    "per_modality_projections": False,
    "proj_bias": False,
}

# The video VAE: 128 latent channels, 32x spatial and 8x temporal compression (causal: 8k+1 frames <-> k+1 latents).
LTX2_LATENT_CHANNELS = 128
LTX2_SPATIAL_COMPRESSION = 32
LTX2_TEMPORAL_COMPRESSION = 8

# The audio VAE: mel spectrograms of 64 bins at 16 kHz with hop 160 (100 frames per second), compressed 4x in time and
# in mel bins (LATENT_DOWNSAMPLE_FACTOR, hard-coded in Diffusers), so 25 latent frames per second of 16 latent bins.
# The real latents have 8 channels; 2 here. Diffusers sizes the audio latent statistics by `base_channels`, which must
# therefore equal a packed audio token's width, channels x latent bins (8 x 16 = 128 = base_channels in the real VAE).
AUDIO_SAMPLE_RATE = 16000
AUDIO_HOP_LENGTH = 160
AUDIO_MEL_BINS = 64
AUDIO_LATENT_CHANNELS = 2
AUDIO_COMPRESSION = 4
AUDIO_TOKEN_CHANNELS = AUDIO_LATENT_CHANNELS * AUDIO_MEL_BINS // AUDIO_COMPRESSION
# The vocoder's 24 kHz output: 240 samples per mel frame (6 x 5 x 2 x 2 x 2, 160 at 16 kHz).
VOCODER_SAMPLE_RATE = 24000


def _latent_statistics(channels: int, seed: int) -> tuple[list[float], list[float]]:
    """Per-channel means and stds, fixed and of plausible magnitudes (the real ones are not at hand)."""
    generator = torch.Generator().manual_seed(seed)
    mean = (torch.randn(channels, generator=generator) * 0.5).round(decimals=4)
    std = (0.5 + torch.rand(channels, generator=generator)).round(decimals=4)
    return mean.tolist(), std.tolist()


# `Lightricks/LTX-2/vae/config.json` in block structure (4x4 patchify; encoder stages spatial, temporal,
# spatiotemporal, spatiotemporal; decoder three residual spatiotemporal depth-to-space stages; reflect padding and
# non-causal decoding; no timestep conditioning) with one resnet per stage and widths 16..128 (256..2048 real; the
# encoder's first stage is as wide as the latents, as in the real model).
TINY_LTX2_VAE_CONFIG: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "latent_channels": LTX2_LATENT_CHANNELS,
    "block_out_channels": (16, 32, 64, 128),
    "down_block_types": ("LTX2VideoDownBlock3D",) * 4,
    "decoder_block_out_channels": (16, 32, 64),
    "layers_per_block": (1, 1, 1, 1, 1),
    "decoder_layers_per_block": (1, 1, 1, 1),
    "spatio_temporal_scaling": (True, True, True, True),
    "decoder_spatio_temporal_scaling": (True, True, True),
    "decoder_inject_noise": (False, False, False, False),
    "downsample_type": ("spatial", "temporal", "spatiotemporal", "spatiotemporal"),
    "upsample_type": ("spatiotemporal", "spatiotemporal", "spatiotemporal"),
    "upsample_residual": (True, True, True),
    "upsample_factor": (2, 2, 2),
    "timestep_conditioning": False,
    "patch_size": 4,
    "patch_size_t": 1,
    "resnet_norm_eps": 1e-6,
    "scaling_factor": 1.0,
    "encoder_causal": True,
    "decoder_causal": False,
    "encoder_spatial_padding_mode": "zeros",
    "decoder_spatial_padding_mode": "reflect",
    "spatial_compression_ratio": LTX2_SPATIAL_COMPRESSION,
    "temporal_compression_ratio": LTX2_TEMPORAL_COMPRESSION,
}

# `Lightricks/LTX-2/audio_vae/config.json` (pixel norms, causal in time, channel multipliers 1, 2, 4 for the two 2x
# stages, stereo, double_z) at base width 32 (the packed token width, see above) with one resnet per stage (2 real).
TINY_LTX2_AUDIO_VAE_CONFIG: dict[str, Any] = {
    "base_channels": AUDIO_TOKEN_CHANNELS,
    "output_channels": 2,
    "ch_mult": (1, 2, 4),
    "num_res_blocks": 1,
    "attn_resolutions": None,
    "in_channels": 2,
    "resolution": 256,
    "latent_channels": AUDIO_LATENT_CHANNELS,
    "norm_type": "pixel",
    "causality_axis": "height",
    "dropout": 0.0,
    "mid_block_add_attention": False,
    "sample_rate": AUDIO_SAMPLE_RATE,
    "mel_hop_length": AUDIO_HOP_LENGTH,
    "is_causal": True,
    "mel_bins": AUDIO_MEL_BINS,
    "double_z": True,
}

# `Lightricks/LTX-2/vocoder/config.json` (HiFi-GAN: the real upsampling kernels and factors, 240x in all; three
# multi-dilation resnets per stage; leaky ReLU; tanh out; 24 kHz) at width 64 (halved at each of the 5 stages down to 2;
# 1024 down to 32 real). It reads the stereo mel spectrogram as 2 x 64 channels.
TINY_LTX2_VOCODER_CONFIG: dict[str, Any] = {
    "in_channels": 2 * AUDIO_MEL_BINS,
    "hidden_channels": 64,
    "out_channels": 2,
    "upsample_kernel_sizes": [16, 15, 8, 4, 4],
    "upsample_factors": [6, 5, 2, 2, 2],
    "resnet_kernel_sizes": [3, 7, 11],
    "resnet_dilations": [[1, 3, 5], [1, 3, 5], [1, 3, 5]],
    "act_fn": "leaky_relu",
    "leaky_relu_negative_slope": 0.1,
    "antialias": False,
    "final_act_fn": "tanh",
    "final_bias": True,
    "output_sampling_rate": VOCODER_SAMPLE_RATE,
}

# `Lightricks/LTX-2/transformer/config.json` (LTX-2.0), the tiny fields overridden below.
LTX2_TRANSFORMER_CONFIG: dict[str, Any] = {
    "in_channels": LTX2_LATENT_CHANNELS,
    "out_channels": LTX2_LATENT_CHANNELS,
    "patch_size": 1,
    "patch_size_t": 1,
    "num_attention_heads": 32,
    "attention_head_dim": 128,
    "cross_attention_dim": 4096,
    "vae_scale_factors": (LTX2_TEMPORAL_COMPRESSION, LTX2_SPATIAL_COMPRESSION, LTX2_SPATIAL_COMPRESSION),
    "pos_embed_max_pos": 20,
    "base_height": 2048,
    "base_width": 2048,
    "gated_attn": False,
    "cross_attn_mod": False,
    "audio_in_channels": 128,
    "audio_out_channels": 128,
    "audio_patch_size": 1,
    "audio_patch_size_t": 1,
    "audio_num_attention_heads": 32,
    "audio_attention_head_dim": 64,
    "audio_cross_attention_dim": 2048,
    "audio_scale_factor": AUDIO_COMPRESSION,
    "audio_pos_embed_max_pos": 20,
    "audio_sampling_rate": AUDIO_SAMPLE_RATE,
    "audio_hop_length": AUDIO_HOP_LENGTH,
    "audio_gated_attn": False,
    "audio_cross_attn_mod": False,
    "num_layers": 48,
    "activation_fn": "gelu-approximate",
    "qk_norm": "rms_norm_across_heads",
    "norm_elementwise_affine": False,
    "norm_eps": 1e-6,
    "caption_channels": 3840,
    "attention_bias": True,
    "attention_out_bias": True,
    "rope_theta": 10000.0,
    "rope_double_precision": True,
    "causal_offset": 1,
    "timestep_scale_multiplier": 1000,
    "cross_attn_timestep_scale_multiplier": 1000,
    "rope_type": "split",
    "use_prompt_embeddings": True,
    "perturbed_attn": False,
}
# 2 layers; video 2 heads of 16, audio 2 heads of 8. The video and audio head counts must be equal (the audio-video
# cross-attention's RoPE splits the video positions over the video heads and attends with the audio heads: 32 and 32
# real), the cross-attention widths equal the streams' widths (the captions are projected to them), and the audio
# tokens are the packed audio latents (channels x latent mel bins).
TINY_LTX2_TRANSFORMER_CONFIG: dict[str, Any] = {
    **LTX2_TRANSFORMER_CONFIG,
    "num_attention_heads": 2,
    "attention_head_dim": 16,
    "cross_attention_dim": 32,
    "audio_in_channels": AUDIO_TOKEN_CHANNELS,
    "audio_out_channels": AUDIO_TOKEN_CHANNELS,
    "audio_num_attention_heads": 2,
    "audio_attention_head_dim": 8,
    "audio_cross_attention_dim": 16,
    "num_layers": 2,
    "caption_channels": TEXT_ENCODER_HIDDEN_SIZE,
}

# `Lightricks/LTX-2/scheduler/scheduler_config.json` as Diffusers' conversion script writes it for the (non-distilled)
# LTX-2.0 checkpoint (assumed: the file itself is not at hand): Euler on flow sigmas, shifted by
# exp(mu) / (exp(mu) + 1 / sigma - 1) with mu interpolated from the video token count (0.95 at 1024 tokens, 2.05 at
# 4096; the pipelines pass sigmas linspace(1, 1 / steps, steps) and mu), then stretched so the last sigma is 0.1.
LTX2_SCHEDULER_CONFIG: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "shift": 1.0,
    "use_dynamic_shifting": True,
    "base_shift": 0.95,
    "max_shift": 2.05,
    "base_image_seq_len": 1024,
    "max_image_seq_len": 4096,
    "invert_sigmas": False,
    "shift_terminal": 0.1,
    "use_karras_sigmas": False,
    "use_exponential_sigmas": False,
    "use_beta_sigmas": False,
    "time_shift_type": "exponential",
    "stochastic_sampling": False,
}

# Gains that make the random components pass on what they are given (see easel/testing/conditioning.py). Measured
# at 64x64 and 64x96, 9 frames, 2 steps, seed 0: without them two prompts move the frames by 1e-3..3e-3 and the
# waveform by 1e-5; with them by 0.08..0.15 and 0.15..0.3. The video VAE needs none: its decoded frames span 0..1, and
# two input images move the image-to-video frames by about 0.2 through the clean first latent frame.

# The connectors' registers (which replace the ~1000 padding positions) start uniform in -1..1, as wide as the
# projected prompt tokens, so the DiT's text cross-attention sees mostly prompt-independent tokens; scaled down, the
# registers carry what the connectors' self-attention gathers from the prompt (as trained registers come to do).
CONNECTOR_REGISTER_GAIN = 0.05
# The text cross-attention's qk-norms are scaled once more (over the shared QUERY_KEY_NORM_GAIN) to attend
# selectively over its 1024 tokens.
TEXT_CROSS_ATTENTION_QK_GAIN = 2.0
# PyTorch's default init makes each of the vocoder's convolutions (conv_in, the five transposed ones) shrink the
# signal about 3x, so the waveform is tanh of the output bias whatever the mel spectrogram (a change of the mel moves
# it by about 1e-3 of that change); scaled 3x they pass the signal on, as a trained vocoder does.
VOCODER_UPSAMPLER_GAIN = 3.0

# Each component draws its weights from its own seed, derived from the build's seed.
_COMPONENT_SEED_OFFSETS = {
    "text_encoder": 0,
    "transformer": 1,
    "vae": 2,
    "connectors": 3,
    "audio_vae": 4,
    "vocoder": 5,
}


@functools.cache
def _gemma_vocabulary() -> tuple[dict[str, int], tuple[tuple[str, str], ...]]:
    """The tiny Gemma vocabulary and its merges: the special tokens, the 256 byte-fallback tokens, "▁" and the
    printable ASCII characters, one token per merge learned from `ENGLISH_WORD_COUNTS` (words as "▁word", as Gemma's
    normalizer writes them), then the image markers."""
    vocab = {token: index for index, token in enumerate(GEMMA_SPECIAL_TOKENS)}
    for byte in range(256):
        vocab[f"<0x{byte:02X}>"] = len(vocab)
    for character in (GEMMA_WORD_BOUNDARY, "\n", *string.digits, *string.ascii_letters, *string.punctuation):
        vocab.setdefault(character, len(vocab))
    words = {tuple(GEMMA_WORD_BOUNDARY + word): count for word, count in ENGLISH_WORD_COUNTS.items()}
    merges = tuple(learn_bpe_merges(words, GEMMA_MAX_MERGES))
    for left, right in merges:
        vocab.setdefault(left + right, len(vocab))
    for token in GEMMA_IMAGE_TOKENS:
        vocab[token] = len(vocab)
    return vocab, merges


def build_gemma_tokenizer() -> GemmaTokenizer:
    """A small Gemma 3 tokenizer in the real layout (see the module docstring): `<bos>` first, left padding."""
    vocab, merges = _gemma_vocabulary()
    tokenizer = GemmaTokenizer(
        vocab=dict(vocab),
        merges=list(merges),
        unk_token=GEMMA_UNK_TOKEN,
        bos_token=GEMMA_BOS_TOKEN,
        eos_token=GEMMA_EOS_TOKEN,
        pad_token=GEMMA_PAD_TOKEN,
        add_bos_token=True,
        add_eos_token=False,
        padding_side="left",
        model_max_length=GEMMA_MAX_LENGTH,
        clean_up_tokenization_spaces=False,
        chat_template=GEMMA3_CHAT_TEMPLATE,
    )
    # The markers beyond <bos>/<eos>/<pad>/<unk> are whole tokens in text (a chat template writes them), never split.
    markers = (*GEMMA_SPECIAL_TOKENS, *GEMMA_IMAGE_TOKENS)
    extra = [token for token in markers if token not in tokenizer.all_special_tokens]
    tokenizer.add_special_tokens(
        {"additional_special_tokens": [AddedToken(token, special=True, normalized=False) for token in extra]}
    )
    return tokenizer


def build_gemma3_text_encoder(tokenizer: GemmaTokenizer) -> Gemma3ForConditionalGeneration:
    """Gemma 3 (`TINY_GEMMA3_TEXT_CONFIG`, `TINY_SIGLIP_VISION_CONFIG`) over `tokenizer`'s vocabulary and ids."""
    image_ids = tokenizer.convert_tokens_to_ids(list(GEMMA_IMAGE_TOKENS))
    config = Gemma3Config(
        text_config={
            **TINY_GEMMA3_TEXT_CONFIG,
            "vocab_size": len(tokenizer),
            "pad_token_id": tokenizer.pad_token_id,
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
        },
        vision_config=TINY_SIGLIP_VISION_CONFIG,
        mm_tokens_per_image=GEMMA3_MM_TOKENS_PER_IMAGE,
        boi_token_index=image_ids[0],
        eoi_token_index=image_ids[1],
        image_token_index=image_ids[2],
        tie_word_embeddings=True,
    )
    return Gemma3ForConditionalGeneration(config).eval()


@torch.no_grad()
def strengthen_ltx2_conditioning(transformer: LTX2VideoTransformer3DModel) -> None:
    """The init scaling of easel/testing/conditioning.py, applied to a Diffusers LTX-2 DiT.

    LTX-2's conditioning vectors are timestep embeddings (`LTX2AdaLayerNormSingle`: the streams' adaLN, the
    audio-video cross-attention's scale/shift and gates); the prompt enters through cross-attention over 1024 tokens,
    most of them the connectors' registers, so sharper qk-norms make the attention pick out what differs.
    """
    for module in transformer.modules():
        if isinstance(module, LTX2AdaLayerNormSingle):
            for parameter in module.emb.timestep_embedder.linear_2.parameters():
                parameter.mul_(CONDITIONING_EMBEDDING_GAIN)
            module.linear.weight.mul_(MODULATION_GAIN)
        if isinstance(module, LTX2Attention):
            for norm in (module.norm_q, module.norm_k):
                if norm.weight is not None:
                    norm.weight.mul_(QUERY_KEY_NORM_GAIN)
    for block in transformer.transformer_blocks:
        for attention in (block.attn2, block.audio_attn2):
            for norm in (attention.norm_q, attention.norm_k):
                norm.weight.mul_(TEXT_CROSS_ATTENTION_QK_GAIN)


def build_ltx2_transformer(transformer_config: Mapping[str, Any] | None = None) -> LTX2VideoTransformer3DModel:
    """The tiny `LTX2VideoTransformer3DModel` (fields of `transformer_config` override `TINY_LTX2_TRANSFORMER_CONFIG`),
    its conditioning inits strengthened."""
    transformer = LTX2VideoTransformer3DModel(**{**TINY_LTX2_TRANSFORMER_CONFIG, **(transformer_config or {})})
    strengthen_ltx2_conditioning(transformer)
    return transformer.eval()


@torch.no_grad()
def build_ltx2_video_vae() -> AutoencoderKLLTX2Video:
    """The tiny `AutoencoderKLLTX2Video` (`TINY_LTX2_VAE_CONFIG`) with fixed per-channel latent statistics."""
    vae = AutoencoderKLLTX2Video(**TINY_LTX2_VAE_CONFIG)
    mean, std = _latent_statistics(LTX2_LATENT_CHANNELS, seed=2)
    vae.latents_mean.copy_(torch.tensor(mean))
    vae.latents_std.copy_(torch.tensor(std))
    return vae.eval()


@torch.no_grad()
def build_ltx2_audio_vae() -> AutoencoderKLLTX2Audio:
    """The tiny `AutoencoderKLLTX2Audio` with fixed latent statistics (one per packed token channel)."""
    audio_vae = AutoencoderKLLTX2Audio(**TINY_LTX2_AUDIO_VAE_CONFIG)
    mean, std = _latent_statistics(AUDIO_TOKEN_CHANNELS, seed=3)
    audio_vae.latents_mean.copy_(torch.tensor(mean))
    audio_vae.latents_std.copy_(torch.tensor(std))
    return audio_vae.eval()


@torch.no_grad()
def build_ltx2_vocoder() -> LTX2Vocoder:
    """The tiny `LTX2Vocoder` (`TINY_LTX2_VOCODER_CONFIG`)."""
    vocoder = LTX2Vocoder(**TINY_LTX2_VOCODER_CONFIG)
    for convolution in (vocoder.conv_in, *vocoder.upsamplers):
        convolution.weight.mul_(VOCODER_UPSAMPLER_GAIN)
    return vocoder.eval()


@torch.no_grad()
def build_ltx2_connectors() -> LTX2TextConnectors:
    """The tiny `LTX2TextConnectors` (`TINY_LTX2_CONNECTORS_CONFIG`), their registers scaled down."""
    connectors = LTX2TextConnectors(**TINY_LTX2_CONNECTORS_CONFIG)
    for connector in (connectors.video_connector, connectors.audio_connector):
        connector.learnable_registers.mul_(CONNECTOR_REGISTER_GAIN)
    return connectors.eval()


def _components(seed: int, transformer_config: Mapping[str, Any] | None) -> dict[str, Any]:
    tokenizer = build_gemma_tokenizer()
    with seeded(seed + _COMPONENT_SEED_OFFSETS["text_encoder"]):
        text_encoder = build_gemma3_text_encoder(tokenizer)
    with seeded(seed + _COMPONENT_SEED_OFFSETS["connectors"]):
        connectors = build_ltx2_connectors()
    with seeded(seed + _COMPONENT_SEED_OFFSETS["transformer"]):
        transformer = build_ltx2_transformer(transformer_config)
    with seeded(seed + _COMPONENT_SEED_OFFSETS["vae"]):
        vae = build_ltx2_video_vae()
    with seeded(seed + _COMPONENT_SEED_OFFSETS["audio_vae"]):
        audio_vae = build_ltx2_audio_vae()
    with seeded(seed + _COMPONENT_SEED_OFFSETS["vocoder"]):
        vocoder = build_ltx2_vocoder()
    return {
        "scheduler": FlowMatchEulerDiscreteScheduler(**LTX2_SCHEDULER_CONFIG),
        "vae": vae,
        "audio_vae": audio_vae,
        "text_encoder": text_encoder,
        "tokenizer": tokenizer,
        "connectors": connectors,
        "transformer": transformer,
        "vocoder": vocoder,
    }


def _build(
    pipeline_cls: type[DiffusionPipeline],
    path: str | os.PathLike[str],
    seed: int,
    transformer_config: Mapping[str, Any] | None,
) -> pathlib.Path:
    pipeline = pipeline_cls(**_components(seed, transformer_config))
    output_path = pathlib.Path(path)
    pipeline.save_pretrained(output_path)
    return output_path


def build_ltx2_pipeline(
    path: str | os.PathLike[str], seed: int = 0, *, transformer_config: Mapping[str, Any] | None = None
) -> pathlib.Path:
    """Write a random-weight `LTX2Pipeline` folder (text to video with audio, `Lightricks/LTX-2` layout) at `path`
    and return it. `transformer_config` overrides fields of `TINY_LTX2_TRANSFORMER_CONFIG`."""
    return _build(LTX2Pipeline, path, seed, transformer_config)


def build_ltx2_i2v_pipeline(
    path: str | os.PathLike[str], seed: int = 0, *, transformer_config: Mapping[str, Any] | None = None
) -> pathlib.Path:
    """Write a random-weight `LTX2ImageToVideoPipeline` folder: the components (and weights) of `build_ltx2_pipeline`
    under the image-to-video pipeline's name. `transformer_config` overrides fields of
    `TINY_LTX2_TRANSFORMER_CONFIG`."""
    return _build(LTX2ImageToVideoPipeline, path, seed, transformer_config)


LTX2_PIPELINE_CLASSES: dict[str, type[DiffusionPipeline]] = {
    "LTX2Pipeline": LTX2Pipeline,
    "LTX2ImageToVideoPipeline": LTX2ImageToVideoPipeline,
}


def load_ltx2_reference(path: str | os.PathLike[str], **kwargs: Any) -> DiffusionPipeline:
    """The Diffusers pipeline of a tiny LTX-2 folder, of the class its model_index.json names."""
    path = pathlib.Path(path)
    model_index = json.loads((path / "model_index.json").read_text())
    return LTX2_PIPELINE_CLASSES[model_index["_class_name"]].from_pretrained(path, **kwargs)


# kind -> builder(path, seed), for `easel.testing.TINY_PIPELINE_BUILDERS`.
LTX2_BUILDERS: dict[str, Callable[..., pathlib.Path]] = {
    "ltx2": build_ltx2_pipeline,
    "ltx2-i2v": build_ltx2_i2v_pipeline,
}

__all__ = [
    "LTX2_BUILDERS",
    "LTX2_PIPELINE_CLASSES",
    "LTX2_SCHEDULER_CONFIG",
    "LTX2_TRANSFORMER_CONFIG",
    "TINY_GEMMA3_TEXT_CONFIG",
    "TINY_LTX2_AUDIO_VAE_CONFIG",
    "TINY_LTX2_CONNECTORS_CONFIG",
    "TINY_LTX2_TRANSFORMER_CONFIG",
    "TINY_LTX2_VAE_CONFIG",
    "TINY_LTX2_VOCODER_CONFIG",
    "build_gemma3_text_encoder",
    "build_gemma_tokenizer",
    "build_ltx2_i2v_pipeline",
    "build_ltx2_pipeline",
    "build_ltx2_transformer",
    "load_ltx2_reference",
    "strengthen_ltx2_conditioning",
]
