"""The GLM-Image VAE config: 16 latent channels, 8x spatial compression, latents normalized per channel."""

import dataclasses

import torch

from easel.configs.models.vaes.base import VAEConfig


@dataclasses.dataclass
class GlmImageVAEConfig(VAEConfig):
    """An `AutoencoderKL` whose config.json gives per-channel `latents_mean` / `latents_std`: the DiT works on
    `(z - mean) / std` (`scaling_factor` unused)."""

    latent_channels: int = 16
    latents_mean: tuple[float, ...] | None = None
    latents_std: tuple[float, ...] | None = None

    def decode_scale_and_shift(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(1 / std, mean), shaped for (B, C, H, W) latents: the VAE decodes `latents * std + mean`."""
        if self.latents_mean is None or self.latents_std is None:
            raise ValueError("GLM-Image's VAE config.json must give latents_mean and latents_std")
        mean = torch.tensor(self.latents_mean).view(1, -1, 1, 1)
        return 1 / torch.tensor(self.latents_std).view(1, -1, 1, 1), mean
