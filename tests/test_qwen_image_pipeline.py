"""Qwen-Image end to end against Diffusers' Qwen-Image pipelines."""

import diffusers

from tests.parity import PipelineParityMixin


class TestQwenImageParity(PipelineParityMixin):
    kind = "qwen-image"
    reference_cls = diffusers.QwenImagePipeline
    cases = [
        {"height": 64, "width": 64, "num_inference_steps": 2, "negative_prompt": "blurry", "true_cfg_scale": 4.0},
        {"height": 48, "width": 80, "num_inference_steps": 2, "negative_prompt": "blurry", "true_cfg_scale": 4.0},
    ]
