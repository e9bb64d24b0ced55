"""GLM-Image sampling defaults, as Diffusers' `GlmImagePipeline` gives them."""

import dataclasses

from easel.configs.sample.base import SamplingParams


@dataclasses.dataclass
class GlmImageSamplingParams(SamplingParams):
    """50 steps, CFG 1.5 (the unconditional pass drops the prior codes), 1024x1024."""

    num_inference_steps: int = 50
    guidance_scale: float = 1.5
