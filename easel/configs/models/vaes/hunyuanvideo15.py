"""The HunyuanVideo-1.5 VAE config: 32 latent channels, 16x spatial and 4x temporal compression, one scale."""

import dataclasses

from easel.configs.models.vaes.base import VAEConfig


@dataclasses.dataclass
class HunyuanVideo15VAEConfig(VAEConfig):
    """Defaults of `AutoencoderKLHunyuanVideo15`: the DiT works on `latents * scaling_factor`."""

    latent_channels: int = 32
    spatial_compression_ratio: int = 16
    temporal_compression_ratio: int = 4
    scaling_factor: float = 1.03682

    @property
    def spatial_compression(self) -> int:
        return self.spatial_compression_ratio

    @property
    def temporal_compression(self) -> int:
        return self.temporal_compression_ratio
