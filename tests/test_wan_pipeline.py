"""Wan text-to-video end to end against Diffusers' WanPipeline: Wan2.1 T2V and Wan2.2-A14B across its expert switch."""

import diffusers
import imageio.v3 as iio

from easel import DiffGenerator
from easel.cli.main import main
from tests.parity import PipelineParityMixin, input_image

VIDEO = {"num_frames": 9, "num_inference_steps": 2, "negative_prompt": "blurry", "guidance_scale": 5.0}


class TestWanT2VParity(PipelineParityMixin):
    kind = "wan-t2v"
    reference_cls = diffusers.WanPipeline
    cases = [{"height": 64, "width": 64, **VIDEO}, {"height": 48, "width": 80, **VIDEO}]


class TestWan22A14BParity(PipelineParityMixin):
    """Two steps straddle the boundary: the first runs the high-noise expert, the second the low-noise one."""

    kind = "wan2.2-a14b"
    reference_cls = diffusers.WanPipeline
    cases = [
        {"height": 64, "width": 64, **VIDEO},
        {"height": 48, "width": 80, **VIDEO, "guidance_scale_2": 3.0},
    ]


def test_cli_writes_an_mp4_with_the_frames_asked_for(tiny_pipeline, tmp_path, caplog):
    target = tmp_path / "clip.mp4"
    args = ["generate", "--model-path", str(tiny_pipeline("wan-t2v")), "--prompt", "a red circle", "--seed", "1"]
    args += ["--height", "32", "--width", "48", "--num-inference-steps", "2", "--num-frames", "10", "--fps", "8"]
    assert main([*args, "--output-path", str(target)]) == 0
    assert "num_frames must be 4k + 1 for this VAE: 10 adjusted to 9" in caplog.text
    frames = iio.imread(target)
    assert frames.shape == (9, 32, 48, 3)


def test_api_returns_frames(tiny_pipeline):
    generator = DiffGenerator.from_pretrained(tiny_pipeline("wan-t2v"), progress_bar=False)
    request = {"height": 32, "width": 48, "num_frames": 5, "num_inference_steps": 2}
    videos = generator.generate("a red circle", num_outputs_per_prompt=2, **request).frames
    assert len(videos) == 2 and len(videos[0]) == 5 and videos[0][0].size == (48, 32)
    array = generator.generate("a red circle", output_type="np", **request).frames
    assert array.shape == (1, 5, 32, 48, 3) and 0 <= array.min() <= array.max() <= 1


class TestWanI2VParity(PipelineParityMixin):
    kind = "wan-i2v"
    reference_cls = diffusers.WanImageToVideoPipeline
    cases = [
        {"height": 64, "width": 64, "image": input_image(), **VIDEO},
        {"height": 48, "width": 80, "image": input_image(), **VIDEO},
    ]


class TestWan22TI2VParity(PipelineParityMixin):
    """Wan2.2-TI2V-5B as text-to-video: one timestep per token, a 48-channel VAE of 16x spatial compression."""

    kind = "wan2.2-ti2v"
    reference_cls = diffusers.WanPipeline
    cases = [{"height": 64, "width": 64, **VIDEO}, {"height": 32, "width": 64, **VIDEO}]


class TestWan22TI2VImageParity(PipelineParityMixin):
    """The same folder given a first frame: Diffusers runs it through WanImageToVideoPipeline."""

    kind = "wan2.2-ti2v"
    reference_cls = diffusers.WanImageToVideoPipeline
    cases = [
        {"height": 64, "width": 64, "image": input_image(), **VIDEO},
        {"height": 32, "width": 64, "image": input_image(), **VIDEO},
    ]


class TestWan22I2VA14BParity(PipelineParityMixin):
    """Wan2.2-I2V-A14B: two image-to-video experts, no image encoder; two steps cross the expert switch."""

    kind = "wan2.2-i2v-a14b"
    reference_cls = diffusers.WanImageToVideoPipeline
    cases = [
        {"height": 64, "width": 64, "image": input_image(), **VIDEO},
        {"height": 48, "width": 80, "image": input_image(), **VIDEO, "guidance_scale_2": 3.0},
    ]


def test_vae_tiling_and_slicing_decode_the_same_video(tiny_pipeline):
    request = {"height": 64, "width": 64, "num_frames": 5, "num_inference_steps": 2, "output_type": "np"}
    plain = DiffGenerator.from_pretrained(tiny_pipeline("wan-t2v"), progress_bar=False)
    tiled = DiffGenerator.from_pretrained(
        tiny_pipeline("wan-t2v"), progress_bar=False, vae_tiling=True, vae_slicing=True
    )
    vae = tiled.pipeline.get_module("vae")
    assert vae.use_tiling and vae.use_slicing
    # Tiles only start above the VAE's minimum tile size; below it the decode must be the plain one.
    expected = plain.generate("a red circle", num_outputs_per_prompt=2, **request).frames
    assert abs(tiled.generate("a red circle", num_outputs_per_prompt=2, **request).frames - expected).max() < 1e-6
