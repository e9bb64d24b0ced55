"""FLUX.1 sampling defaults, as Diffusers' `FluxPipeline` and the model cards give them."""

import dataclasses

from easel.configs.sample.base import SamplingParams


@dataclasses.dataclass
class FluxSamplingParams(SamplingParams):
    """FLUX.1-dev: 28 steps, embedded guidance 3.5, 1024x1024."""

    num_inference_steps: int = 28
    guidance_scale: float = 3.5


@dataclasses.dataclass
class FluxSchnellSamplingParams(SamplingParams):
    """FLUX.1-schnell: timestep-distilled to 4 steps, no guidance, a 256-token T5 prompt."""

    num_inference_steps: int = 4
    guidance_scale: float = 0.0
    max_sequence_length: int = 256


@dataclasses.dataclass
class FluxKontextSamplingParams(FluxSamplingParams):
    """FLUX.1 Kontext: FLUX.1-dev's defaults; the output keeps the requested aspect ratio at `max_area` pixels."""

    max_area: int = 1024**2
    auto_resize: bool = True  # resize the input image to the trained resolution nearest its aspect ratio
