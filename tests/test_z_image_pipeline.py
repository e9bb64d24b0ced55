"""Z-Image end to end against Diffusers' ZImagePipeline: without CFG (Turbo) and with it."""

import diffusers

from tests.parity import PipelineParityMixin


class TestZImageParity(PipelineParityMixin):
    kind = "z-image"
    reference_cls = diffusers.ZImagePipeline
    cases = [
        {"height": 64, "width": 64, "num_inference_steps": 2, "guidance_scale": 0.0},
        {"height": 48, "width": 80, "num_inference_steps": 2, "guidance_scale": 0.0},
        {"height": 64, "width": 64, "num_inference_steps": 2, "guidance_scale": 4.0, "negative_prompt": "blurry"},
        {"height": 48, "width": 80, "num_inference_steps": 2, "guidance_scale": 4.0, "cfg_normalization": 1.2},
    ]
