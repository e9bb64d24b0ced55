"""Wan sampling defaults, as Diffusers' `WanPipeline` gives them: 81 frames of 832x480 at 16 fps."""

import dataclasses

from easel.configs.sample.base import SamplingParams


@dataclasses.dataclass
class WanSamplingParams(SamplingParams):
    """50 steps with CFG 5.0; Wan2.2-A14B's low-noise expert guides with `guidance_scale_2` (default: the same)."""

    num_inference_steps: int = 50
    guidance_scale: float = 5.0
    guidance_scale_2: float | None = None
    height: int = 480
    width: int = 832
    num_frames: int = 81
    fps: int = 16
    output_format: str = "mp4"
