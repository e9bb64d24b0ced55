"""The FLUX.1 VAE config: 16 latent channels, 8x spatial compression, latents normalized by scale and shift."""

import dataclasses

from easel.configs.models.vaes.base import VAEConfig


@dataclasses.dataclass
class FluxVAEConfig(VAEConfig):
    """Defaults of `black-forest-labs/FLUX.1-dev/vae/config.json`."""

    latent_channels: int = 16
    scaling_factor: float = 0.3611
    shift_factor: float | None = 0.1159
