"""The Stable Diffusion 3 / 3.5 VAE config: 16 latent channels, 8x spatial compression, scaled and shifted latents."""

import dataclasses

from easel.configs.models.vaes.base import VAEConfig


@dataclasses.dataclass
class SD3VAEConfig(VAEConfig):
    """Defaults of `stabilityai/stable-diffusion-3-medium-diffusers/vae/config.json` (shared by SD3.5).

    The pipeline decodes `latents / scaling_factor + shift_factor`.
    """

    latent_channels: int = 16
    scaling_factor: float = 1.5305
    shift_factor: float | None = 0.0609
