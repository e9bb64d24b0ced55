"""GLM-Image end to end against Diffusers' GlmImagePipeline: the autoregressive prior, the glyph encoding of the
quoted text, the DiT with and without CFG, and image-to-image through the condition images' key/value cache."""

import diffusers
import pytest
from PIL import Image

from easel.cli.main import main
from easel.errors import InvalidInputError
from easel.testing.glm_image import patch_image_to_image
from tests.parity import PipelineParityMixin, input_image

STEPS = {"num_inference_steps": 2}


class TestGlmImageParity(PipelineParityMixin):
    kind = "glm-image"
    reference_cls = diffusers.GlmImagePipeline
    # Quoted text, so that the glyph encoder has something to read (the AR prior reads the whole prompt).
    prompt = 'a shop sign that says "open"'
    other_prompt = 'a small green square that says "closed"'
    cases = [
        {"height": 64, "width": 64, "guidance_scale": 1.0, **STEPS},
        {"height": 64, "width": 96, "guidance_scale": 1.5, **STEPS},
        {"height": 64, "width": 64, "guidance_scale": 1.5, "image": [input_image(64, 64)], **STEPS},
        {
            "height": 64,
            "width": 96,
            "guidance_scale": 1.5,
            "image": [input_image(64, 64), input_image(64, 64, 1)],
            **STEPS,
        },
    ]

    def test_takes_up_to_four_condition_images(self, pipelines):
        with pytest.raises(InvalidInputError, match="takes 0 to 4 input image"):
            pipelines[0].generate("make it red", image=[input_image(64, 64)] * 5, height=64, width=64, **STEPS)

    @classmethod
    def load_reference(cls, folder):
        # Diffusers 0.42.1's image-to-image needs a fix to run with transformers 5.24 (easel/testing/glm_image.py).
        return patch_image_to_image(diffusers.GlmImagePipeline.from_pretrained(folder))


def test_cli_generates_and_edits(tiny_pipeline, tmp_path, caplog):
    reference = tmp_path / "reference.png"
    input_image(64, 64).save(reference)
    base = ["generate", "--model-path", str(tiny_pipeline("glm-image")), "--num-inference-steps", "2"]
    assert (
        main(
            [
                *base,
                "--prompt",
                'a sign "hi"',
                "--height",
                "70",
                "--width",
                "96",
                "--output-path",
                str(tmp_path / "a.png"),
            ]
        )
        == 0
    )
    assert Image.open(tmp_path / "a.png").size == (96, 64)
    assert "resolution adjusted to 96x64" in caplog.text
    assert main([*base, "--prompt", "make it blue", "--height", "64", "--width", "64", "--image-path", str(reference),
                 "--output-path", str(tmp_path / "b.png")]) == 0  # fmt: skip
    assert Image.open(tmp_path / "b.png").size == (64, 64)
