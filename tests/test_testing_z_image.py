"""Tests of `easel.testing.z_image`: a tiny random-weight ZImagePipeline folder built offline."""

import json
import pathlib

import numpy as np
import pytest
import torch
from diffusers import ZImagePipeline

from easel.testing.z_image import QWEN3_TOKENIZER_SIZE, Z_IMAGE_BUILDERS, build_z_image_pipeline
from tests.parity import reference_images
from tests.tiny_builders import (
    MIN_CONDITIONING_EFFECT,
    NEGATIVE_PROMPT,
    OTHER_PROMPT,
    PROMPT,
    assert_other_weights,
    assert_same_weights,
    load_reference,
)


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    return Z_IMAGE_BUILDERS["z-image"](tmp_path_factory.mktemp("z-image"), 0)


@pytest.fixture(scope="module")
def pipeline(folder: pathlib.Path) -> ZImagePipeline:
    return load_reference(ZImagePipeline, folder)


def _generate(pipeline: ZImagePipeline, prompt: str, height: int, width: int, cfg: bool) -> np.ndarray:
    # Z-Image runs CFG whenever guidance_scale > 0 (pos + scale * (pos - neg)); 0 turns it off, as for Turbo.
    guidance = dict(guidance_scale=4.0, negative_prompt=NEGATIVE_PROMPT) if cfg else dict(guidance_scale=0.0)
    return reference_images(pipeline, 0, prompt=prompt, height=height, width=width, num_inference_steps=2, **guidance)


def test_folder_has_the_diffusers_layout(folder: pathlib.Path, pipeline: ZImagePipeline) -> None:
    model_index = json.loads((folder / "model_index.json").read_text())
    assert model_index["_class_name"] == "ZImagePipeline"
    assert model_index["text_encoder"] == ["transformers", "Qwen3Model"]
    assert model_index["tokenizer"] == ["transformers", "Qwen2Tokenizer"]
    assert model_index["transformer"] == ["diffusers", "ZImageTransformer2DModel"]
    assert model_index["scheduler"] == ["diffusers", "FlowMatchEulerDiscreteScheduler"]
    assert not list(folder.rglob("*.bin")), "weights must be safetensors"

    # Z-Image-Turbo's scheduler and the FLUX.1 VAE's latent geometry and statistics.
    assert pipeline.scheduler.config.shift == 3.0 and not pipeline.scheduler.config.use_dynamic_shifting
    assert pipeline.vae_scale_factor == 8
    assert pipeline.vae.config.latent_channels == pipeline.transformer.config.in_channels == 16
    assert (pipeline.vae.config.scaling_factor, pipeline.vae.config.shift_factor) == (0.3611, 0.1159)
    assert pipeline.transformer.config.cap_feat_dim == pipeline.text_encoder.config.hidden_size
    assert pipeline.text_encoder.config.vocab_size >= len(pipeline.tokenizer) == QWEN3_TOKENIZER_SIZE
    # Diffusers leaves the pad tokens uninitialized; the build must give them values.
    assert torch.isfinite(pipeline.transformer.x_pad_token).all() and pipeline.transformer.x_pad_token.std() > 0.5


def test_tokenizer_is_the_real_qwen3_one(pipeline: ZImagePipeline) -> None:
    tokenizer = pipeline.tokenizer  # loaded from the folder's tokenizer/
    assert tokenizer("Hello, world!").input_ids == [9707, 11, 1879, 0]
    assert tokenizer.convert_tokens_to_ids(["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"]) == [
        151643,
        151644,
        151645,
        151667,
        151668,
    ]
    assert (tokenizer.pad_token, tokenizer.eos_token, tokenizer.padding_side) == (
        "<|endoftext|>",
        "<|im_end|>",
        "right",
    )
    # As ZImagePipeline._encode_prompt calls it.
    messages = [{"role": "user", "content": OTHER_PROMPT}]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, enable_thinking=True)
    assert text == "<|im_start|>user\na cat<|im_end|>\n<|im_start|>assistant\n"
    assert tokenizer(text).input_ids == [151644, 872, 198, 64, 8251, 151645, 198, 151644, 77091, 198]
    no_thinking = tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True, enable_thinking=False
    )
    assert no_thinking == text + "<think>\n\n</think>\n\n"
    assert tokenizer.decode(tokenizer(text).input_ids, skip_special_tokens=True) == "user\na cat\nassistant\n"


@pytest.mark.parametrize(("height", "width", "cfg"), [(64, 64, False), (48, 80, True)], ids=["64x64", "48x80-cfg"])
def test_runs_and_depends_on_the_prompt(pipeline: ZImagePipeline, height: int, width: int, cfg: bool) -> None:
    image = _generate(pipeline, PROMPT, height, width, cfg)
    assert image.shape == (1, height, width, 3)
    assert np.isfinite(image).all() and image.std() > 0.05
    np.testing.assert_array_equal(_generate(pipeline, PROMPT, height, width, cfg), image)
    other = _generate(pipeline, OTHER_PROMPT, height, width, cfg)
    assert np.abs(other - image).max() >= MIN_CONDITIONING_EFFECT


def test_build_is_deterministic_and_seeded(folder: pathlib.Path, tmp_path: pathlib.Path) -> None:
    again = build_z_image_pipeline(tmp_path / "again", seed=0)
    assert_same_weights(folder, again)
    assert (again / "tokenizer" / "tokenizer.json").read_bytes() == (
        folder / "tokenizer" / "tokenizer.json"
    ).read_bytes()

    assert_other_weights(folder, build_z_image_pipeline(tmp_path / "other", seed=1))
