"""Qwen-Image-Layered end to end against Diffusers' `QwenImageLayeredPipeline`: the layers of an RGBA image.

Written directly rather than through `PipelineParityMixin`: Diffusers returns one array of layers per prompt and
its pipeline needs the torchvision-free processor, but the checks are the mixin's (parity to `TOLERANCE`, and that
another prompt or input image moves the output).
"""

import math

import numpy as np
import pytest
from diffusers.pipelines.qwenimage.pipeline_qwenimage_layered import calculate_dimensions
from PIL import Image

from easel import DiffGenerator
from easel.configs.pipeline_configs.qwen_image_layered import layered_output_size
from easel.errors import InvalidInputError
from easel.runtime.outputs import save_images
from easel.testing.qwen_image import load_qwen_image_reference
from tests.parity import TOLERANCE, input_image, mirrored, reference_images

KIND = "qwen-image-layered"
PROMPT = "a red circle on a blue background"
OTHER_PROMPT = "a small green square on the left"
SEED = 0


def rgba_image(height: int, width: int) -> Image.Image:
    """A noise image whose transparency is noise too, so that the alpha channel counts."""
    image = input_image(height, width).convert("RGBA")
    image.putalpha(input_image(height, width, seed=1).convert("L"))
    return image


@pytest.fixture(scope="module")
def pipelines(tiny_pipeline):
    folder = tiny_pipeline(KIND)
    reference = load_qwen_image_reference(KIND, folder)
    reference.set_progress_bar_config(disable=True)
    return DiffGenerator.from_pretrained(folder, progress_bar=False), reference


# The 640 bucket (736x544 and 480x832 outputs) with true CFG; the 1024 bucket's outputs are 2.6 times larger, too
# slow here (its parity, also exact, was checked by hand; its sizing is tested below).
CASES = {
    "landscape,2-layers": dict(image=rgba_image(48, 64), layers=2),
    "portrait,1-layer,cfg-normalize": dict(image=rgba_image(80, 48), layers=1, cfg_normalize=True),
}


@pytest.mark.parametrize("name", CASES)
def test_matches_diffusers(pipelines, name, tmp_path):
    easel, reference = pipelines
    case = dict(CASES[name], num_inference_steps=2, negative_prompt="blurry", true_cfg_scale=4.0)
    ours = easel.generate(PROMPT, seed=SEED, output_type="np", **case).images
    (theirs,) = reference_images(reference, SEED, prompt=PROMPT, **case)  # one prompt: one (layers, H, W, 4) array
    height, width = calculate_dimensions(640 * 640, case["image"].width / case["image"].height)[::-1]
    assert ours.shape == theirs.shape == (case["layers"], height, width, 4)
    error = float(np.abs(ours - theirs).max())
    print(f"{KIND} {name} ({width}x{height}): max abs diff {error:.2e}")
    assert error <= TOLERANCE

    moved = easel.generate(OTHER_PROMPT, seed=SEED, output_type="np", **case).images
    assert float(np.abs(moved - ours).max()) >= 10 * TOLERANCE, "the prompt barely moves the output"
    # The other input image's layers are also written to disk: one RGBA PNG per layer.
    other_case = {**case, "image": mirrored(case["image"])}
    result = easel.generate(PROMPT, seed=SEED, output_type="np", output_path=str(tmp_path / "out.png"), **other_case)
    assert float(np.abs(result.images - ours).max()) >= 10 * TOLERANCE, "the input image barely moves the output"
    layers = case["layers"]
    expected = [tmp_path / "out.png"] if layers == 1 else [tmp_path / f"out_{i}.png" for i in range(layers)]
    assert result.paths == expected and sorted(tmp_path.iterdir()) == expected
    for path, layer in zip(expected, result.images, strict=True):
        with Image.open(path) as saved:
            assert saved.mode == "RGBA" and saved.size == (width, height)
            assert np.array_equal(np.asarray(saved), (layer * 255).round().astype(np.uint8))


@pytest.mark.parametrize("resolution", [640, 1024])
@pytest.mark.parametrize("size", [(64, 48), (48, 80), (1000, 333), (100, 100)])
def test_output_size_is_diffusers(resolution, size):
    width, height = calculate_dimensions(resolution * resolution, size[0] / size[1])
    assert layered_output_size(size[0] / size[1], resolution) == (height, width)
    assert math.isclose(width * height, resolution * resolution, rel_tol=0.1)


@pytest.mark.parametrize(
    ("request_kwargs", "message"),
    [
        (dict(prompt=" "), "prompt is empty"),
        (dict(layers=0), "layers must be"),
        (dict(resolution=800), "resolution must be one of"),
        (dict(max_sequence_length=2048), "max_sequence_length must be at most"),
        (dict(image=None), "takes 1 input image"),
        (dict(image=[rgba_image(48, 64)] * 2), "takes 1 input image"),
    ],
)
def test_rejects_bad_requests(pipelines, request_kwargs, message):
    easel, _ = pipelines
    request = {"prompt": PROMPT, "image": rgba_image(48, 64), "num_inference_steps": 1, **request_kwargs}
    with pytest.raises(InvalidInputError, match=message):
        easel.generate(**request)


def test_rgba_layers_are_not_written_as_jpeg(tmp_path):
    layers = [rgba_image(8, 8), rgba_image(8, 8)]
    with pytest.raises(InvalidInputError, match="JPEG drops transparency"):
        save_images(layers, [tmp_path / "layer_0.png", tmp_path / "layer_1.jpg"])
    assert not list(tmp_path.iterdir())
