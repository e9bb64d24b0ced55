"""The Qwen-Image VAE config (`AutoencoderKLQwenImage`): 16 latent channels, 8x spatial compression, latents
normalized per channel by `latents_mean` / `latents_std`."""

import dataclasses

from easel.configs.models.vaes.base import VAEConfig

# Defaults of `Qwen/Qwen-Image/vae/config.json` (also Diffusers' `AutoencoderKLQwenImage` defaults).
QWEN_IMAGE_LATENTS_MEAN = (
    -0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
    0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921,
)  # fmt: skip
QWEN_IMAGE_LATENTS_STD = (
    2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
    3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160,
)  # fmt: skip


@dataclasses.dataclass
class QwenImageVAEConfig(VAEConfig):
    """A causal 3D (Wan-style) VAE used on single frames: latents are (B, z_dim, frames, H / 8, W / 8).

    The latent normalization is per channel: the DiT works on `(z - latents_mean) / latents_std`, so the decoder
    takes `latents * latents_std + latents_mean`; `scaling_factor` and `shift_factor` are unused (1 and None).
    """

    base_dim: int = 96
    z_dim: int = 16
    dim_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    temperal_downsample: tuple[bool, ...] = (False, True, True)  # sic: Diffusers' spelling
    # 3 (RGB); Qwen-Image-Layered's RGBA VAE has 4.
    input_channels: int = 3
    latents_mean: tuple[float, ...] = QWEN_IMAGE_LATENTS_MEAN
    latents_std: tuple[float, ...] = QWEN_IMAGE_LATENTS_STD
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

    @property
    def spatial_compression(self) -> int:
        """Pixels per latent along each side: one halving per entry of `temperal_downsample` (one per down stage
        but the last), the factor Diffusers' Qwen-Image pipelines use (`2 ** len(vae.temperal_downsample)`)."""
        return 2 ** len(self.temperal_downsample)
