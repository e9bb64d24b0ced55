"""FLUX.2 sampling defaults, as Diffusers' FLUX.2 pipelines and the model cards give them."""

import dataclasses

from easel.configs.sample.base import SamplingParams


@dataclasses.dataclass
class Flux2SamplingParams(SamplingParams):
    """FLUX.2-dev: 50 steps, embedded guidance 4; unset, the size is the first reference image's, else 1024x1024."""

    num_inference_steps: int = 50
    guidance_scale: float = 4.0
    height: int | None = None
    width: int | None = None


@dataclasses.dataclass
class Flux2KleinSamplingParams(Flux2SamplingParams):
    """FLUX.2-klein 4B / 9B, step-distilled: 4 steps without guidance."""

    num_inference_steps: int = 4
    guidance_scale: float = 1.0


@dataclasses.dataclass
class Flux2KleinBaseSamplingParams(Flux2SamplingParams):
    """FLUX.2-klein-base 4B / 9B: 50 steps, CFG 4 against the empty prompt."""
