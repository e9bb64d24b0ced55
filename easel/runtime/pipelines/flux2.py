"""FLUX.2-dev and FLUX.2-klein, composed from the standard stages (the modular style).

Every FLUX.2 difference fits a callback of `Flux2PipelineConfig`: the stacked text-encoder layers are a text
encoder config, the reference images go through the standard `ImageVAEEncodingStage` and join the DiT's sequence,
the patchified noise and per-patch latent statistics are packing and unpacking. What is left here is the schedule:
FLUX.1's even sigmas, shifted by FLUX.2's empirical mu.
"""

from typing import Any

from easel.runtime.pipelines.flux import prepare_sigmas
from easel.runtime.pipelines_core.composed_pipeline_base import ComposedPipelineBase
from easel.runtime.pipelines_core.lora_pipeline import LoRAPipeline
from easel.runtime.pipelines_core.schedule_batch import Req
from easel.runtime.server_args import ServerArgs

# BFL's fit of the schedule shift mu against the image's tokens at 10 and at 200 steps (Diffusers'
# `compute_empirical_mu`); above 4300 tokens the 200-step line alone.
_MU_AT_10_STEPS = (8.73809524e-05, 1.89833333)  # (slope per token, intercept)
_MU_AT_200_STEPS = (0.00016927, 0.45666666)
_LONG_SEQUENCE = 4300


def flux2_mu(image_seq_len: int, num_steps: int) -> float:
    """FLUX.2's shift for a schedule of `num_steps` over `image_seq_len` image tokens: linear in the steps between
    the two fitted lines."""
    mu_200 = _MU_AT_200_STEPS[0] * image_seq_len + _MU_AT_200_STEPS[1]
    if image_seq_len > _LONG_SEQUENCE:
        return float(mu_200)
    mu_10 = _MU_AT_10_STEPS[0] * image_seq_len + _MU_AT_10_STEPS[1]
    slope = (mu_200 - mu_10) / 190.0
    intercept = mu_200 - 200.0 * slope
    return float(slope * num_steps + intercept)


def prepare_mu(batch: Req, scheduler, server_args: ServerArgs) -> dict[str, Any]:
    multiple = server_args.pipeline_config.pixel_multiple()
    image_seq_len = (batch.height // multiple) * (batch.width // multiple)
    return {"mu": flux2_mu(image_seq_len, batch.num_inference_steps)}


class Flux2Pipeline(LoRAPipeline, ComposedPipelineBase):
    """FLUX.2-dev: Mistral Small 3, the FLUX.2 DiT with guidance embedded, the FLUX.2 VAE; 0-10 reference images."""

    pipeline_name = "Flux2Pipeline"
    _required_config_modules = ["text_encoder", "tokenizer", "vae", "transformer", "scheduler"]

    def create_pipeline_stages(self, server_args: ServerArgs) -> None:
        self.add_standard_ti2i_stages(prepare_extra_timestep_kwargs=[prepare_sigmas, prepare_mu])


class Flux2KleinPipeline(Flux2Pipeline):
    """FLUX.2-klein 4B / 9B: Qwen3 as the text encoder, no guidance embedding (the base models run CFG)."""

    pipeline_name = "Flux2KleinPipeline"


EntryClass = [Flux2Pipeline, Flux2KleinPipeline]
