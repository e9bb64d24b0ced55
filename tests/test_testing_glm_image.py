"""Tests of `easel.testing.glm_image`: a tiny random-weight GlmImagePipeline folder built offline."""

import json
import pathlib

import numpy as np
import pytest
import torch
from diffusers import GlmImagePipeline
from transformers.models.glm_image.image_processing_pil_glm_image import GlmImageImageProcessorPil

from easel.testing.glm_image import (
    GLM_IMAGE_BUILDERS,
    GLM_IMAGE_LATENTS_MEAN,
    GLM_IMAGE_LATENTS_STD,
    IMAGE_END_TOKEN_ID,
    IMAGE_START_TOKEN_ID,
    TINY_CODEBOOK_SIZE,
    build_glm_image_pipeline,
    patch_image_to_image,
)
from tests.parity import input_image, mirrored, reference_images
from tests.tiny_builders import (
    MIN_CONDITIONING_EFFECT,
    OTHER_PROMPT,
    PROMPT,
    assert_other_weights,
    assert_same_weights,
    load_reference,
)

# Condition images must have sides that are multiples of 32 (see GLM_IMAGE_PREPROCESSOR_CONFIG).
CONDITION_HEIGHT, CONDITION_WIDTH = 64, 96


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    return GLM_IMAGE_BUILDERS["glm-image"](tmp_path_factory.mktemp("glm-image"), 0)


@pytest.fixture(scope="module")
def pipeline(folder: pathlib.Path) -> GlmImagePipeline:
    return patch_image_to_image(load_reference(GlmImagePipeline, folder))


def _generate(pipeline: GlmImagePipeline, prompt: str, height: int, width: int, **kwargs) -> np.ndarray:
    return reference_images(pipeline, 0, prompt=prompt, height=height, width=width, num_inference_steps=2, **kwargs)


def _prior_tokens(pipeline: GlmImagePipeline, prompt: str, height: int, width: int, generator, **kwargs):
    return pipeline.generate_prior_tokens(
        prompt, height, width, generator=generator, device=torch.device("cpu"), **kwargs
    )


def test_folder_has_the_diffusers_layout(folder: pathlib.Path, pipeline: GlmImagePipeline) -> None:
    model_index = json.loads((folder / "model_index.json").read_text())
    assert model_index["_class_name"] == "GlmImagePipeline"
    assert model_index["vision_language_encoder"] == ["transformers", "GlmImageForConditionalGeneration"]
    assert model_index["processor"] == ["transformers", "GlmImageProcessor"]
    assert model_index["text_encoder"] == ["transformers", "T5EncoderModel"]
    assert model_index["tokenizer"] == ["transformers", "ByT5Tokenizer"]
    assert model_index["transformer"] == ["diffusers", "GlmImageTransformer2DModel"]
    assert model_index["vae"] == ["diffusers", "AutoencoderKL"]
    assert model_index["scheduler"] == ["diffusers", "FlowMatchEulerDiscreteScheduler"]
    assert not list(folder.rglob("*.bin")), "weights must be safetensors"
    assert sum(file.stat().st_size for file in folder.rglob("*") if file.is_file()) < 4_000_000

    # Scheduler: dynamic, linear time shift, the pipeline's mu = 0.75 * sqrt(seq / 256) + 0.25.
    scheduler = pipeline.scheduler.config
    assert scheduler.use_dynamic_shifting and scheduler.time_shift_type == "linear"
    assert (scheduler.base_shift, scheduler.max_shift, scheduler.base_image_seq_len) == (0.25, 0.75, 256)
    # VAE: 8x, 16 channels, normalized by GLM-Image's per-channel statistics.
    assert pipeline.vae_scale_factor == 8
    assert pipeline.vae.config.latent_channels == pipeline.transformer.config.in_channels == 16
    assert tuple(pipeline.vae.config.latents_mean) == GLM_IMAGE_LATENTS_MEAN
    assert tuple(pipeline.vae.config.latents_std) == GLM_IMAGE_LATENTS_STD
    # One codebook everywhere: AR vision vocabulary, VQ codebook, DiT prior embedding.
    ar = pipeline.vision_language_encoder.config
    assert ar.text_config.vision_vocab_size == ar.vq_config.num_embeddings == TINY_CODEBOOK_SIZE
    assert pipeline.transformer.config.prior_vq_quantizer_codebook_size == TINY_CODEBOOK_SIZE
    assert pipeline.transformer.config.text_embed_dim == pipeline.text_encoder.config.d_model
    assert pipeline.text_encoder.config.vocab_size == len(pipeline.tokenizer) == 384  # ByT5: 3 specials, 256, 125
    # 32 pixels per AR token: 16-pixel vision patches of the half-size image, DiT tokens of 16 pixels.
    assert ar.vision_config.patch_size == 16 and ar.vision_config.spatial_merge_size == 1
    assert pipeline.vae_scale_factor * pipeline.transformer.config.patch_size == 16
    generation = pipeline.vision_language_encoder.generation_config
    assert generation.do_sample and (generation.temperature, generation.top_p) == (0.9, 0.75)
    assert generation.eos_token_id == IMAGE_END_TOKEN_ID


def test_processor_builds_the_ar_prompt(pipeline: GlmImagePipeline) -> None:
    processor = pipeline.processor  # loaded from the folder's processor/
    assert isinstance(processor.image_processor, GlmImageImageProcessorPil)
    tokenizer = processor.tokenizer
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id) == (IMAGE_START_TOKEN_ID, IMAGE_END_TOKEN_ID)
    assert (tokenizer.image_token, tokenizer.grid_bos_token, tokenizer.grid_eos_token) == (
        "<|image|>",
        "<sop>",
        "<eop>",
    )
    ar = pipeline.vision_language_encoder.config
    assert tokenizer.convert_tokens_to_ids("<|image|>") == ar.image_token_id == len(tokenizer) - 1
    assert (ar.image_start_token_id, ar.image_end_token_id) == (IMAGE_START_TOKEN_ID, IMAGE_END_TOKEN_ID)
    # GLM-4's special tokens keep their real offsets (<|endoftext|> 167841, <sop> 167845, <|image|> 167855).
    endoftext = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    assert ar.text_config.pad_token_id == endoftext
    assert tokenizer.convert_tokens_to_ids(["<sop>", "<eop>", "<|image|>"]) == [
        endoftext + 4,
        endoftext + 5,
        endoftext + 14,
    ]

    # Text to image (64x96): the target grid 2x3 and the preview grid int(sqrt(2/3)*16) x int(sqrt(3/2)*16).
    messages = [[{"role": "user", "content": [{"type": "text", "text": OTHER_PROMPT}]}]]
    inputs = processor.apply_chat_template(
        messages, tokenize=True, target_h=64, target_w=96, return_dict=True, return_tensors="pt"
    )
    text = tokenizer.decode(inputs["input_ids"][0])
    assert text == "a cat<sop>2 3<eop><sop>13 19<eop><|dit_token_128|>"
    assert inputs["image_grid_thw"].tolist() == [[1, 2, 3], [1, 13, 19]]
    assert inputs["images_per_sample"].tolist() == [2]

    # Image to image: the condition image between image start and end, one <|image|> per 32x32 pixels of it.
    image = input_image(CONDITION_HEIGHT, CONDITION_WIDTH)
    messages = [[{"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": "a cat"}]}]]
    inputs = processor.apply_chat_template(
        messages, tokenize=True, target_h=64, target_w=64, return_dict=True, return_tensors="pt"
    )
    ids = inputs["input_ids"][0].tolist()
    assert ids[:1] + ids[7:8] == [IMAGE_START_TOKEN_ID, IMAGE_END_TOKEN_ID]
    assert ids[1:7] == [ar.image_token_id] * 6
    assert tokenizer.decode(ids[8:]) == "a cat<sop>2 2<eop><|dit_token_128|>"
    assert inputs["image_grid_thw"].tolist() == [[1, 2, 3], [1, 2, 2]]
    assert inputs["pixel_values"].shape == (6, 3 * 16 * 16)


@pytest.mark.parametrize(
    ("height", "width", "guidance_scale"), [(64, 64, 1.0), (64, 96, 1.5)], ids=["64x64", "64x96-cfg"]
)
def test_runs_and_depends_on_the_prompt(
    pipeline: GlmImagePipeline, height: int, width: int, guidance_scale: float
) -> None:
    # CFG runs when guidance_scale > 1 (1.5 is the default): the unconditional pass drops the prior tokens and
    # embeds "" as glyph text.
    image = _generate(pipeline, PROMPT, height, width, guidance_scale=guidance_scale)
    assert image.shape == (1, height, width, 3)
    assert np.isfinite(image).all() and image.std() > 0.05
    np.testing.assert_array_equal(_generate(pipeline, PROMPT, height, width, guidance_scale=guidance_scale), image)
    other = _generate(pipeline, OTHER_PROMPT, height, width, guidance_scale=guidance_scale)
    assert np.abs(other - image).max() >= MIN_CONDITIONING_EFFECT


def test_prior_tokens_are_seeded_through_torchs_global_generator(pipeline: GlmImagePipeline) -> None:
    height, width = 64, 96
    tokens, image_tokens, grids = _prior_tokens(pipeline, PROMPT, height, width, torch.Generator("cpu").manual_seed(0))
    # The 2x3 target grid, 2x-upsampled (nearest) to the DiT's 4x6 token grid, every id a codebook entry.
    assert tokens.shape == (1, (2 * height // 32) * (2 * width // 32))
    assert image_tokens is None and grids is None
    assert 0 <= int(tokens.min()) and int(tokens.max()) < TINY_CODEBOOK_SIZE
    grid = tokens.view(4, 6)
    assert torch.equal(grid, grid[::2, ::2].repeat_interleave(2, 0).repeat_interleave(2, 1))
    # The pipeline calls torch.manual_seed(generator.initial_seed()) before sampling: same as seeding torch itself.
    again, _, _ = _prior_tokens(pipeline, PROMPT, height, width, torch.Generator("cpu").manual_seed(0))
    assert torch.equal(again, tokens)
    torch.manual_seed(0)
    assert torch.equal(_prior_tokens(pipeline, PROMPT, height, width, None)[0], tokens)
    other_seed, _, _ = _prior_tokens(pipeline, PROMPT, height, width, torch.Generator("cpu").manual_seed(1))
    assert not torch.equal(other_seed, tokens)


def test_quoted_text_reaches_the_transformer(pipeline: GlmImagePipeline) -> None:
    # Only quoted text is embedded by the glyph encoder; the prior tokens are fixed to isolate that path.
    assert pipeline.get_glyph_texts("a sign saying \"hello\" and 'world'") == [["world", "hello"]]
    prior, _, _ = _prior_tokens(pipeline, PROMPT, 64, 96, torch.Generator("cpu").manual_seed(0))
    hello = _generate(pipeline, 'a sign saying "hello"', 64, 96, prior_token_ids=prior)
    world = _generate(pipeline, 'a sign saying "world"', 64, 96, prior_token_ids=prior)
    assert np.abs(hello - world).max() >= MIN_CONDITIONING_EFFECT


def test_image_to_image_runs_and_depends_on_the_image(pipeline: GlmImagePipeline) -> None:
    condition = input_image(CONDITION_HEIGHT, CONDITION_WIDTH)
    image = _generate(pipeline, PROMPT, 64, 64, image=[condition])
    assert image.shape == (1, 64, 64, 3)
    assert np.isfinite(image).all() and image.std() > 0.05
    np.testing.assert_array_equal(_generate(pipeline, PROMPT, 64, 64, image=[condition]), image)
    other = _generate(pipeline, PROMPT, 64, 64, image=[mirrored(condition)])
    assert np.abs(other - image).max() >= MIN_CONDITIONING_EFFECT
    assert np.abs(_generate(pipeline, PROMPT, 64, 64) - image).max() >= MIN_CONDITIONING_EFFECT

    # The condition image's VAE latents alone (written to the DiT's KV cache) move the output too.
    prior, image_prior, grids = _prior_tokens(
        pipeline, PROMPT, 64, 64, torch.Generator("cpu").manual_seed(0), image=[[condition]]
    )
    assert prior.shape == (1, 16) and [ids.shape for ids in image_prior] == [(4 * 6,)]
    assert [grid.tolist() for grid in grids] == [[[1, 4, 6]]]
    fixed = dict(prior_token_ids=prior, prior_token_image_ids=image_prior, source_image_grid_thw=grids)
    with_condition = _generate(pipeline, PROMPT, 64, 64, image=[condition], **fixed)
    with_mirrored = _generate(pipeline, PROMPT, 64, 64, image=[mirrored(condition)], **fixed)
    assert np.abs(with_condition - with_mirrored).max() >= MIN_CONDITIONING_EFFECT


def test_build_is_deterministic_and_seeded(folder: pathlib.Path, tmp_path: pathlib.Path) -> None:
    again = build_glm_image_pipeline(tmp_path / "again", seed=0)
    assert_same_weights(folder, again)
    for name in ("processor/tokenizer.json", "processor/chat_template.jinja", "model_index.json"):
        assert (again / name).read_bytes() == (folder / name).read_bytes()

    assert_other_weights(folder, build_glm_image_pipeline(tmp_path / "other", seed=1))
