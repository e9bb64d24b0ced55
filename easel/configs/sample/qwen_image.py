"""Qwen-Image sampling defaults, as Diffusers' Qwen-Image pipelines give them."""

import dataclasses

from easel.configs.sample.base import SamplingParams


@dataclasses.dataclass
class QwenImageSamplingParams(SamplingParams):
    """50 steps; true CFG 4.0, which runs when a negative prompt is given."""

    num_inference_steps: int = 50
    true_cfg_scale: float = 4.0


@dataclasses.dataclass
class QwenImageEditSamplingParams(QwenImageSamplingParams):
    """Qwen-Image-Edit, -2509 and -2511: Qwen-Image's defaults; unset, the output size follows the input image."""

    height: int | None = None
    width: int | None = None
