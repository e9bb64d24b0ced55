"""Z-Image sampling defaults: Diffusers' `ZImagePipeline` for Z-Image, the model card's for Z-Image-Turbo."""

import dataclasses

from easel.configs.sample.base import SamplingParams


@dataclasses.dataclass
class ZImageSamplingParams(SamplingParams):
    """Z-Image: 50 steps with CFG 5.0; `cfg_normalization` > 0 caps the guided prediction's norm at that multiple
    of the conditional one's."""

    num_inference_steps: int = 50
    guidance_scale: float = 5.0
    cfg_normalization: float = 0.0


@dataclasses.dataclass
class ZImageTurboSamplingParams(ZImageSamplingParams):
    """Z-Image-Turbo: distilled to 9 steps without CFG."""

    num_inference_steps: int = 9
    guidance_scale: float = 0.0
