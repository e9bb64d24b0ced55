"""Tests of `easel.testing`: tiny random-weight Diffusers pipelines built offline."""

import json
import pathlib

import numpy as np
import pytest
import torch
from diffusers import FluxPipeline
from transformers import AutoTokenizer

from easel.testing import TINY_PIPELINE_BUILDERS, build_tiny_pipeline
from easel.testing.tokenizers import build_clip_tokenizer, build_t5_tokenizer
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

FLUX_KINDS = ["flux", "flux-schnell"]


@pytest.fixture(scope="module")
def flux_folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, pathlib.Path]:
    return {kind: build_tiny_pipeline(kind, tmp_path_factory.mktemp(kind)) for kind in FLUX_KINDS}


def _generate(pipeline: FluxPipeline, height: int, width: int, **call_kwargs) -> np.ndarray:
    return reference_images(pipeline, 0, height=height, width=width, num_inference_steps=2, **call_kwargs)


@pytest.mark.parametrize("kind", FLUX_KINDS)
def test_flux_folder_has_the_diffusers_layout(flux_folders: dict[str, pathlib.Path], kind: str) -> None:
    folder = flux_folders[kind]
    model_index = json.loads((folder / "model_index.json").read_text())
    assert model_index["_class_name"] == "FluxPipeline"
    assert model_index["text_encoder"] == ["transformers", "CLIPTextModel"]
    assert model_index["text_encoder_2"] == ["transformers", "T5EncoderModel"]
    assert model_index["transformer"] == ["diffusers", "FluxTransformer2DModel"]
    assert model_index.get("image_encoder", [None, None]) == [None, None]
    assert model_index.get("feature_extractor", [None, None]) == [None, None]
    assert not list(folder.rglob("*.bin")), "weights must be safetensors"

    pipeline = load_reference(FluxPipeline, folder)
    is_dev = kind == "flux"
    assert pipeline.transformer.config.guidance_embeds is is_dev
    assert pipeline.transformer.config.in_channels == 64
    assert pipeline.scheduler.config.use_dynamic_shifting is is_dev
    assert pipeline.scheduler.config.shift == (3.0 if is_dev else 1.0)
    assert pipeline.vae_scale_factor == 8
    assert pipeline.vae.config.latent_channels == 16
    assert pipeline.vae.config.scaling_factor == 0.3611
    assert pipeline.vae.config.shift_factor == 0.1159


@pytest.mark.parametrize("kind", FLUX_KINDS)
@pytest.mark.parametrize(("height", "width"), [(64, 64), (48, 80)])
def test_flux_output_is_sensitive_to_prompt_and_negative_prompt(
    flux_folders: dict[str, pathlib.Path], kind: str, height: int, width: int
) -> None:
    pipeline = load_reference(FluxPipeline, flux_folders[kind])
    image = _generate(pipeline, height, width, prompt=PROMPT)
    other_prompt_image = _generate(pipeline, height, width, prompt=OTHER_PROMPT)
    negative_prompt_image = _generate(
        pipeline, height, width, prompt=PROMPT, negative_prompt=NEGATIVE_PROMPT, true_cfg_scale=4.0
    )

    assert image.shape == (1, height, width, 3)
    assert np.isfinite(image).all()
    assert ((image > 0) & (image < 1)).mean() > 0.9, "decoded pixels must not sit at the clamp"
    assert np.abs(image - other_prompt_image).max() >= MIN_CONDITIONING_EFFECT
    assert np.abs(image - negative_prompt_image).max() >= MIN_CONDITIONING_EFFECT


def test_build_is_deterministic_per_seed(tmp_path: pathlib.Path) -> None:
    first = build_tiny_pipeline("flux", tmp_path / "first", seed=3)
    assert_same_weights(first, build_tiny_pipeline("flux", tmp_path / "second", seed=3))
    assert_other_weights(first, build_tiny_pipeline("flux", tmp_path / "other_seed", seed=4))


def test_build_leaves_the_callers_random_stream_alone(tmp_path: pathlib.Path) -> None:
    torch.manual_seed(123)
    expected = torch.rand(4)
    torch.manual_seed(123)
    build_tiny_pipeline("flux-schnell", tmp_path)
    assert torch.equal(torch.rand(4), expected)


def test_unknown_kind_names_the_known_kinds(tmp_path: pathlib.Path) -> None:
    with pytest.raises(ValueError, match="unknown-kind") as error:
        build_tiny_pipeline("unknown-kind", tmp_path)
    assert all(kind in str(error.value) for kind in TINY_PIPELINE_BUILDERS)
    assert not (tmp_path / "model_index.json").exists()


@pytest.mark.parametrize("build_tokenizer", [build_clip_tokenizer, build_t5_tokenizer])
def test_tokenizers_tell_ordinary_prompts_apart(build_tokenizer) -> None:
    tokenizer = build_tokenizer()
    prompts = [PROMPT, OTHER_PROMPT, "a dog", "A photo of a Zebra, 42 times!"]
    # Without specials: CLIP's `<unk>` is its end-of-text token.
    token_ids = [tuple(tokenizer(prompt, add_special_tokens=False).input_ids) for prompt in prompts]

    assert len(set(token_ids)) == len(prompts)
    assert all(tokenizer.unk_token_id not in ids for ids in token_ids)
    assert tokenizer.decode(token_ids[0], skip_special_tokens=True) == PROMPT


def test_t5_tokenizer_has_the_t5_layout() -> None:
    tokenizer = build_t5_tokenizer()
    assert tokenizer.convert_ids_to_tokens([0, 1, 2]) == ["<pad>", "</s>", "<unk>"]
    assert tokenizer.convert_ids_to_tokens([len(tokenizer) - 100, len(tokenizer) - 1]) == [
        "<extra_id_99>",
        "<extra_id_0>",
    ]


def test_tokenizers_reload_from_the_folder(flux_folders: dict[str, pathlib.Path]) -> None:
    folder = flux_folders["flux"]
    for subfolder, build_tokenizer in [("tokenizer", build_clip_tokenizer), ("tokenizer_2", build_t5_tokenizer)]:
        reloaded = AutoTokenizer.from_pretrained(folder / subfolder)
        assert type(reloaded) is type(build_tokenizer())
        assert reloaded(PROMPT).input_ids == build_tokenizer()(PROMPT).input_ids
