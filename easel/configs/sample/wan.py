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


@dataclasses.dataclass
class WanTI2VSamplingParams(WanSamplingParams):
    """Wan2.2-TI2V-5B's card: 121 frames of 1280x704 at 24 fps."""

    height: int = 704
    width: int = 1280
    num_frames: int = 121
    fps: int = 24


@dataclasses.dataclass
class FastWanSamplingParams(WanSamplingParams):
    """FastWan2.1-T2V's preset in FastVideo: 61 frames of 832x448 at 16 fps in its 3 DMD steps, without CFG."""

    num_inference_steps: int = 3
    guidance_scale: float = 1.0
    height: int = 448
    num_frames: int = 61


@dataclasses.dataclass
class FastWan22SamplingParams(WanTI2VSamplingParams):
    """FastWan2.2-TI2V-5B: Wan2.2-TI2V's 121 frames of 1280x704 at 24 fps in 3 DMD steps, without CFG."""

    num_inference_steps: int = 3
    guidance_scale: float = 1.0


@dataclasses.dataclass
class SelfForcingWanSamplingParams(WanSamplingParams):
    """Self-forcing Wan2.1-T2V-1.3B: 81 frames of 832x480 at 16 fps (7 blocks of 3 latent frames), 4 DMD steps a
    block, without CFG."""

    num_inference_steps: int = 4
    guidance_scale: float = 1.0
