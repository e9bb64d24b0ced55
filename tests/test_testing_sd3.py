"""Tests of `easel.testing.sd3`: the tiny random-weight StableDiffusion3Pipeline folder, built offline."""

import json
import pathlib

import numpy as np
import pytest
import torch
from diffusers import StableDiffusion3Pipeline
from safetensors.torch import load_file

from easel.configs.models.dits.sd3 import SD3DitConfig
from easel.configs.models.vaes.sd3 import SD3VAEConfig
from easel.runtime.models.dits.sd3 import SD3Transformer2DModel
from easel.testing.sd3 import SD3_BUILDERS, TINY_SD3_SKIP_GUIDANCE_LAYERS, build_sd3_pipeline
from easel.testing.tokenizers import build_clip_tokenizer, build_open_clip_tokenizer
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

# Skip-layer guidance only acts on steps i with start * steps < i < stop * steps (strict), so never on step 0, and
# with the default stop of 0.2 on no step below 6 steps. Tests set the stop to 1.0.
SKIP_LAYER_GUIDANCE = dict(skip_guidance_layers=TINY_SD3_SKIP_GUIDANCE_LAYERS, skip_layer_guidance_stop=1.0)
SIZES = [(64, 64), (48, 80)]


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    return SD3_BUILDERS["sd3"](tmp_path_factory.mktemp("sd3") / "sd3", 0)


@pytest.fixture(scope="module")
def pipeline(folder: pathlib.Path) -> StableDiffusion3Pipeline:
    return load_reference(StableDiffusion3Pipeline, folder)


def _generate(pipeline: StableDiffusion3Pipeline, height: int, width: int, **call_kwargs) -> np.ndarray:
    call_kwargs = {"prompt": PROMPT, "num_inference_steps": 2, "guidance_scale": 4.5, **call_kwargs}
    return reference_images(pipeline, 0, height=height, width=width, **call_kwargs)


def test_folder_has_the_diffusers_layout(folder: pathlib.Path, pipeline: StableDiffusion3Pipeline) -> None:
    model_index = json.loads((folder / "model_index.json").read_text())
    assert model_index["_class_name"] == "StableDiffusion3Pipeline"
    assert model_index["text_encoder"] == ["transformers", "CLIPTextModelWithProjection"]
    assert model_index["text_encoder_2"] == ["transformers", "CLIPTextModelWithProjection"]
    assert model_index["text_encoder_3"] == ["transformers", "T5EncoderModel"]
    assert model_index["transformer"] == ["diffusers", "SD3Transformer2DModel"]
    assert model_index["scheduler"] == ["diffusers", "FlowMatchEulerDiscreteScheduler"]
    assert model_index.get("image_encoder", [None, None]) == [None, None]
    assert not list(folder.rglob("*.bin")), "weights must be safetensors"

    # SD3.5-style transformer, so qk-norm and dual attention are covered.
    transformer = pipeline.transformer.config
    assert transformer.qk_norm == "rms_norm" and len(transformer.dual_attention_layers) > 0
    assert transformer.in_channels == transformer.out_channels == 16
    # SD3's schedule: a fixed shift of 3, no resolution-dependent mu.
    assert pipeline.scheduler.config.shift == 3.0 and not pipeline.scheduler.config.use_dynamic_shifting
    # SD3's VAE geometry and latent statistics, also as Easel's VAE config reads them.
    assert pipeline.vae_scale_factor == 8
    vae_config = SD3VAEConfig.from_dict(dict(pipeline.vae.config))
    assert vae_config == SD3VAEConfig(block_out_channels=vae_config.block_out_channels)
    assert vae_config.spatial_compression == 8

    # As in the real folders: CLIP-G's tokenizer pads with "!" (id 0), CLIP-L's with its end token; the two CLIP
    # widths differ and together are narrower than T5, so the CLIP embeddings are zero-padded up to T5's width.
    assert pipeline.tokenizer.pad_token_id == pipeline.tokenizer.eos_token_id
    assert pipeline.tokenizer_2.pad_token_id == 0
    clip_l, clip_g = pipeline.text_encoder.config, pipeline.text_encoder_2.config
    assert clip_l.hidden_size != clip_g.hidden_size
    assert clip_l.hidden_size + clip_g.hidden_size < pipeline.text_encoder_3.config.d_model
    assert transformer.joint_attention_dim == pipeline.text_encoder_3.config.d_model
    assert transformer.pooled_projection_dim == clip_l.projection_dim + clip_g.projection_dim


@pytest.mark.parametrize(("height", "width"), SIZES)
def test_generates_and_follows_every_text_input(pipeline: StableDiffusion3Pipeline, height: int, width: int) -> None:
    image = _generate(pipeline, height, width)
    assert image.shape == (1, height, width, 3)
    assert np.isfinite(image).all() and 0.0 <= image.min() and image.max() <= 1.0
    assert image.std() > 0.05, "a degenerate (flat) image cannot show a difference"

    changes = {
        "prompt": _generate(pipeline, height, width, prompt=OTHER_PROMPT),
        "T5 prompt only": _generate(pipeline, height, width, prompt_3=OTHER_PROMPT),
        "CLIP-G prompt only": _generate(pipeline, height, width, prompt_2=OTHER_PROMPT),
        "negative prompt": _generate(pipeline, height, width, negative_prompt=NEGATIVE_PROMPT),
    }
    for what, changed in changes.items():
        assert np.abs(changed - image).max() >= MIN_CONDITIONING_EFFECT, f"changing the {what} barely matters"


@pytest.mark.parametrize(("height", "width"), SIZES)
def test_skip_layer_guidance_runs_and_follows_the_prompt(
    pipeline: StableDiffusion3Pipeline, height: int, width: int
) -> None:
    image = _generate(pipeline, height, width, **SKIP_LAYER_GUIDANCE)
    other = _generate(pipeline, height, width, prompt=OTHER_PROMPT, **SKIP_LAYER_GUIDANCE)
    assert np.abs(other - image).max() >= MIN_CONDITIONING_EFFECT

    # With 2 steps it acts only on the last, whose step size (sigma 0.009 -> 0) is tiny: measurable, not large.
    assert np.abs(image - _generate(pipeline, height, width)).max() >= 1e-3
    # From 3 steps on it acts on a step that matters.
    three_steps = dict(num_inference_steps=3)
    with_slg = _generate(pipeline, height, width, **three_steps, **SKIP_LAYER_GUIDANCE)
    assert np.abs(with_slg - _generate(pipeline, height, width, **three_steps)).max() >= MIN_CONDITIONING_EFFECT


def test_our_dit_loads_the_folder_and_matches_diffusers(
    folder: pathlib.Path, pipeline: StableDiffusion3Pipeline
) -> None:
    config = SD3DitConfig.from_dict(json.loads((folder / "transformer" / "config.json").read_text()))
    with torch.device("meta"):
        ours = SD3Transformer2DModel(config)
    ours.load_state_dict(
        load_file(folder / "transformer" / "diffusion_pytorch_model.safetensors"), strict=True, assign=True
    )

    generator = torch.Generator().manual_seed(0)
    inputs = dict(
        hidden_states=torch.randn(2, 16, 6, 10, generator=generator),
        encoder_hidden_states=torch.randn(2, 77 + 256, config.joint_attention_dim, generator=generator),
        pooled_projections=torch.randn(2, config.pooled_projection_dim, generator=generator),
        timestep=torch.tensor([1000.0, 8.9]),
        skip_layers=TINY_SD3_SKIP_GUIDANCE_LAYERS,
    )
    with torch.no_grad():
        expected = pipeline.transformer(**inputs, return_dict=False)[0]
        actual = ours.eval()(**inputs)
    assert (actual - expected).abs().max().item() <= 1e-5


def test_build_is_deterministic(tmp_path: pathlib.Path, folder: pathlib.Path) -> None:
    again = build_sd3_pipeline(tmp_path / "again", seed=0)
    other_seed = build_sd3_pipeline(tmp_path / "other", seed=1)

    assert_same_weights(folder, again)
    for file in sorted(folder.rglob("*")):
        if file.is_file() and file.suffix != ".safetensors":
            assert (again / file.relative_to(folder)).read_bytes() == file.read_bytes(), file.name

    assert_other_weights(folder, other_seed)


def test_open_clip_tokenizer_differs_from_clip_only_in_padding() -> None:
    clip, open_clip = build_clip_tokenizer(), build_open_clip_tokenizer()
    assert clip.get_vocab() == open_clip.get_vocab()
    unpadded = clip(PROMPT).input_ids
    assert open_clip(PROMPT).input_ids == unpadded
    padded = open_clip(PROMPT, padding="max_length", max_length=len(unpadded) + 3).input_ids
    assert padded == unpadded + [0, 0, 0]
    assert clip(PROMPT, padding="max_length", max_length=len(unpadded) + 3).input_ids[-1] == clip.eos_token_id
