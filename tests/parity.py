"""The shared parity tester: Easel against a Diffusers pipeline on the same tiny folder and seed.

A model's test subclasses `PipelineParityMixin`, names its tiny kind and Diffusers class, and lists its cases
(`build_folder` and `load_reference` change where the folder comes from and how Diffusers loads it).
Every case also checks that the comparison can fail: changing the prompt (and the input image, where the case has
one) must move the output by at least ten times the tolerance.
"""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from easel import DiffGenerator

TOLERANCE = 1e-4  # max abs difference of output pixels in 0..1, CPU fp32


def input_image(height: int = 48, width: int = 64, seed: int = 0) -> Image.Image:
    """A deterministic noise image: an input for image-conditioned pipelines."""
    pixels = np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def mirrored(image: Image.Image | list[Image.Image]) -> Image.Image | list[Image.Image]:
    """The input image(s) flipped left to right: another input with the same statistics."""
    if isinstance(image, list):
        return [mirrored(item) for item in image]
    return image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)


def reference_images(pipeline, seed: int, **kwargs) -> np.ndarray:
    generator = torch.Generator("cpu").manual_seed(seed)
    output = pipeline(generator=generator, output_type="np", **kwargs)
    return output.frames if hasattr(output, "frames") else output.images  # videos: (N, F, H, W, 3)


def easel_output(easel: DiffGenerator, prompt: str, seed: int, **case) -> np.ndarray:
    """Easel's output as an array: images (N, H, W, C), or videos (N, F, H, W, 3)."""
    result = easel.generate(prompt, seed=seed, output_type="np", **case)
    return result.frames if result.frames is not None else result.images


class PipelineParityMixin:
    """Subclasses set `kind`, `reference_cls` and `cases`: request kwargs besides prompt and seed, one test each."""

    kind: str
    reference_cls: type
    cases: list[dict]
    prompt = "a red circle on a blue background"
    other_prompt = "a small green square on the left"
    seed = 0
    engine_options: dict = {}  # ServerArgs fields Easel loads the folder with

    @pytest.fixture(scope="class")
    @classmethod
    def pipelines(cls, tiny_pipeline, tmp_path_factory):
        folder = cls.build_folder(tiny_pipeline, tmp_path_factory)
        reference = cls.load_reference(folder)
        reference.set_progress_bar_config(disable=True)
        return DiffGenerator.from_pretrained(folder, progress_bar=False, **cls.engine_options), reference

    @classmethod
    def build_folder(cls, tiny_pipeline, tmp_path_factory) -> Path:
        """The model folder both engines load; by default the session's tiny folder of `kind`."""
        return tiny_pipeline(cls.kind)

    @classmethod
    def load_reference(cls, folder: Path):
        """The Diffusers pipeline of `folder`; override where `from_pretrained` needs help (e.g. a processor)."""
        return cls.reference_cls.from_pretrained(folder)

    def test_matches_diffusers(self, pipelines, case):
        easel, reference = pipelines
        ours = easel_output(easel, self.prompt, self.seed, **case)
        theirs = reference_images(reference, self.seed, prompt=self.prompt, **case)
        assert ours.shape == theirs.shape
        error = float(np.abs(ours - theirs).max())
        print(f"{self.kind} {case}: max abs diff {error:.2e}")
        assert error <= TOLERANCE

        moved = easel_output(easel, self.other_prompt, self.seed, **case)
        assert float(np.abs(moved - ours).max()) >= 10 * TOLERANCE, "the prompt barely moves the output"
        if "image" in case:
            other_case = {**case, "image": mirrored(case["image"])}
            moved = easel_output(easel, self.prompt, self.seed, **other_case)
            assert float(np.abs(moved - ours).max()) >= 10 * TOLERANCE, "the input image barely moves the output"
