"""FLUX.1 end to end against Diffusers' FluxPipeline: dev (guidance embedding) and schnell, CFG off and on."""

import diffusers

from tests.parity import PipelineParityMixin

RESOLUTIONS = [{"height": 64, "width": 64}, {"height": 48, "width": 80}]
TRUE_CFG = {"negative_prompt": "a blurry photo", "true_cfg_scale": 4.0}
CASES = [{**size, "num_inference_steps": 2, **cfg} for size in RESOLUTIONS for cfg in ({}, TRUE_CFG)]


class TestFluxDevParity(PipelineParityMixin):
    kind = "flux"
    reference_cls = diffusers.FluxPipeline
    cases = [{**case, "guidance_scale": 3.5} for case in CASES]


class TestFluxSchnellParity(PipelineParityMixin):
    kind = "flux-schnell"
    reference_cls = diffusers.FluxPipeline
    cases = [{**case, "guidance_scale": 0.0, "max_sequence_length": 256} for case in CASES]
