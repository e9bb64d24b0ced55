"""The base config of every VAE."""

import dataclasses
from typing import Any, Self

import torch

from easel.configs.models.base import ModelConfig


@dataclasses.dataclass
class VAEConfig(ModelConfig):
    """What the pipeline needs to know of a VAE: its geometry and the latent normalization."""

    block_out_channels: tuple[int, ...] = (128, 256, 512, 512)
    latent_channels: int = 4
    scaling_factor: float = 1.0
    shift_factor: float | None = None

    @classmethod
    def from_vae(cls, vae: Any) -> Self:
        """The config of a loaded VAE: its config.json's fields (a VAE with statistics in its weights reads them)."""
        return cls.from_dict(dict(vae.config))

    def decode_scale_and_shift(self) -> tuple[float | torch.Tensor, float | torch.Tensor | None]:
        """(scale, shift) such that the VAE decodes `latents / scale + shift`."""
        return self.scaling_factor, self.shift_factor

    @property
    def spatial_compression(self) -> int:
        """Pixels per latent along each side: every down block but the last halves the image."""
        return 2 ** (len(self.block_out_channels) - 1)
