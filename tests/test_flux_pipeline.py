"""FLUX.1 end to end against Diffusers: dev (guidance embedding), schnell and Kontext, CFG off and on."""

import diffusers

from tests.parity import PipelineParityMixin, input_image

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


class TestFluxKontextParity(PipelineParityMixin):
    kind = "flux-kontext"
    reference_cls = diffusers.FluxKontextPipeline
    # max_area is the requested size, so that neither engine scales the output up to a megapixel. Two cases
    # only: each VAE-encodes the input image at Kontext's trained resolution (about a megapixel).
    cases = [{**case, "image": input_image(), "max_area": case["height"] * case["width"]} for case in CASES[::3]]
