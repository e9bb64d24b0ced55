"""Tests of `easel.testing.wan`: the tiny random-weight Wan2.1 / Wan2.2 pipeline folders, built offline."""

import json
import pathlib

import numpy as np
import pytest
import torch
from diffusers import WanImageToVideoPipeline, WanPipeline
from PIL import Image

from easel.configs.models.dits.wanvideo import WanDitConfig
from easel.configs.models.vaes.wanvideo import WanVAEConfig
from easel.runtime.models.dits.wanvideo import WanTransformer3DModel
from easel.testing.wan import WAN22_A14B_BOUNDARY_RATIO, WAN_BUILDERS
from tests.parity import reference_images
from tests.tiny_builders import (
    MIN_CONDITIONING_EFFECT,
    NEGATIVE_PROMPT,
    OTHER_PROMPT,
    PROMPT,
    assert_other_weights,
    assert_same_weights,
    load_reference,
    safetensors_tensors,
)

NUM_FRAMES = 9
# Non-square sizes that are multiples of 16 (8x VAE, 2x2 patches) or 32 (Wan2.2's 16x VAE).
SIZES = {
    "wan-t2v": (48, 80),
    "wan-i2v": (48, 80),
    "wan2.2-i2v-a14b": (48, 80),
    "wan2.2-a14b": (48, 80),
    "wan2.2-ti2v": (32, 64),
}
PIPELINES = {
    "wan-t2v": WanPipeline,
    "wan-i2v": WanImageToVideoPipeline,
    "wan2.2-i2v-a14b": WanImageToVideoPipeline,
    "wan2.2-a14b": WanPipeline,
    "wan2.2-ti2v": WanPipeline,
}
IMAGE_KINDS = ("wan-i2v", "wan2.2-i2v-a14b")
TWO_EXPERT_KINDS = ("wan2.2-a14b", "wan2.2-i2v-a14b")


def _image(seed: int) -> Image.Image:
    return Image.fromarray((np.random.default_rng(seed).random((64, 64, 3)) * 255).astype(np.uint8))


@pytest.fixture(scope="module", params=list(PIPELINES))
def built(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, pathlib.Path]:
    kind = request.param
    return kind, WAN_BUILDERS[kind](tmp_path_factory.mktemp(kind) / kind, 0)


def _generate(pipeline, height: int, width: int, **call_kwargs) -> np.ndarray:
    call_kwargs = {"prompt": PROMPT, "negative_prompt": NEGATIVE_PROMPT, "guidance_scale": 5.0, **call_kwargs}
    request = {"height": height, "width": width, "num_frames": NUM_FRAMES, "num_inference_steps": 2, **call_kwargs}
    return reference_images(pipeline, 0, **request)[0]


def test_folder_has_the_diffusers_layout(built: tuple[str, pathlib.Path]) -> None:
    kind, folder = built
    model_index = json.loads((folder / "model_index.json").read_text())
    assert model_index["_class_name"] == PIPELINES[kind].__name__
    assert model_index["text_encoder"] == ["transformers", "UMT5EncoderModel"]
    assert model_index["transformer"] == ["diffusers", "WanTransformer3DModel"]
    assert model_index["scheduler"] == ["diffusers", "UniPCMultistepScheduler"]
    assert not list(folder.rglob("*.bin")), "weights must be safetensors"
    scheduler = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
    assert scheduler["use_flow_sigmas"] and scheduler["prediction_type"] == "flow_prediction"
    vae = WanVAEConfig.from_dict(json.loads((folder / "vae" / "config.json").read_text()))
    assert vae.temporal_compression == 4

    if kind in TWO_EXPERT_KINDS:
        assert model_index["transformer_2"] == ["diffusers", "WanTransformer3DModel"]
        assert model_index["boundary_ratio"] == WAN22_A14B_BOUNDARY_RATIO
    if kind == "wan2.2-ti2v":
        assert model_index["expand_timesteps"] is True
        assert vae.latent_channels == 48 and vae.spatial_compression == 16
    else:
        assert vae.latent_channels == 16 and vae.spatial_compression == 8
    if kind == "wan-i2v":
        assert model_index["image_encoder"] == ["transformers", "CLIPVisionModel"]
        assert model_index["image_processor"][1].startswith("CLIPImageProcessor")

    # Easel's DiT loads each transformer unchanged.
    for name in ("transformer", "transformer_2"):
        if model_index.get(name, [None])[0] is None:
            continue
        config = WanDitConfig.from_dict(json.loads((folder / name / "config.json").read_text()))
        with torch.device("meta"):
            ours = WanTransformer3DModel(config)
        tensors = {key.split(":", 1)[1]: value for key, value in safetensors_tensors(folder / name).items()}
        ours.load_state_dict(tensors, strict=True, assign=True)


def test_runs_and_is_sensitive_to_its_conditioning(built: tuple[str, pathlib.Path]) -> None:
    kind, folder = built
    pipeline = load_reference(PIPELINES[kind], folder)
    image_kwargs = {"image": _image(0)} if kind in IMAGE_KINDS else {}
    for height, width in [(64, 64), SIZES[kind]]:
        frames = _generate(pipeline, height, width, **image_kwargs)
        assert frames.shape == (NUM_FRAMES, height, width, 3)
        assert np.isfinite(frames).all()
        other_prompt = _generate(pipeline, height, width, **image_kwargs, prompt=OTHER_PROMPT)
        effect = np.abs(frames - other_prompt).max()
        print(f"{kind} {height}x{width}: prompt effect {effect:.4f}")
        assert effect >= MIN_CONDITIONING_EFFECT
        if kind in IMAGE_KINDS:
            other_image = _generate(pipeline, height, width, image=_image(1))
            image_effect = np.abs(frames - other_image).max()
            print(f"{kind} {height}x{width}: image effect {image_effect:.4f}")
            assert image_effect >= MIN_CONDITIONING_EFFECT


def test_ti2v_folder_runs_as_image_to_video(tmp_path: pathlib.Path) -> None:
    # As the real Wan2.2-TI2V-5B folder: the same folder conditions on a first frame in WanImageToVideoPipeline.
    pipeline = load_reference(WanImageToVideoPipeline, WAN_BUILDERS["wan2.2-ti2v"](tmp_path / "ti2v", 0))
    frames = _generate(pipeline, 64, 64, image=_image(0))
    other_image = _generate(pipeline, 64, 64, image=_image(1))
    other_prompt = _generate(pipeline, 64, 64, image=_image(0), prompt=OTHER_PROMPT)
    assert np.abs(frames - other_image).max() >= MIN_CONDITIONING_EFFECT
    assert np.abs(frames - other_prompt).max() >= MIN_CONDITIONING_EFFECT


def test_a14b_uses_both_experts(tmp_path: pathlib.Path) -> None:
    pipeline = load_reference(WanPipeline, WAN_BUILDERS["wan2.2-a14b"](tmp_path / "a14b", 0))
    pipeline.scheduler.set_timesteps(2)
    boundary = WAN22_A14B_BOUNDARY_RATIO * pipeline.scheduler.config.num_train_timesteps
    timesteps = pipeline.scheduler.timesteps.tolist()
    assert timesteps[0] >= boundary > timesteps[1], timesteps


def test_builds_deterministically(built: tuple[str, pathlib.Path], tmp_path: pathlib.Path) -> None:
    kind, folder = built
    assert_same_weights(folder, WAN_BUILDERS[kind](tmp_path / "same", 0))
    assert_other_weights(folder, WAN_BUILDERS[kind](tmp_path / "other", 1))


@pytest.mark.parametrize(
    ("kind", "pipeline", "transformer"),
    [
        ("fastwan", "WanDMDPipeline", "WanTransformer3DModel"),
        ("wan-causal", "WanCausalDMDPipeline", "CausalWanTransformer3DModel"),
    ],
)
def test_fastvideo_folders_are_wan_folders_under_their_class_names(tmp_path, kind, pipeline, transformer) -> None:
    """FastVideo's DMD and self-forcing folders: Wan2.1-T2V's components and weights, under other class names."""
    folder, wan = WAN_BUILDERS[kind](tmp_path / kind, 0), WAN_BUILDERS["wan-t2v"](tmp_path / "wan", 0)
    model_index = json.loads((folder / "model_index.json").read_text())
    assert model_index["_class_name"] == pipeline and model_index["transformer"] == ["diffusers", transformer]
    assert json.loads((folder / "transformer" / "config.json").read_text())["_class_name"] == transformer
    ours, wans = safetensors_tensors(folder / "transformer"), safetensors_tensors(wan / "transformer")
    assert ours.keys() == wans.keys() and all(torch.equal(ours[key], wans[key]) for key in ours)
