"""Stable Diffusion 3 / 3.5 end to end against Diffusers' StableDiffusion3Pipeline: CFG, skip-layer guidance."""

import diffusers
import numpy as np

from easel.testing.sd3 import TINY_SD3_SKIP_GUIDANCE_LAYERS
from tests.parity import TOLERANCE, PipelineParityMixin

# Skip-layer guidance never touches step 0, so its case runs 3 steps and guides all the later ones.
SKIP_LAYER_GUIDANCE = {
    "num_inference_steps": 3,
    "skip_guidance_layers": TINY_SD3_SKIP_GUIDANCE_LAYERS,
    "skip_layer_guidance_stop": 1.0,
}


class TestSD3Parity(PipelineParityMixin):
    kind = "sd3"
    reference_cls = diffusers.StableDiffusion3Pipeline
    cases = [
        {"height": 64, "width": 64, "num_inference_steps": 2, "guidance_scale": 4.5},
        {"height": 48, "width": 80, "num_inference_steps": 2, "guidance_scale": 4.5, "negative_prompt": "blurry"},
        {"height": 48, "width": 80, "guidance_scale": 4.5, **SKIP_LAYER_GUIDANCE},
    ]

    def test_skip_layer_guidance_moves_the_output(self, pipelines):
        easel, _ = pipelines
        request = {"height": 48, "width": 80, "guidance_scale": 4.5, "output_type": "np", **SKIP_LAYER_GUIDANCE}
        guided = easel.generate(self.prompt, **request).images
        unguided = easel.generate(self.prompt, **{**request, "skip_guidance_layers": None}).images
        assert np.abs(guided - unguided).max() >= 10 * TOLERANCE
