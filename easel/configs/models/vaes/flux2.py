"""The FLUX.2 VAE config: 32 latent channels, 8x spatial compression, latents normalized per 2x2 patch.

FLUX.2's latent statistics are not in its config.json: they are the running mean and variance of a BatchNorm over
the patchified latents (32 channels x 2 x 2 = 128), stored among the VAE's weights. `from_vae` reads them.
"""

import dataclasses
from typing import Any, Self

import torch

from easel.configs.models.vaes.base import VAEConfig


@dataclasses.dataclass
class Flux2VAEConfig(VAEConfig):
    """Defaults of `black-forest-labs/FLUX.2-dev/vae/config.json`, plus the statistics its weights hold."""

    latent_channels: int = 32
    batch_norm_eps: float = 1e-4
    # (4 C,) each: the BatchNorm's running mean and sqrt(running variance + eps), per patchified channel.
    latents_bn_mean: torch.Tensor | None = None
    latents_bn_std: torch.Tensor | None = None

    @classmethod
    def from_vae(cls, vae: Any) -> Self:
        config = cls.from_dict(dict(vae.config))
        config.latents_bn_mean = vae.bn.running_mean.detach().float().cpu()
        config.latents_bn_std = torch.sqrt(vae.bn.running_var.detach().float().cpu() + config.batch_norm_eps)
        return config
