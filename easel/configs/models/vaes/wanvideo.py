"""The Wan VAE config (`AutoencoderKLWan`): a causal 3D VAE, 4x temporal compression, latents normalized per channel.

Wan2.1's VAE: 16 latent channels, 8x spatial compression. Wan2.2's (TI2V-5B): 48 channels, 16x spatial (a 2x2
patchify around an 8x VAE, `patch_size` 2 in its config).
"""

import dataclasses

import torch

from easel.configs.models.vaes.base import VAEConfig

# Defaults of `Wan-AI/Wan2.1-T2V-1.3B-Diffusers/vae/config.json` (also Diffusers' `AutoencoderKLWan` defaults).
WAN_LATENTS_MEAN = (
    -0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
    0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921,
)  # fmt: skip
WAN_LATENTS_STD = (
    2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
    3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160,
)  # fmt: skip


@dataclasses.dataclass
class WanVAEConfig(VAEConfig):
    """Latents are (B, z_dim, (frames - 1) / 4 + 1, H / s, W / s), s = `spatial_compression`.

    The latent normalization is per channel: the DiT works on `(z - latents_mean) / latents_std`, so the decoder
    takes `latents * latents_std + latents_mean`; `scaling_factor` and `shift_factor` are unused (1 and None).
    """

    base_dim: int = 96
    decoder_base_dim: int | None = None
    z_dim: int = 16
    dim_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    temperal_downsample: tuple[bool, ...] = (False, True, True)  # sic: Diffusers' spelling
    in_channels: int = 3
    out_channels: int = 3
    is_residual: bool = False
    # Wan2.2's VAE folds 2x2 pixels into channels before its 8x encoder, hence 16x spatial compression.
    patch_size: int | None = None
    # What the pipelines read (`vae.config.scale_factor_*`); Wan2.2's config says 4 and 16.
    scale_factor_temporal: int | None = 4
    scale_factor_spatial: int | None = 8
    latents_mean: tuple[float, ...] = WAN_LATENTS_MEAN
    latents_std: tuple[float, ...] = WAN_LATENTS_STD
    # Derived from the fields above in __post_init__ (config.json names neither).
    latent_channels: int = 16
    block_out_channels: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        self.dim_mult = tuple(self.dim_mult)
        self.temperal_downsample = tuple(self.temperal_downsample)
        self.latents_mean = tuple(self.latents_mean)
        self.latents_std = tuple(self.latents_std)
        self.latent_channels = self.z_dim
        self.block_out_channels = tuple(self.base_dim * mult for mult in self.dim_mult)
        if len(self.latents_mean) != self.z_dim or len(self.latents_std) != self.z_dim:
            raise ValueError(
                f"latents_mean / latents_std need {self.z_dim} values (z_dim), got "
                f"{len(self.latents_mean)} / {len(self.latents_std)}"
            )

    def decode_scale_and_shift(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-channel statistics shaped for (B, C, F, H, W) latents: decoding takes `latents * std + mean`."""
        mean = torch.tensor(self.latents_mean).view(1, -1, 1, 1, 1)
        std = torch.tensor(self.latents_std).view(1, -1, 1, 1, 1)
        return 1.0 / std, mean  # latents / (1 / std) + mean, the very operations Diffusers runs

    @property
    def spatial_compression(self) -> int:
        """Pixels per latent along each side, as Diffusers' Wan pipelines read it (`scale_factor_spatial`); without
        it, one halving per entry of `temperal_downsample` times the patchify of Wan2.2's VAE."""
        if self.scale_factor_spatial is not None:
            return self.scale_factor_spatial
        return 2 ** len(self.temperal_downsample) * (self.patch_size or 1)

    @property
    def temporal_compression(self) -> int:
        """Frames per latent frame after the first (kept alone), as the pipelines read it (`scale_factor_temporal`);
        without it one halving per True of `temperal_downsample`. F frames encode to (F - 1) / 4 + 1 latent frames."""
        if self.scale_factor_temporal is not None:
            return self.scale_factor_temporal
        return 2 ** sum(self.temperal_downsample)
