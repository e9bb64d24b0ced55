"""`DmdDenoisingStage`: few-step sampling of DMD-distilled models, a fixed list of timesteps and no CFG.

At each listed timestep the DiT's flow prediction gives the clean latents x0 = x_t - sigma * velocity; the next
step starts from x0 noised again to its sigma, with fresh noise from the request's generator; the last returns x0.
The pipeline config gives the list (`dmd_schedule`); the loop is `DenoisingStage`'s, so the server batches DMD
requests a step at a time like any other.
"""

import torch

from easel.runtime.pipelines_core.schedule_batch import Req
from easel.runtime.pipelines_core.stages.denoising import DenoisingRun, DenoisingStage
from easel.runtime.server_args import ServerArgs


def dmd_step(
    x: torch.Tensor, velocity: torch.Tensor, sigma: float, next_sigma: float, generator: torch.Generator
) -> torch.Tensor:
    """One DMD step from x (at `sigma`): the clean latents the velocity gives, `renoised` to `next_sigma`."""
    return renoised(x - sigma * velocity.float(), next_sigma, generator)


def renoised(x0: torch.Tensor, sigma: float, generator: torch.Generator) -> torch.Tensor:
    """Clean latents noised to `sigma` with fresh Gaussian noise (drawn on the CPU, as the initial noise is), or
    returned as they are when `sigma` is 0."""
    if sigma == 0:
        return x0
    noise = torch.randn(x0.shape, generator=generator, dtype=torch.float32).to(x0.device)
    return (1 - sigma) * x0 + sigma * noise


class DmdDenoisingStage(DenoisingStage):
    """Runs the DiT once per listed timestep and re-noises its clean prediction to the next one."""

    input_fields = ("latents", "prompt_embeds", "raw_latent_shape", "generator")

    def __init__(self, transformer: torch.nn.Module, transformer_2: torch.nn.Module | None = None):
        super().__init__(transformer, scheduler=None, transformer_2=transformer_2)

    def new_run(self, batch: Req, server_args: ServerArgs) -> "DmdRun":
        return DmdRun(self, batch, server_args)


class DmdRun(DenoisingRun):
    """One request's DMD loop: the schedule is the config's step list, a step is `dmd_step`."""

    def begin_schedule(self) -> int:
        timesteps, self.batch.sigmas = self.config.dmd_schedule()
        self.batch.timesteps = timesteps.to(self.latents.device)
        return len(self.batch.timesteps)

    def next_latents(self, velocity: torch.Tensor) -> torch.Tensor:
        sigmas = self.batch.sigmas
        return dmd_step(self.latents, velocity, sigmas[self.step], sigmas[self.step + 1], self.batch.generator)
