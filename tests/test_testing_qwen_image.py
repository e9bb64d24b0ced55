"""Tests of the tiny Qwen-Image folders of `easel.testing.qwen_image`: layout, tokenizer, Diffusers runs, effects."""

import contextlib
import hashlib
import json
import pathlib

import numpy as np
import pytest
import torch
from diffusers.utils import logging as diffusers_logging
from PIL import Image
from safetensors.torch import load_file
from transformers import Qwen2Tokenizer

from easel.configs.models.dits.qwen_image import QwenImageDitConfig
from easel.configs.models.vaes.qwen_image import QWEN_IMAGE_LATENTS_MEAN, QwenImageVAEConfig
from easel.runtime.models.dits.qwen_image import QwenImageTransformer2DModel
from easel.testing.qwen_image import (
    QWEN_IMAGE_BUILDERS,
    QWEN_PROCESSOR_MAX_PIXELS,
    load_qwen_image_reference,
    load_qwen_processor,
)
from easel.testing.qwen_tokenizer import build_qwen2_5_vl_tokenizer

KINDS = list(QWEN_IMAGE_BUILDERS)
EDIT_KINDS = ["qwen-image-edit", "qwen-image-edit-plus"]
PROMPT = "a red circle on a blue background"
OTHER_PROMPT = "a small green square on the left"
NEGATIVE_PROMPT = "blurry, low quality"
# Downstream parity tests compare at 1e-4 and need a prompt (or input image) change to move pixels by 10x that;
# ask for 100x.
MIN_CONDITIONING_EFFECT = 1e-2

# The sizes each kind runs at. Every edit run encodes its reference image at about 1024x1024 (~1.5 s on one CPU
# thread), so each edit kind runs at one size; the layered pipeline derives its size from the input image.
RUN_SIZES = {
    "qwen-image": [(64, 64), (48, 80)],
    "qwen-image-edit": [(64, 64)],
    "qwen-image-edit-plus": [(48, 80)],
    "qwen-image-layered": [None],
}


def _input_image(seed: int = 0) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, size=(48, 64, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, pathlib.Path]:
    return {kind: QWEN_IMAGE_BUILDERS[kind](tmp_path_factory.mktemp(kind) / kind) for kind in KINDS}


@pytest.fixture(scope="module")
def tokenizer(folders: dict[str, pathlib.Path]) -> Qwen2Tokenizer:
    """The tokenizer every folder ships (the same files, checked by the layout test); loading one takes ~1 s."""
    return Qwen2Tokenizer.from_pretrained(folders["qwen-image"] / "tokenizer")


@pytest.fixture(scope="module")
def pipelines(folders: dict[str, pathlib.Path], tokenizer: Qwen2Tokenizer):
    """`pipelines(kind)`: the Diffusers pipeline of that folder, loaded on first use."""
    diffusers_logging.disable_progress_bar()
    loaded = {}

    def get(kind: str):
        if kind not in loaded:
            loaded[kind] = load_qwen_image_reference(kind, folders[kind], tokenizer=tokenizer)
            loaded[kind].set_progress_bar_config(disable=True)
        return loaded[kind]

    return get


# (VAE weights, image) -> encoding, shared by the module's pipelines (the edit kinds have the same VAE weights).
_ENCODED: dict[tuple[str, str], object] = {}


def _fingerprint(*tensors: torch.Tensor) -> str:
    digest = hashlib.sha256()
    for tensor in tensors:
        digest.update(str((tuple(tensor.shape), tensor.dtype)).encode())
        digest.update(tensor.detach().contiguous().numpy().tobytes())
    return digest.hexdigest()


@contextlib.contextmanager
def _encoding_each_image_once(pipeline):
    """Reuse the VAE encoding of an image already encoded by the same weights: the pipelines take the latents' mode,
    a deterministic function of the image. The edit pipelines encode every reference at about 1024x1024, ~1.5 s
    each on one thread, which would otherwise be most of this module's time."""
    encode = pipeline.vae.encode
    weights = _fingerprint(*pipeline.vae.state_dict().values())

    def encode_once(sample: torch.Tensor, *args, **kwargs):
        key = (weights, _fingerprint(sample))
        if key not in _ENCODED:
            _ENCODED[key] = encode(sample, *args, **kwargs)
        return _ENCODED[key]

    pipeline.vae.encode = encode_once
    try:
        yield
    finally:
        del pipeline.vae.encode  # back to the class's method


def _generate(kind: str, pipeline, prompt: str, size: tuple[int, int] | None, image: Image.Image) -> np.ndarray:
    kwargs = dict(
        prompt=prompt,
        negative_prompt=NEGATIVE_PROMPT,
        true_cfg_scale=4.0,
        num_inference_steps=2,
        generator=torch.Generator("cpu").manual_seed(0),
        output_type="np",
    )
    if kind == "qwen-image-layered":
        images = pipeline(image=image.convert("RGBA"), layers=1, resolution=640, **kwargs).images
        return np.stack(images)  # (batch, layers, H, W, 4)
    if kind != "qwen-image":
        kwargs["image"] = image
    height, width = size
    return pipeline(height=height, width=width, **kwargs).images


def test_tokenizer_is_the_real_qwen2_5_vl_vocabulary() -> None:
    # Built here, the vocabulary is cached for the folders the other tests build.
    tokenizer = build_qwen2_5_vl_tokenizer()
    assert len(tokenizer) == 151665
    assert tokenizer("Hello, world!").input_ids == [9707, 11, 1879, 0]
    assert tokenizer.convert_tokens_to_ids(["<|endoftext|>", "<|im_start|>", "<|im_end|>"]) == [151643, 151644, 151645]
    assert tokenizer.convert_tokens_to_ids(["<|vision_start|>", "<|image_pad|>", "<|file_sep|>"]) == [
        151652,
        151655,
        151664,
    ]
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token == "<|endoftext|>"


@pytest.mark.parametrize("kind", ["qwen-image", "qwen-image-edit"])
def test_prompt_templates_drop_exactly_their_preamble(pipelines, kind: str) -> None:
    # Diffusers drops the first `prompt_template_encode_start_idx` tokens (34, 64), counted on the real vocabulary:
    # the kept hidden states must start at the user turn's content.
    pipeline = pipelines(kind)
    ids = pipeline.tokenizer(pipeline.prompt_template_encode.format(PROMPT)).input_ids
    kept = pipeline.tokenizer.decode(ids[pipeline.prompt_template_encode_start_idx :])
    expected_start = PROMPT if kind == "qwen-image" else "<|vision_start|><|image_pad|><|vision_end|>" + PROMPT
    assert kept.startswith(expected_start)
    assert pipeline.tokenizer.decode(ids[pipeline.prompt_template_encode_start_idx - 1]) == "\n"


def test_processor_tokenizes_images_like_qwen2_vl(folders: dict[str, pathlib.Path], tokenizer: Qwen2Tokenizer) -> None:
    # processor/ holds the tokenizer/ files (checked by the layout test): reuse the loaded tokenizer.
    processor = load_qwen_processor(folders["qwen-image-edit"] / "processor", tokenizer=tokenizer)
    inputs = processor(text=["<|vision_start|><|image_pad|><|vision_end|>a cat"], images=[_input_image()])
    # 48x64 rounds to 56x56 (multiples of 28): 4x4 patches of 14, merged 2x2 into 4 image tokens.
    assert inputs["image_grid_thw"].tolist() == [[1, 4, 4]]
    assert inputs["input_ids"][0].count(processor.image_token_id) == 4


@pytest.mark.parametrize("kind", KINDS)
def test_folder_has_the_diffusers_layout(
    folders: dict[str, pathlib.Path], tokenizer: Qwen2Tokenizer, kind: str
) -> None:
    folder = folders[kind]
    model_index = json.loads((folder / "model_index.json").read_text())
    assert model_index["text_encoder"] == ["transformers", "Qwen2_5_VLForConditionalGeneration"]
    assert model_index["tokenizer"] == ["transformers", "Qwen2Tokenizer"]
    assert model_index["transformer"] == ["diffusers", "QwenImageTransformer2DModel"]
    assert model_index["vae"] == ["diffusers", "AutoencoderKLQwenImage"]
    assert not list(folder.rglob("*.bin")), "weights must be safetensors"
    if kind == "qwen-image":
        assert "processor" not in model_index
    else:
        assert model_index["processor"] == ["transformers", "Qwen2VLProcessor"]
        # The processor's tokenizer is the pipeline's (Qwen-Image-Edit ships the same files twice).
        for name in ("tokenizer.json", "tokenizer_config.json"):
            assert (folder / "processor" / name).read_bytes() == (folder / "tokenizer" / name).read_bytes()
        processor = load_qwen_processor(folder / "processor", tokenizer=tokenizer)
        assert processor.image_processor.size["longest_edge"] == QWEN_PROCESSOR_MAX_PIXELS
        assert processor.image_token_id == 151655
    # Every kind ships the same tokenizer (the pipelines fixture loads it once).
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shared = folders["qwen-image"] / "tokenizer" / name
        assert (folder / "tokenizer" / name).read_bytes() == shared.read_bytes()

    vae_config = QwenImageVAEConfig.from_dict(json.loads((folder / "vae" / "config.json").read_text()))
    assert vae_config.spatial_compression == 8 and vae_config.latent_channels == 16
    assert vae_config.latents_mean == QWEN_IMAGE_LATENTS_MEAN
    assert vae_config.input_channels == (4 if kind == "qwen-image-layered" else 3)

    # Our DiT builds from the folder's config.json and takes its checkpoint as it is.
    dit_config = QwenImageDitConfig.from_dict(json.loads((folder / "transformer" / "config.json").read_text()))
    is_layered = kind == "qwen-image-layered"
    assert dit_config.use_layer3d_rope is is_layered and dit_config.use_additional_t_cond is is_layered
    assert not dit_config.zero_cond_t and dit_config.in_channels == 64 and dit_config.out_channels == 16
    with torch.device("meta"):
        dit = QwenImageTransformer2DModel(dit_config)
    dit.load_state_dict(
        load_file(folder / "transformer" / "diffusion_pytorch_model.safetensors"), strict=True, assign=True
    )


@pytest.mark.parametrize("kind", KINDS)
def test_generates_and_follows_its_conditioning(pipelines, kind: str) -> None:
    pipeline = pipelines(kind)
    image, other_image = _input_image(), _input_image().transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    with _encoding_each_image_once(pipeline):
        _check_generation(kind, pipeline, image, other_image)


def _check_generation(kind: str, pipeline, image: Image.Image, other_image: Image.Image) -> None:
    for size in RUN_SIZES[kind]:
        output = _generate(kind, pipeline, PROMPT, size, image)
        if kind == "qwen-image-layered":
            # One layer at the 640x640-area bucket of the 4:3 input: 736x544, RGBA.
            assert output.shape == (1, 1, 544, 736, 4)
        else:
            assert output.shape == (1, *size, 3)
        assert np.isfinite(output).all() and 0 <= output.min() and output.max() <= 1 and output.std() > 1e-2

        moved_by_prompt = float(np.abs(_generate(kind, pipeline, OTHER_PROMPT, size, image) - output).max())
        print(f"{kind} {size}: another prompt moves the output by {moved_by_prompt:.3f}")
        assert moved_by_prompt >= MIN_CONDITIONING_EFFECT
        if kind != "qwen-image":
            moved_by_image = float(np.abs(_generate(kind, pipeline, PROMPT, size, other_image) - output).max())
            print(f"{kind} {size}: another input image moves the output by {moved_by_image:.3f}")
            assert moved_by_image >= MIN_CONDITIONING_EFFECT


def test_build_is_deterministic(folders: dict[str, pathlib.Path], tmp_path: pathlib.Path) -> None:
    # The layered kind exercises every part: processor, RGBA VAE and the layered transformer flags.
    kind = "qwen-image-layered"
    again = QWEN_IMAGE_BUILDERS[kind](tmp_path / "again")
    files = sorted(path.relative_to(folders[kind]) for path in folders[kind].rglob("*") if path.is_file())
    assert files == sorted(path.relative_to(again) for path in again.rglob("*") if path.is_file())
    for name in files:
        assert (folders[kind] / name).read_bytes() == (again / name).read_bytes(), f"{name} differs between builds"
