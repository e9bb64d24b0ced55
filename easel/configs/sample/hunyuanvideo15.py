"""HunyuanVideo-1.5 sampling defaults, as Diffusers' pipelines and the model card give them."""

import dataclasses

from easel.configs.sample.base import SamplingParams


@dataclasses.dataclass
class HunyuanVideo15SamplingParams(SamplingParams):
    """480p: 50 steps, 121 frames of 848x480 (the 16:9 bucket of 640-pixel area) at 24 fps, CFG 6."""

    num_inference_steps: int = 50
    guidance_scale: float = 6.0
    height: int = 480
    width: int = 848
    num_frames: int = 121
    fps: int = 24
    output_format: str = "mp4"


@dataclasses.dataclass
class HunyuanVideo15720pSamplingParams(HunyuanVideo15SamplingParams):
    """720p: 1280x720 (the 16:9 bucket of 960-pixel area)."""

    height: int = 720
    width: int = 1280


@dataclasses.dataclass
class HunyuanVideo15ImageToVideoSamplingParams(HunyuanVideo15SamplingParams):
    """Image-to-video: the size follows the input image (its bucket of the checkpoint's area)."""

    height: int | None = None
    width: int | None = None
