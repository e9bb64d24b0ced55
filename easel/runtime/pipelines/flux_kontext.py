"""FLUX.1 Kontext image editing: FLUX's modules and stages plus the VAE-encoded input image (modular style)."""

from easel.runtime.pipelines.flux import FluxPipeline, prepare_mu, prepare_sigmas
from easel.runtime.server_args import ServerArgs


class FluxKontextPipeline(FluxPipeline):
    """FLUX.1-Kontext-dev: the FLUX DiT attends to the prompt and to the tokens of the input image."""

    pipeline_name = "FluxKontextPipeline"

    def create_pipeline_stages(self, server_args: ServerArgs) -> None:
        self.add_standard_ti2i_stages(prepare_extra_timestep_kwargs=[prepare_sigmas, prepare_mu])


EntryClass = [FluxKontextPipeline]
