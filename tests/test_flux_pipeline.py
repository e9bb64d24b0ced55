"""FLUX.1 end to end against Diffusers: dev (guidance embedding), schnell and Kontext, CFG off and on."""

import shutil

import diffusers

from easel.testing.flux import TINY_FLUX_VAE_CONFIG
from easel.testing.seeding import seeded
from tests.parity import PipelineParityMixin, input_image

RESOLUTIONS = [{"height": 64, "width": 64}, {"height": 48, "width": 80}]
TRUE_CFG = {"negative_prompt": "a blurry photo", "true_cfg_scale": 4.0}
CASES = [{**size, "num_inference_steps": 2, **cfg} for size in RESOLUTIONS for cfg in ({}, TRUE_CFG)]


class TestFluxDevParity(PipelineParityMixin):
    kind = "flux"
    reference_cls = diffusers.FluxPipeline
    cases = [{**case, "guidance_scale": 3.5} for case in CASES]


class TestFluxFourTimesVaeParity(PipelineParityMixin):
    """A VAE that compresses 4x instead of 8x: the timestep shift counts the image tokens there really are."""

    kind = "flux"
    reference_cls = diffusers.FluxPipeline
    cases = [{**CASES[0], "guidance_scale": 3.5}]

    @classmethod
    def build_folder(cls, tiny_pipeline, tmp_path_factory):
        folder = tmp_path_factory.mktemp("flux-vae-4x") / "flux"
        shutil.copytree(tiny_pipeline("flux"), folder)
        blocks = {"down_block_types": ("DownEncoderBlock2D",) * 3, "up_block_types": ("UpDecoderBlock2D",) * 3}
        with seeded(0):
            vae = diffusers.AutoencoderKL(**{**TINY_FLUX_VAE_CONFIG, **blocks, "block_out_channels": (8, 8, 8)})
        vae.save_pretrained(folder / "vae")
        return folder


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
