"""HunyuanVideo-1.5 end to end against Diffusers' HunyuanVideo15Pipeline and HunyuanVideo15ImageToVideoPipeline:
both text encoders (a quoted text reaches the glyph encoder), CFG as the folder's guider runs it, two sizes and
frame counts, and image-to-video with inputs of two aspect ratios."""

import json
import shutil

import diffusers
import imageio.v3 as iio

from easel import DiffGenerator
from easel.cli.main import main
from easel.testing.hunyuanvideo15 import load_hunyuanvideo15_reference
from tests.parity import PipelineParityMixin, input_image

# CFG at the scale of the folder's guider/guider_config.json, which both engines read.
VIDEO = {"num_inference_steps": 2}


class HunyuanVideo15Parity(PipelineParityMixin):
    prompt = 'a cat holding a sign that says "hello"'
    other_prompt = 'a small green square that says "bye"'

    @classmethod
    def load_reference(cls, folder):
        return load_hunyuanvideo15_reference(folder)


class TestHunyuanVideo15Parity(HunyuanVideo15Parity):
    kind = "hunyuanvideo-1.5"
    reference_cls = diffusers.HunyuanVideo15Pipeline
    cases = [
        {"height": 32, "width": 32, "num_frames": 5, **VIDEO},
        {"height": 32, "width": 48, "num_frames": 9, **VIDEO},
    ]


class TestHunyuanVideo15ImageToVideoParity(HunyuanVideo15Parity):
    """The output size is the input image's bucket, so the cases differ by their images."""

    kind = "hunyuanvideo-1.5-i2v"
    reference_cls = diffusers.HunyuanVideo15ImageToVideoPipeline
    cases = [
        {"image": input_image(64, 64), "num_frames": 5, **VIDEO},
        {"image": input_image(48, 80), "num_frames": 9, **VIDEO},
    ]


def test_cli_writes_mp4s(tiny_pipeline, tmp_path):
    source = tmp_path / "first.png"
    input_image(48, 80).save(source)
    runs = {
        "hunyuanvideo-1.5": ["--height", "32", "--width", "48"],
        "hunyuanvideo-1.5-i2v": ["--image-path", str(source)],
    }
    for kind, extra in runs.items():
        target = tmp_path / f"{kind}.mp4"
        args = ["generate", "--model-path", str(tiny_pipeline(kind)), "--prompt", "a cat", "--num-frames", "10"]
        assert main([*args, "--num-inference-steps", "2", *extra, "--output-path", str(target)]) == 0
        frames = iio.imread(target)
        assert frames.shape[0] == 9 and frames.shape[-1] == 3  # 4k + 1
    assert iio.imread(tmp_path / "hunyuanvideo-1.5.mp4").shape[1:3] == (32, 48)
    assert iio.imread(tmp_path / "hunyuanvideo-1.5-i2v.mp4").shape[1:3] == (48, 80)  # the image's bucket


def test_the_folders_guider_sets_the_default_cfg_scale(tiny_pipeline, tmp_path):
    folder = tmp_path / "hv"
    shutil.copytree(tiny_pipeline("hunyuanvideo-1.5"), folder)
    config = json.loads((folder / "guider" / "guider_config.json").read_text())
    (folder / "guider" / "guider_config.json").write_text(json.dumps({**config, "guidance_scale": 2.5}))
    assert DiffGenerator.from_pretrained(folder, progress_bar=False).sampling_defaults.guidance_scale == 2.5
