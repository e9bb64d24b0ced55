"""Stable Diffusion 3 / 3.5 sampling defaults, as Diffusers' `StableDiffusion3Pipeline` gives them."""

import dataclasses

from easel.configs.sample.base import SamplingParams


@dataclasses.dataclass
class SD3SamplingParams(SamplingParams):
    """28 steps, CFG 7.0, a 256-token T5 prompt; skip-layer guidance off unless layers are named."""

    num_inference_steps: int = 28
    guidance_scale: float = 7.0
    max_sequence_length: int = 256
    # Skip-layer guidance: between these fractions of the steps, also push away from a pass that skips these layers
    # (SD3.5-medium's card suggests layers [7, 8, 9]).
    skip_guidance_layers: list[int] | None = None
    skip_layer_guidance_scale: float = 2.8
    skip_layer_guidance_start: float = 0.01
    skip_layer_guidance_stop: float = 0.2
