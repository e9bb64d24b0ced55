"""Random-weight Qwen-Image pipelines in Diffusers format: the real layout, vocabulary and geometry, tiny widths.

Four kinds, one per Diffusers pipeline: `qwen-image` (QwenImagePipeline, text to image), `qwen-image-edit`
(QwenImageEditPipeline), `qwen-image-edit-plus` (QwenImageEditPlusPipeline, several reference images) and
`qwen-image-layered` (QwenImageLayeredPipeline, an RGBA image to layers). All share a tiny Qwen2.5-VL text encoder
on the real Qwen vocabulary (Diffusers slices its prompt templates at hard-coded token offsets), a tiny
`QwenImageTransformer2DModel` and a thin `AutoencoderKLQwenImage` with Qwen-Image's geometry (16 latent channels,
8x compression, its per-channel latent statistics).

The edit and layered kinds also ship `processor/` (a `Qwen2VLProcessor`). transformers cannot build, save or load
that class without torchvision (its video processor needs it), so the folder is written by hand in the real layout
(tokenizer files plus the image processor's `preprocessor_config.json`) and `load_qwen_processor` assembles the
processor from the tokenizer and the PIL image processor. Pass it as `processor=` to the Diffusers pipeline's
`from_pretrained`.
"""

import json
import os
import pathlib
from collections.abc import Callable, Mapping
from typing import Any

import torch
from diffusers import (
    AutoencoderKLQwenImage,
    DiffusionPipeline,
    FlowMatchEulerDiscreteScheduler,
    QwenImageEditPipeline,
    QwenImageEditPlusPipeline,
    QwenImageLayeredPipeline,
    QwenImagePipeline,
    QwenImageTransformer2DModel,
)
from transformers import (
    PreTrainedTokenizerBase,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2Tokenizer,
)

from easel.configs.models.vaes.qwen_image import QWEN_IMAGE_LATENTS_MEAN, QWEN_IMAGE_LATENTS_STD
from easel.runtime.loader.processors import load_qwen_processor
from easel.testing.conditioning import QUERY_KEY_NORM_GAIN, QUERY_KEY_NORMS
from easel.testing.qwen_tokenizer import QWEN_VOCAB_SIZE, build_qwen2_5_vl_tokenizer
from easel.testing.seeding import seeded

QWEN_IMAGE_LATENT_CHANNELS = 16
QWEN_TEXT_HIDDEN_SIZE = 16

# Qwen2.5-VL's text and vision towers at width 16 (the shapes of Diffusers' own Qwen-Image tests). The embedding
# table must cover the real vocabulary (ids up to 151664): 152064 rows as in the real checkpoints, tied to the
# output layer so the folder holds it once.
TINY_QWEN2_5_VL_CONFIG: dict[str, Any] = {
    "text_config": {
        "vocab_size": 152064,
        "hidden_size": QWEN_TEXT_HIDDEN_SIZE,
        "intermediate_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "num_key_value_heads": 2,
        "max_position_embeddings": 4096,
        # Multimodal rotary: (temporal, height, width) sections of the 8-wide heads' 4 frequencies.
        "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [1, 1, 2]},
    },
    "vision_config": {
        "depth": 2,
        "hidden_size": QWEN_TEXT_HIDDEN_SIZE,
        "intermediate_size": 16,
        "num_heads": 2,
        "out_hidden_size": QWEN_TEXT_HIDDEN_SIZE,
        "fullatt_block_indexes": [1],  # one windowed, one full-attention block, as the real tower alternates
    },
    "tie_word_embeddings": True,
}

TINY_QWEN_IMAGE_TRANSFORMER_CONFIG: dict[str, Any] = {
    "patch_size": 2,
    "in_channels": QWEN_IMAGE_LATENT_CHANNELS * 2 * 2,  # 2x2 latent patches packed into each token
    "out_channels": QWEN_IMAGE_LATENT_CHANNELS,
    "num_layers": 2,
    "attention_head_dim": 16,
    "num_attention_heads": 2,
    "joint_attention_dim": QWEN_TEXT_HIDDEN_SIZE,
    "axes_dims_rope": (4, 6, 6),
}

# Qwen-Image's VAE geometry (16 latent channels, 8x spatial compression: dim_mult of 4 stages, three of them
# downsampling, its latent statistics) at base width 2 with one residual block per stage. The edit pipelines
# resize every reference image to about 1024x1024 before encoding, so the encoder's full-resolution convolutions
# dominate an edit run on the CPU: about 1.5 s at width 2, 2.5 s at width 4 or 8 (single thread).
TINY_QWEN_IMAGE_VAE_CONFIG: dict[str, Any] = {
    "base_dim": 2,
    "z_dim": QWEN_IMAGE_LATENT_CHANNELS,
    "dim_mult": [1, 2, 4, 4],
    "num_res_blocks": 1,
    "attn_scales": [],
    "temperal_downsample": [False, True, True],
    "dropout": 0.0,
    "input_channels": 3,
    "latents_mean": list(QWEN_IMAGE_LATENTS_MEAN),
    "latents_std": list(QWEN_IMAGE_LATENTS_STD),
}

# `Qwen/Qwen-Image/scheduler/scheduler_config.json` (the edit and layered checkpoints ship the same one).
QWEN_IMAGE_SCHEDULER_CONFIG: dict[str, Any] = {
    "base_image_seq_len": 256,
    "base_shift": 0.5,
    "invert_sigmas": False,
    "max_image_seq_len": 8192,
    "max_shift": 0.9,
    "num_train_timesteps": 1000,
    "shift": 1.0,
    "shift_terminal": 0.02,
    "stochastic_sampling": False,
    "time_shift_type": "exponential",
    "use_beta_sigmas": False,
    "use_dynamic_shifting": True,
    "use_exponential_sigmas": False,
    "use_karras_sigmas": False,
}

# The real `processor/preprocessor_config.json` but for the pixel budget: the real one lets the vision tower see up
# to 12845056 pixels (about 1400 tokens for the 1024x1024 edit input); 64 merged 28x28 patches keep the text
# encoder's sequence short. The pipelines hand the processor PIL images and it resizes them within this budget.
QWEN_PROCESSOR_MAX_PIXELS = 28 * 28 * 64
QWEN_PREPROCESSOR_CONFIG: dict[str, Any] = {
    "min_pixels": 3136,
    "max_pixels": QWEN_PROCESSOR_MAX_PIXELS,
    "patch_size": 14,
    "temporal_patch_size": 2,
    "merge_size": 2,
    "image_mean": [0.48145466, 0.4578275, 0.40821073],
    "image_std": [0.26862954, 0.26130258, 0.27577711],
    "image_processor_type": "Qwen2VLImageProcessor",
    "processor_class": "Qwen2VLProcessor",
}

# Query/key RMSNorm weights of 1 give attention logits of unit std, spreading each image token's attention evenly
# over its keys. In the edit kinds the keys are mostly the ~4000 tokens of the 1024x1024 reference image, which
# wash out the prompt's few dozen: a prompt change moved the pixels by only 0.007-0.035. `QUERY_KEY_NORM_GAIN` (2x)
# makes attention selective, as in a trained model: prompt and image changes then move the pixels by 0.17-0.32
# (2 steps, 64x64 and 48x80, true CFG). The other gains of `strengthen_conditioning` are not needed here.

# Default init leaves the VAE encoder's latents nearly constant over the image: after Qwen-Image's per-channel
# normalization their spatial std is about 0.02 (a trained encoder gives about 1), so the edit and layered outputs
# barely depend on the input image. Scaling the encoder's output convolution (weight and bias) by 50 brings the
# normalized latents to unit spatial std; measured effects are in tests/test_testing_qwen_image.py.
ENCODER_OUTPUT_GAIN = 50.0

# Each component draws its weights from its own seed, derived from the build's seed.
_COMPONENT_SEED_OFFSETS = {"text_encoder": 0, "transformer": 1, "vae": 2}


def build_qwen2_5_vl_text_encoder() -> Qwen2_5_VLForConditionalGeneration:
    """A 2-layer Qwen2.5-VL of width 16 with a 2-block vision tower, on the real vocabulary and special ids."""
    return Qwen2_5_VLForConditionalGeneration(Qwen2_5_VLConfig(**TINY_QWEN2_5_VL_CONFIG)).eval()


def _write_processor(folder: pathlib.Path, tokenizer: PreTrainedTokenizerBase) -> None:
    """`processor/` as the real checkpoints ship it: the tokenizer files and `preprocessor_config.json`."""
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(folder)
    (folder / "preprocessor_config.json").write_text(json.dumps(QWEN_PREPROCESSOR_CONFIG, indent=2) + "\n")


def _build_qwen_image_folder(
    path: str | os.PathLike[str],
    seed: int,
    pipeline_cls: type[DiffusionPipeline],
    *,
    with_processor: bool,
    transformer_config: Mapping[str, Any] | None = None,
    vae_config: Mapping[str, Any] | None = None,
) -> pathlib.Path:
    """Write a random-weight folder for `pipeline_cls` at `path` and return it."""
    tokenizer = build_qwen2_5_vl_tokenizer()
    if len(tokenizer) != QWEN_VOCAB_SIZE:
        raise AssertionError(f"the Qwen tokenizer has {len(tokenizer)} tokens, expected {QWEN_VOCAB_SIZE}")
    with seeded(seed + _COMPONENT_SEED_OFFSETS["text_encoder"]):
        text_encoder = build_qwen2_5_vl_text_encoder()
    with seeded(seed + _COMPONENT_SEED_OFFSETS["transformer"]):
        transformer = QwenImageTransformer2DModel(
            **{**TINY_QWEN_IMAGE_TRANSFORMER_CONFIG, **(transformer_config or {})}
        )
        _sharpen_attention(transformer)
    with seeded(seed + _COMPONENT_SEED_OFFSETS["vae"]):
        vae = AutoencoderKLQwenImage(**{**TINY_QWEN_IMAGE_VAE_CONFIG, **(vae_config or {})})
        _strengthen_image_latents(vae)
    components: dict[str, Any] = dict(
        scheduler=FlowMatchEulerDiscreteScheduler(**QWEN_IMAGE_SCHEDULER_CONFIG),
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        transformer=transformer,
    )
    if with_processor:
        components["processor"] = None  # written by hand below
    output_path = pathlib.Path(path)
    pipeline_cls(**components).save_pretrained(output_path)

    if with_processor:
        _write_processor(output_path / "processor", tokenizer)
        # Name the processor as the real model_index.json does, so loaders know what `processor/` holds.
        index_file = output_path / "model_index.json"
        model_index = json.loads(index_file.read_text())
        model_index["processor"] = ["transformers", "Qwen2VLProcessor"]
        index_file.write_text(json.dumps(model_index, indent=2, sort_keys=True) + "\n")
    return output_path


@torch.no_grad()
def _sharpen_attention(transformer: QwenImageTransformer2DModel) -> None:
    """Scale the query/key norms' weights so that attention is selective (see `QUERY_KEY_NORM_GAIN`)."""
    for block in transformer.transformer_blocks:
        for name in QUERY_KEY_NORMS:
            getattr(block.attn, name).weight.mul_(QUERY_KEY_NORM_GAIN)


@torch.no_grad()
def _strengthen_image_latents(vae: AutoencoderKLQwenImage) -> None:
    """Scale the encoder's output convolution so that encoded images vary (see `ENCODER_OUTPUT_GAIN`)."""
    for parameter in vae.encoder.conv_out.parameters():
        parameter.mul_(ENCODER_OUTPUT_GAIN)


def build_qwen_image_pipeline(
    path: str | os.PathLike[str], seed: int = 0, *, transformer_config: Mapping[str, Any] | None = None
) -> pathlib.Path:
    """A `QwenImagePipeline` folder (Qwen/Qwen-Image layout): text to image."""
    return _build_qwen_image_folder(
        path, seed, QwenImagePipeline, with_processor=False, transformer_config=transformer_config
    )


def build_qwen_image_edit_pipeline(
    path: str | os.PathLike[str], seed: int = 0, *, transformer_config: Mapping[str, Any] | None = None
) -> pathlib.Path:
    """A `QwenImageEditPipeline` folder (Qwen/Qwen-Image-Edit layout, with `processor/`)."""
    return _build_qwen_image_folder(
        path, seed, QwenImageEditPipeline, with_processor=True, transformer_config=transformer_config
    )


def build_qwen_image_edit_plus_pipeline(
    path: str | os.PathLike[str], seed: int = 0, *, transformer_config: Mapping[str, Any] | None = None
) -> pathlib.Path:
    """A `QwenImageEditPlusPipeline` folder (Qwen/Qwen-Image-Edit-2509 layout, with `processor/`).

    `transformer_config={"zero_cond_t": True}` gives the Qwen-Image-Edit-2511 variant.
    """
    return _build_qwen_image_folder(
        path, seed, QwenImageEditPlusPipeline, with_processor=True, transformer_config=transformer_config
    )


def build_qwen_image_layered_pipeline(
    path: str | os.PathLike[str], seed: int = 0, *, transformer_config: Mapping[str, Any] | None = None
) -> pathlib.Path:
    """A `QwenImageLayeredPipeline` folder (Qwen/Qwen-Image-Layered layout): an RGBA VAE, the layer-3D rotary and
    the RGB/RGBA embedding in the transformer, and `processor/` (used to caption an input given no prompt)."""
    return _build_qwen_image_folder(
        path,
        seed,
        QwenImageLayeredPipeline,
        with_processor=True,
        transformer_config={"use_layer3d_rope": True, "use_additional_t_cond": True, **(transformer_config or {})},
        vae_config={"input_channels": 4},
    )


# kind -> builder(path, seed). The lead merges these into `easel.testing.TINY_PIPELINE_BUILDERS`.
QWEN_IMAGE_BUILDERS: dict[str, Callable[..., pathlib.Path]] = {
    "qwen-image": build_qwen_image_pipeline,
    "qwen-image-edit": build_qwen_image_edit_pipeline,
    "qwen-image-edit-plus": build_qwen_image_edit_plus_pipeline,
    "qwen-image-layered": build_qwen_image_layered_pipeline,
}

# The Diffusers pipeline class of each kind, for tests.
QWEN_IMAGE_PIPELINE_CLASSES: dict[str, type[DiffusionPipeline]] = {
    "qwen-image": QwenImagePipeline,
    "qwen-image-edit": QwenImageEditPipeline,
    "qwen-image-edit-plus": QwenImageEditPlusPipeline,
    "qwen-image-layered": QwenImageLayeredPipeline,
}


def load_qwen_image_reference(kind: str, path: str | os.PathLike[str], **kwargs: Any) -> DiffusionPipeline:
    """The Diffusers pipeline of a tiny folder of `kind`, with its processor assembled by `load_qwen_processor`.

    `processor/` holds the same tokenizer as `tokenizer/`; it is read once and shared (loading one takes ~1 s).
    """
    path = pathlib.Path(path)
    if (path / "processor").is_dir() and "processor" not in kwargs:
        kwargs.setdefault("tokenizer", Qwen2Tokenizer.from_pretrained(path / "tokenizer"))
        kwargs["processor"] = load_qwen_processor(path / "processor", tokenizer=kwargs["tokenizer"])
    return QWEN_IMAGE_PIPELINE_CLASSES[kind].from_pretrained(path, **kwargs)
