"""The Python API's output types and the `easel generate` command's files and summary."""

import subprocess
import sys

import diffusers
import numpy as np
import pytest
import torch
from PIL import Image

from easel import DiffGenerator
from easel.cli.main import main
from easel.errors import InvalidInputError
from tests.parity import input_image, reference_images

SMALL = {"height": 32, "width": 48, "num_inference_steps": 1}


@pytest.fixture(scope="module")
def generator(tiny_pipeline):
    return DiffGenerator.from_pretrained(tiny_pipeline("flux"), progress_bar=False)


def test_output_types(generator):
    pil = generator.generate("a cat", **SMALL).images
    assert len(pil) == 1 and pil[0].size == (48, 32) and pil[0].mode == "RGB"
    array = generator.generate("a cat", output_type="np", **SMALL).images
    assert array.shape == (1, 32, 48, 3) and array.dtype == np.float32 and 0 <= array.min() <= array.max() <= 1
    assert np.array_equal(np.asarray(pil[0]), (array[0] * 255).round().astype("uint8"))
    latents = generator.generate("a cat", output_type="latent", **SMALL).images
    assert isinstance(latents, torch.Tensor) and latents.shape == (1, 6, 64)  # (B, tokens, 16 channels x 2x2)


def test_several_outputs_and_seeds(generator):
    images = generator.generate("a cat", num_outputs_per_prompt=2, output_type="np", **SMALL).images
    assert images.shape[0] == 2 and not np.array_equal(images[0], images[1])
    again = generator.generate("a cat", num_outputs_per_prompt=2, output_type="np", **SMALL).images
    assert np.array_equal(images, again)
    other_seed = generator.generate("a cat", seed=1, output_type="np", **SMALL).images
    assert not np.array_equal(images[:1], other_seed)


def test_previews_every_k_steps(generator):
    """Every k steps (not after the last) the callback gets the result predicted at that step, decoded: previews
    that move towards the final image, which they leave unchanged."""
    previews = {}
    request = {"prompt": "a cat", "height": 64, "width": 64, "num_inference_steps": 7, "seed": 3}
    final = generator.generate(**request, preview_every=3, preview_callback=previews.__setitem__).images[0]
    assert sorted(previews) == [3, 6] and all(len(images) == 1 for images in previews.values())
    pixels = {step: np.asarray(images[0]).astype(int) for step, images in previews.items()}
    target = np.asarray(final).astype(int)
    assert np.abs(pixels[6] - target).mean() < np.abs(pixels[3] - target).mean()
    assert np.asarray(generator.generate(**request).images[0]).tolist() == target.tolist()
    with pytest.raises(InvalidInputError, match="preview_every"):
        generator.generate(**request, preview_every=-1, preview_callback=print)


def test_unknown_parameters_are_refused(generator, tiny_pipeline):
    with pytest.raises(InvalidInputError, match="unknown sampling parameter.*steps"):
        generator.generate("a cat", steps=3)
    with pytest.raises(InvalidInputError, match="unknown engine option.*gpu"):
        DiffGenerator.from_pretrained(tiny_pipeline("flux"), gpu=True)


def test_cli_writes_a_named_file_and_a_summary(tiny_pipeline, tmp_path, capsys):
    target = tmp_path / "cat.png"
    args = ["generate", "--model-path", str(tiny_pipeline("flux")), "--prompt", "a cat", "--output-path", str(target)]
    assert main([*args, "--height", "32", "--width", "48", "--num-inference-steps", "1"]) == 0
    assert Image.open(target).size == (48, 32)
    summary = capsys.readouterr().out.strip().splitlines()
    assert len(summary) == 1 and str(target) in summary[0] and "Denoising" in summary[0]


def test_cli_numbers_several_outputs_and_names_files_in_a_folder(tiny_pipeline, tmp_path):
    base = ["generate", "--model-path", str(tiny_pipeline("flux")), "--prompt", "A cat, sitting!", "--height", "32"]
    base += ["--width", "32", "--num-inference-steps", "1", "--seed", "7"]
    assert main([*base, "--num-outputs-per-prompt", "2", "--output-path", str(tmp_path / "cat.png")]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cat_0.png", "cat_1.png"]
    assert main([*base, "--output-path", str(tmp_path / "folder")]) == 0
    assert [p.name for p in (tmp_path / "folder").iterdir()] == ["a-cat-sitting_7.png"]


def test_python_m_easel_prints_errors_without_traceback(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "easel", "generate", "--model-path", str(tmp_path / "none"), "--prompt", "x"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert "does not exist" in result.stderr and "Traceback" not in result.stderr


def test_help_lists_the_options():
    result = subprocess.run([sys.executable, "-m", "easel", "generate", "--help"], capture_output=True, text=True)
    for option in ["--model-path", "--prompt", "--negative-prompt", "--height", "--width", "--num-inference-steps"]:
        assert option in result.stdout
    for option in ["--guidance-scale", "--true-cfg-scale", "--seed", "--num-outputs-per-prompt", "--output-path"]:
        assert option in result.stdout


def test_bf16_agrees_with_diffusers_in_bf16(tiny_pipeline):
    bf16 = {f"{kind}_precision": "bf16" for kind in ("dit", "vae", "text_encoder")}
    easel = DiffGenerator.from_pretrained(tiny_pipeline("flux"), progress_bar=False, **bf16)
    assert next(easel.pipeline.get_module("transformer").parameters()).dtype == torch.bfloat16
    reference = diffusers.FluxPipeline.from_pretrained(tiny_pipeline("flux"), dtype=torch.bfloat16)
    reference.set_progress_bar_config(disable=True)
    ours = easel.generate("a cat", output_type="np", **SMALL).images
    theirs = reference_images(reference, seed=0, prompt="a cat", **SMALL)
    # Not equal: Easel keeps the latents in fp32 between steps where Diffusers rounds them to bf16. The tiny
    # model's sharpened inits make bf16 move its output by about 0.3 from fp32, so 0.05 still tells paths apart.
    assert np.abs(ours - theirs).max() < 0.05


def test_cli_edits_an_input_image(tiny_pipeline, tmp_path):
    source = tmp_path / "source.png"
    input_image().save(source)
    target = tmp_path / "edited.png"
    args = ["generate", "--model-path", str(tiny_pipeline("flux-kontext")), "--prompt", "make it red"]
    args += ["--image-path", str(source), "--num-inference-steps", "1", "--output-path", str(target)]
    assert main([*args, "--height", "32", "--width", "48", "--set", "max_area=6144"]) == 0
    assert Image.open(target).size == (96, 64)  # FLUX.1 Kontext keeps the aspect ratio at max_area pixels
