"""Tests of `easel.testing.hunyuanvideo15`: the tiny random-weight HunyuanVideo-1.5 folders, built offline."""

import json
import pathlib

import numpy as np
import pytest
from diffusers import HunyuanVideo15ImageToVideoPipeline, HunyuanVideo15Pipeline
from diffusers.utils import logging as diffusers_logging
from PIL import Image

from easel.testing.hunyuanvideo15 import (
    HUNYUANVIDEO15_BUILDERS,
    HUNYUANVIDEO15_GUIDANCE_SCALE,
    HUNYUANVIDEO15_PROMPT_TEMPLATE_START,
    load_hunyuanvideo15_reference,
)
from tests.parity import reference_images
from tests.tiny_builders import (
    MIN_CONDITIONING_EFFECT,
    NEGATIVE_PROMPT,
    OTHER_PROMPT,
    PROMPT,
    assert_other_weights,
    assert_same_weights,
)

NUM_FRAMES = 9  # 3 latent frames
# (height, width); for I2V the size of the input image, which the pipeline keeps (both are buckets of target size 64).
SIZES = [(64, 64), (48, 80)]
PIPELINES = {"hunyuanvideo-1.5": HunyuanVideo15Pipeline, "hunyuanvideo-1.5-i2v": HunyuanVideo15ImageToVideoPipeline}
IMAGE_KIND = "hunyuanvideo-1.5-i2v"
GLYPH_PROMPT = 'a sign that reads "HELLO"'


def _image(seed: int, height: int = 64, width: int = 64) -> Image.Image:
    return Image.fromarray((np.random.default_rng(seed).random((height, width, 3)) * 255).astype(np.uint8))


@pytest.fixture(scope="module", params=list(PIPELINES))
def built(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, pathlib.Path]:
    kind = request.param
    return kind, HUNYUANVIDEO15_BUILDERS[kind](tmp_path_factory.mktemp(kind) / kind, 0)


@pytest.fixture(scope="module")
def reference(built: tuple[str, pathlib.Path]):
    diffusers_logging.disable_progress_bar()
    pipeline = load_hunyuanvideo15_reference(built[1])
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def _generate(kind: str, pipeline, height: int, width: int, **call_kwargs) -> np.ndarray:
    request = {"negative_prompt": NEGATIVE_PROMPT, "num_frames": NUM_FRAMES, "num_inference_steps": 2}
    if "prompt_embeds" not in call_kwargs:
        request["prompt"] = PROMPT
    if kind == IMAGE_KIND:
        request["image"] = _image(0, height, width)
    else:
        request.update(height=height, width=width)
    return reference_images(pipeline, 0, **{**request, **call_kwargs})[0]


def test_folder_has_the_diffusers_layout(built: tuple[str, pathlib.Path]) -> None:
    kind, folder = built
    model_index = json.loads((folder / "model_index.json").read_text())
    assert model_index["_class_name"] == PIPELINES[kind].__name__
    assert model_index["text_encoder"] == ["transformers", "Qwen2_5_VLTextModel"]
    assert model_index["text_encoder_2"] == ["transformers", "T5EncoderModel"]
    assert model_index["tokenizer_2"] == ["transformers", "ByT5Tokenizer"]
    assert model_index["transformer"] == ["diffusers", "HunyuanVideo15Transformer3DModel"]
    assert model_index["vae"] == ["diffusers", "AutoencoderKLHunyuanVideo15"]
    assert model_index["scheduler"] == ["diffusers", "FlowMatchEulerDiscreteScheduler"]
    assert model_index["guider"] == ["diffusers", "ClassifierFreeGuidance"]
    assert not list(folder.rglob("*.bin")), "weights must be safetensors"
    assert sum(file.stat().st_size for file in folder.rglob("*") if file.is_file()) < 64 * 2**20

    scheduler = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
    assert scheduler["shift"] == 5.0 and not scheduler["use_dynamic_shifting"]
    guider = json.loads((folder / "guider" / "guider_config.json").read_text())
    assert guider["guidance_scale"] == HUNYUANVIDEO15_GUIDANCE_SCALE
    vae = json.loads((folder / "vae" / "config.json").read_text())
    assert (vae["latent_channels"], vae["spatial_compression_ratio"], vae["temporal_compression_ratio"]) == (32, 16, 4)
    assert vae["scaling_factor"] == 1.03682
    transformer = json.loads((folder / "transformer" / "config.json").read_text())
    assert (transformer["in_channels"], transformer["out_channels"]) == (65, 32)
    assert transformer["task_type"] == ("i2v" if kind == IMAGE_KIND else "t2v")
    text_encoder = json.loads((folder / "text_encoder" / "config.json").read_text())
    assert transformer["text_embed_dim"] == text_encoder["hidden_size"]
    assert (
        transformer["text_embed_2_dim"]
        == json.loads((folder / "text_encoder_2" / "config.json").read_text())["d_model"]
    )
    if kind == IMAGE_KIND:
        assert model_index["image_encoder"] == ["transformers", "SiglipVisionModel"]
        assert model_index["feature_extractor"] == ["transformers", "SiglipImageProcessor"]
        image_encoder = json.loads((folder / "image_encoder" / "config.json").read_text())
        assert transformer["image_embed_dim"] == image_encoder["hidden_size"]


def test_prompt_template_is_cut_where_the_pipeline_cuts_it(reference) -> None:
    # The pipeline drops the first 108 tokens: with the real vocabulary, exactly the system turn and the user header.
    messages = [{"role": "system", "content": reference.system_message}, {"role": "user", "content": PROMPT}]
    ids = reference.tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True, return_dict=True
    )["input_ids"]
    assert reference.prompt_template_encode_start_idx == HUNYUANVIDEO15_PROMPT_TEMPLATE_START
    start = HUNYUANVIDEO15_PROMPT_TEMPLATE_START
    system_turn = f"<|im_start|>system\n{reference.system_message}<|im_end|>\n<|im_start|>user\n"
    assert reference.tokenizer.decode(ids[:start]) == system_turn
    assert reference.tokenizer.decode(ids[start:]) == PROMPT + "<|im_end|>\n<|im_start|>assistant\n"


def test_runs_and_is_sensitive_to_its_conditioning(built: tuple[str, pathlib.Path], reference) -> None:
    kind = built[0]
    outputs = {}
    for height, width in SIZES:
        frames = outputs[height, width] = _generate(kind, reference, height, width)
        assert frames.shape == (NUM_FRAMES, height, width, 3)
        assert np.isfinite(frames).all()
        prompt_effect = np.abs(frames - _generate(kind, reference, height, width, prompt=OTHER_PROMPT)).max()
        print(f"{kind} {height}x{width}: prompt effect {prompt_effect:.4f}")
        assert prompt_effect >= MIN_CONDITIONING_EFFECT
        if kind == IMAGE_KIND:
            other_image = _generate(kind, reference, height, width, image=_image(1, height, width))
            image_effect = np.abs(frames - other_image).max()
            print(f"{kind} {height}x{width}: image effect {image_effect:.4f}")
            assert image_effect >= MIN_CONDITIONING_EFFECT

    # The glyph path alone: PROMPT's Qwen embeddings with the ByT5 embeddings of a quoted text instead of PROMPT's
    # (which has no quotes: 256 masked zero tokens).
    height, width = SIZES[0]
    embeds, mask, _, _ = reference.encode_prompt(PROMPT, device="cpu")
    _, _, glyph_embeds, glyph_mask = reference.encode_prompt(GLYPH_PROMPT, device="cpu")
    assert glyph_mask.sum() > 0
    with_glyphs = _generate(
        kind,
        reference,
        height,
        width,
        prompt_embeds=embeds,
        prompt_embeds_mask=mask,
        prompt_embeds_2=glyph_embeds,
        prompt_embeds_mask_2=glyph_mask,
    )
    glyph_effect = np.abs(outputs[height, width] - with_glyphs).max()
    print(f"{kind} {height}x{width}: glyph effect {glyph_effect:.4f}")
    assert glyph_effect >= MIN_CONDITIONING_EFFECT


def test_builds_deterministically(built: tuple[str, pathlib.Path], tmp_path: pathlib.Path) -> None:
    kind, folder = built
    assert_same_weights(folder, HUNYUANVIDEO15_BUILDERS[kind](tmp_path / "same", 0))
    assert_other_weights(folder, HUNYUANVIDEO15_BUILDERS[kind](tmp_path / "other", 1))
