"""FLUX.2-dev and FLUX.2-klein end to end against Diffusers' Flux2Pipeline and Flux2KleinPipeline.

Each pipeline at two sizes (one not square), with no, one and two reference images (multi-reference editing), and
klein-base with and without CFG; the size left unset follows the first reference image, as in Diffusers.
"""

import diffusers
import pytest
from PIL import Image

from easel import DiffGenerator
from easel.cli.main import main
from easel.errors import InvalidInputError
from easel.testing.flux2 import load_flux2_reference
from tests.parity import PipelineParityMixin, input_image

# Short windows: FLUX.2-dev's system message alone is about 33 tokens, so its window is longer than klein's.
STEPS = {"num_inference_steps": 2, "max_sequence_length": 32}
DEV_STEPS = {**STEPS, "max_sequence_length": 64}
# Reference images of their own aspect ratios, at least 64 pixels a side (what FLUX.2 takes).
ONE_IMAGE = input_image(64, 96)
TWO_IMAGES = [input_image(64, 96), input_image(80, 64, seed=1)]


class Flux2ParityMixin(PipelineParityMixin):
    @classmethod
    def load_reference(cls, folder):
        return load_flux2_reference(folder)  # FLUX.2-dev's PixtralProcessor needs torchvision: its tokenizer alone


class TestFlux2Parity(Flux2ParityMixin):
    """FLUX.2-dev: guidance embedded, no CFG."""

    kind = "flux2"
    reference_cls = diffusers.Flux2Pipeline
    cases = [
        {"height": 64, "width": 64, "guidance_scale": 4.0, **DEV_STEPS},
        {"height": 48, "width": 80, "guidance_scale": 2.5, **DEV_STEPS},
        {"height": 64, "width": 64, "image": ONE_IMAGE, **DEV_STEPS},
        {"image": TWO_IMAGES, **DEV_STEPS},
    ]

    def test_takes_up_to_ten_reference_images(self, pipelines):
        with pytest.raises(InvalidInputError, match="takes 0 to 10 input image"):
            pipelines[0].generate("make it red", image=[ONE_IMAGE] * 11, **DEV_STEPS)


class TestFlux2KleinParity(Flux2ParityMixin):
    """FLUX.2-klein, step-distilled: guidance_scale does not apply."""

    kind = "flux2-klein"
    reference_cls = diffusers.Flux2KleinPipeline
    cases = [
        {"height": 64, "width": 64, "guidance_scale": 4.0, **STEPS},
        {"height": 48, "width": 80, "image": TWO_IMAGES, **STEPS},
    ]


class TestFlux2KleinBaseParity(Flux2ParityMixin):
    """FLUX.2-klein-base: CFG against the empty prompt when guidance_scale > 1."""

    kind = "flux2-klein-base"
    reference_cls = diffusers.Flux2KleinPipeline
    cases = [
        {"height": 64, "width": 64, "guidance_scale": 4.0, **STEPS},
        {"height": 48, "width": 80, "guidance_scale": 1.0, **STEPS},
        {"height": 48, "width": 80, "guidance_scale": 4.0, "image": ONE_IMAGE, **STEPS},
        {"guidance_scale": 4.0, "image": TWO_IMAGES, **STEPS},
    ]

    def test_takes_up_to_four_reference_images(self, pipelines):
        with pytest.raises(InvalidInputError, match="takes 0 to 4 input image"):
            pipelines[0].generate("make it red", image=[ONE_IMAGE] * 5, **STEPS)

    def test_a_reference_image_it_cannot_take_is_refused(self, pipelines):
        with pytest.raises(InvalidInputError, match="at least 64 pixels a side"):
            pipelines[0].generate("make it red", image=input_image(32, 96), **STEPS)
        with pytest.raises(InvalidInputError, match="aspect ratio of at most 8:1"):
            pipelines[0].generate("make it red", image=input_image(64, 640), **STEPS)


@pytest.mark.parametrize("kind", ["flux2", "flux2-klein", "flux2-klein-base"])
def test_cli_generates_and_edits(tiny_pipeline, tmp_path, kind):
    reference = tmp_path / "reference.png"
    input_image(64, 96).save(reference)
    base = ["generate", "--model-path", str(tiny_pipeline(kind)), "--num-inference-steps", "2"]
    assert main([*base, "--prompt", "a red circle", "--height", "48", "--width", "80", "--output-path",
                 str(tmp_path / "t2i.png")]) == 0  # fmt: skip
    assert Image.open(tmp_path / "t2i.png").size == (80, 48)
    assert main([*base, "--prompt", "make it blue", "--image-path", str(reference), str(reference),
                 "--output-path", str(tmp_path / "edit.png")]) == 0  # fmt: skip
    assert Image.open(tmp_path / "edit.png").size == (96, 64)  # the first reference image's size


def test_cli_refuses_a_reference_image_it_cannot_take(tiny_pipeline, tmp_path, capsys):
    small = tmp_path / "small.png"
    input_image(32, 96).save(small)
    args = ["generate", "--model-path", str(tiny_pipeline("flux2-klein")), "--prompt", "x", "--image-path", str(small)]
    assert main([*args, "--output-path", str(tmp_path / "out.png")]) == 2
    assert "at least 64 pixels a side" in capsys.readouterr().err
    assert not (tmp_path / "out.png").exists()


def test_families_resolve_from_model_index(tiny_pipeline):
    for kind in ("flux2", "flux2-klein", "flux2-klein-base"):
        assert DiffGenerator.from_pretrained(tiny_pipeline(kind), progress_bar=False).family.name == kind
