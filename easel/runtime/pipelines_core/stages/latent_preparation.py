"""`LatentPreparationStage`: the initial noise, drawn from the request's seed exactly as Diffusers draws it."""

import torch

from easel.runtime.pipelines_core.schedule_batch import Req
from easel.runtime.pipelines_core.stages.base import PipelineStage
from easel.runtime.server_args import ServerArgs


class LatentPreparationStage(PipelineStage):
    """Draws Gaussian noise of the model's latent shape and packs it into the DiT's layout."""

    input_fields = ("prompt",)
    output_fields = ("latents", "raw_latent_shape", "generator")

    def forward(self, batch: Req, server_args: ServerArgs) -> Req:
        config = server_args.pipeline_config
        shape = config.prepare_latent_shape(batch)
        # Noise comes from a CPU generator, then moves: the same seed gives the same image on every device,
        # and the same noise as Diffusers given torch.Generator("cpu").manual_seed(seed).
        batch.generator = torch.Generator("cpu").manual_seed(batch.seed)
        noise = torch.randn(shape, generator=batch.generator, dtype=torch.float32)
        batch.latents = config.pack_latents(noise.to(server_args.torch_device), batch)
        batch.raw_latent_shape = tuple(shape)
        return batch
