"""Qwen-Image-Edit, -2509 and -2511 end to end against Diffusers' QwenImageEditPipeline and -EditPlusPipeline.

Every edit run VAE-encodes each input image at about a megapixel (~1.5 s on one thread), so the cases are few:
Edit at two sizes (one with true CFG), Edit-Plus with two input images, and 2511 (`zero_cond_t`) with one.
"""

import diffusers
import pytest
from diffusers.pipelines.qwenimage.pipeline_qwenimage_edit_plus import calculate_dimensions
from PIL import Image

from easel.cli.main import main
from easel.configs.pipeline_configs.qwen_image import QwenImageEditPlusPipelineConfig
from easel.errors import InvalidInputError
from easel.runtime.pipelines_core.schedule_batch import Req
from easel.testing.qwen_image import build_qwen_image_edit_plus_pipeline, load_qwen_image_reference
from tests.parity import PipelineParityMixin, input_image

TRUE_CFG = {"negative_prompt": "blurry", "true_cfg_scale": 4.0}
# Two inputs of other aspect ratios: the output size and each reference grid follow their own.
TWO_IMAGES = [input_image(), input_image(80, 48, seed=1)]


class QwenEditParity(PipelineParityMixin):
    @classmethod
    def load_reference(cls, folder):
        return load_qwen_image_reference(cls.kind, folder)  # with the processor assembled without torchvision


class TestQwenImageEditParity(QwenEditParity):
    kind = "qwen-image-edit"
    reference_cls = diffusers.QwenImageEditPipeline
    cases = [
        {"image": input_image(), "height": 64, "width": 64, "num_inference_steps": 2, **TRUE_CFG},
        {"image": input_image(), "height": 48, "width": 80, "num_inference_steps": 2, **TRUE_CFG},
    ]

    def test_takes_exactly_one_image(self, pipelines):
        with pytest.raises(InvalidInputError, match="takes 1 input image"):
            pipelines[0].generate("make it red", image=TWO_IMAGES)
        with pytest.raises(InvalidInputError, match="takes 1 input image"):
            pipelines[0].generate("make it red")


class TestQwenImageEditPlusParity(QwenEditParity):
    kind = "qwen-image-edit-plus"
    reference_cls = diffusers.QwenImageEditPlusPipeline
    cases = [
        {"image": TWO_IMAGES, "height": 48, "width": 80, "num_inference_steps": 2, **TRUE_CFG},
        {"image": input_image(), "height": 64, "width": 64, "num_inference_steps": 2, **TRUE_CFG},
    ]

    def test_takes_one_to_three_images(self, pipelines):
        with pytest.raises(InvalidInputError, match="takes 1 to 3 input image"):
            pipelines[0].generate("make it red", image=TWO_IMAGES * 2)


class TestQwenImageEdit2511Parity(QwenEditParity):
    """Qwen-Image-Edit-2511: Edit-Plus whose DiT modulates the reference tokens at timestep 0 (`zero_cond_t`)."""

    kind = "qwen-image-edit-plus"
    reference_cls = diffusers.QwenImageEditPlusPipeline
    cases = [{"image": input_image(), "height": 64, "width": 64, "num_inference_steps": 2}]

    @classmethod
    def build_folder(cls, tiny_pipeline, tmp_path_factory):
        folder = tmp_path_factory.mktemp("qwen-image-edit-2511") / "qwen-image-edit-2511"
        return build_qwen_image_edit_plus_pipeline(folder, transformer_config={"zero_cond_t": True})


@pytest.mark.parametrize(
    ("requested", "expected"),
    [
        ((None, None), (800, 1312)),  # the last input's aspect ratio (48x80) at about a megapixel, multiples of 32
        ((100, 70), (96, 64)),  # a requested size, rounded down to multiples of 16
        ((None, 70), (800, 64)),
    ],
)
def test_output_size_follows_the_last_input_image(requested, expected):
    batch = Req(prompt=["x"], width=requested[0], height=requested[1])
    batch.condition_images = TWO_IMAGES
    QwenImageEditPlusPipelineConfig().prepare_request(batch)
    assert (batch.width, batch.height) == expected
    # What Diffusers' edit pipelines compute from the same input.
    width, height = calculate_dimensions(1024 * 1024, 48 / 80)
    width, height = requested[0] or width, requested[1] or height
    assert (batch.width, batch.height) == (width // 16 * 16, height // 16 * 16)


def test_cli_edits_two_input_images(tiny_pipeline, tmp_path, capsys):
    paths = [tmp_path / "a.png", tmp_path / "b.png"]
    for image, path in zip(TWO_IMAGES, paths, strict=True):
        image.save(path)
    target = tmp_path / "edited.png"
    args = ["generate", "--model-path", str(tiny_pipeline("qwen-image-edit-plus")), "--prompt", "put them together"]
    args += ["--image-path", *map(str, paths), "--num-inference-steps", "2", "--output-path", str(target)]
    # Two steps: at one, Qwen-Image's scheduler (shift_terminal) makes sigma 0/0 and the output NaN, in Diffusers too.
    assert main([*args, "--height", "32", "--width", "48"]) == 0
    assert Image.open(target).size == (48, 32)
    assert "ImageVAEEncoding" in capsys.readouterr().out
